"""Authentication logic without a server: the keys file, keys, tokens, Origins, Hosts,
log escaping. The same controls against a real gateway: ``tests/integration``."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.auth import (
    Authenticator,
    AuthError,
    Principal,
    credential,
    is_protected,
    make_token,
    parse_keys,
)
from gateway.logtext import printable
from gateway.origins import HostRule, OriginRule, host_name
from shared.config import GatewaySettings

KEY_A = "a" * 32
KEY_B = "b-key-0123456789abcdef"
SECRET = "s3cret-for-tests-only-0123456789-abcdef"

KEYS_FILE = f"""
# comment line
{KEY_A} alice max-sessions=2   # trailing comment
{KEY_B} bob audio-seconds=90.5
"""


def test_keys_file_keeps_digests_only() -> None:
    entries = parse_keys(KEYS_FILE)
    assert [(e.name, e.max_sessions, e.audio_seconds) for e in entries] == [
        ("alice", 2, None),
        ("bob", None, 90.5),
    ]
    for entry in entries:
        assert len(entry.digest) == 32
        assert KEY_A.encode() not in entry.digest and KEY_B.encode() not in entry.digest


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("short name", "at least 16"),
        (f"{KEY_A} x max-sessions=two", "line 1"),
        (f"{KEY_A} x colour=red", "unknown option"),
        (f"{KEY_A} x\n{KEY_B} x", "used twice"),
    ],
)
def test_keys_file_mistakes_name_the_line(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_keys(text)


def test_keys_and_defaults() -> None:
    auth = Authenticator(parse_keys(KEYS_FILE), max_sessions=5, audio_seconds=60)
    assert auth.authenticate(KEY_A) == Principal("alice", 2, 60)
    assert auth.authenticate(KEY_B) == Principal("bob", 5, 90.5)
    with pytest.raises(AuthError, match="unknown API key"):
        auth.authenticate("c" * 32)


def test_tokens() -> None:
    auth = Authenticator(parse_keys(KEYS_FILE), SECRET, max_sessions=1)
    now = time.time()
    alice = auth.authenticate(make_token(SECRET, "alice", 60, now=now))
    assert alice == Principal("alice", 2, 0, expires=float(int(now) + 60))
    carol = auth.authenticate(make_token(SECRET, "carol", 60, now=now))
    assert carol == Principal("carol", 1, 0, expires=float(int(now) + 60))
    assert auth.authenticate(KEY_A).expires is None  # an API key does not expire
    expired = make_token(SECRET, "alice", 1, now=time.time() - 3600)
    with pytest.raises(AuthError, match="expired"):
        auth.authenticate(expired)
    with pytest.raises(AuthError, match="invalid token"):
        auth.authenticate(make_token("another-secret-0123456789abcdef-ghij", "alice", 60))
    # A token is not an API key when tokens are off.
    with pytest.raises(AuthError, match="unknown API key"):
        Authenticator(parse_keys(KEYS_FILE)).authenticate(make_token(SECRET, "alice", 60))


def test_credential_sources() -> None:
    def req(path: str = "/client/ws/speech", **headers: str):  # type: ignore[no-untyped-def]
        return make_mocked_request("GET", path, headers=headers)

    assert credential(req(Authorization="Bearer tok")) == "tok"
    assert credential(req(**{"X-API-Key": "key"})) == "key"
    assert credential(req("/client/ws/speech?token=q")) == "q"
    assert credential(req(Authorization="Basic xyz")) is None
    assert credential(req()) is None


def test_what_is_protected() -> None:
    def req(path: str, **headers: str) -> bool:
        return is_protected(make_mocked_request("GET", path, headers=headers))

    assert req("/client/dynamic/recognize") and req("/v1/transcriptions")
    assert req("/", Upgrade="websocket") and req("/vosk", Upgrade="websocket")
    assert req("/status")
    assert not req("/") and not req("/healthz") and not req("/readyz") and not req("/metrics")


def _request(method: str = "GET", path: str = "/client/ws/speech", **headers: str):  # type: ignore[no-untyped-def]
    headers = {"Host": "asr.example:8888", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return make_mocked_request(method, path, headers=headers)


def test_origins() -> None:
    def allowed(origin: str | None, method: str = "GET", **settings: str) -> bool:
        rule = OriginRule.from_settings(GatewaySettings(**settings))
        extra = {"Origin": origin} if origin is not None else {}
        return rule.allows(_request(method, "/client/ws/speech", Upgrade="websocket", **extra))

    assert allowed(None)  # not a browser
    assert allowed("http://asr.example:8888")  # the page's own
    # The default CORS "*" no longer lets every page through.
    assert not allowed("http://evil.example")
    assert not allowed("http://evil.example", cors_origins="*")
    assert not allowed("null")
    assert not allowed("http://asr.example:9999")  # another port is another origin
    listed = {"cors_origins": "https://app.example, https://b.example"}
    assert allowed("https://app.example", **listed) and allowed("https://B.example/", **listed)
    assert not allowed("http://evil.example", **listed)
    assert allowed("https://other.example", allowed_origins="https://other.example")
    assert allowed("http://evil.example", allowed_origins="*")  # explicitly any


def test_origin_check_covers_state_changing_requests() -> None:
    rule = OriginRule.from_settings(GatewaySettings())
    foreign = {"Origin": "http://evil.example"}
    post = _request("POST", "/client/dynamic/reference", **foreign)
    assert rule.applies(post) and not rule.allows(post)
    assert rule.applies(_request("PUT", "/v1/transcriptions", **foreign))
    assert not rule.applies(_request("OPTIONS", "/client/dynamic/reference", **foreign))
    assert not rule.applies(_request("GET", "/status", **foreign))
    # A browser that leaves Origin out of a cross-site form post is caught by Sec-Fetch-Site.
    simple = _request("POST", "/client/dynamic/reference", Sec_Fetch_Site="cross-site")
    assert not rule.allows(simple)
    assert rule.allows(_request("POST", "/client/dynamic/reference", Sec_Fetch_Site="same-origin"))
    assert rule.allows(_request("GET", "/client/dynamic/reference", Sec_Fetch_Site="cross-site"))
    assert rule.allows(_request("POST", "/client/dynamic/reference"))  # curl


def test_hosts() -> None:
    def allowed(host: str, *, browser: bool = True, auth_on: bool = False, **settings: str) -> bool:
        rule = HostRule.from_settings(GatewaySettings(**settings), auth_on=auth_on)
        headers = {"Host": host, **({"Sec-Fetch-Site": "same-origin"} if browser else {})}
        return rule.allows(make_mocked_request("GET", "/status", headers=headers))

    for host in ("127.0.0.1:8888", "[::1]:8888", "localhost:8888", "app.localhost", "10.0.0.5"):
        assert allowed(host), host
    assert not allowed("rebound.example:8888")  # auth off: a browser by name is refused
    assert allowed("gateway.ns.svc:8888", browser=False)  # not a browser: not checked
    assert allowed("rebound.example:8888", auth_on=True)  # a rebinding page has no key
    listed = {"allowed_hosts": "asr.example"}
    assert allowed("ASR.example.:8888", **listed) and allowed("127.0.0.1", **listed)
    assert not allowed("rebound.example", browser=False, **listed)  # set: every request
    assert not allowed("rebound.example", auth_on=True, **listed)
    assert allowed("rebound.example", allowed_hosts="*")
    probe = make_mocked_request("GET", "/readyz", headers={"Host": "x.example"})
    assert HostRule.from_settings(GatewaySettings(**listed), auth_on=False).allows(probe)
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM.") == "example.com"


def test_token_audience_issuer_and_lifetime() -> None:
    auth = Authenticator(
        [], SECRET, token_audience="asr", token_issuer="backend", token_max_lifetime=600
    )
    good = make_token(SECRET, "carol", 300, audience="asr", issuer="backend")
    assert auth.authenticate(good).name == "carol"
    for token, error in [
        (make_token(SECRET, "carol", 300, issuer="backend"), "aud"),
        (make_token(SECRET, "carol", 300, audience="other", issuer="backend"), "(?i)audience"),
        (make_token(SECRET, "carol", 300, audience="asr"), "iss"),
        (make_token(SECRET, "carol", 300, audience="asr", issuer="evil"), "(?i)issuer"),
        (make_token(SECRET, "carol", 3600, audience="asr", issuer="backend"), "longer than"),
    ]:
        with pytest.raises(AuthError, match=error):
            auth.authenticate(token)
    # Without iat the lifetime counts from now.
    import jwt

    no_iat = jwt.encode(
        {"sub": "carol", "aud": "asr", "iss": "backend", "exp": int(time.time()) + 3600},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(AuthError, match="longer than"):
        auth.authenticate(no_iat)
    # No audience configured: a token made for some audience is refused.
    with pytest.raises(AuthError, match=r"(?i)audience"):
        Authenticator([], SECRET).authenticate(make_token(SECRET, "carol", 60, audience="asr"))


def test_printable_keeps_one_line() -> None:
    assert printable("/client/x\n2026 INFO forged") == "/client/x\\x0a2026 INFO forged"
    assert printable('/a\nb\r\x1b[31m"\u2028') == '/a\\x0ab\\x0d\\x1b[31m\\"\\u2028'
    assert printable("x" * 500).endswith("…") and len(printable("x" * 500)) == 301


def test_off_unless_configured_and_short_secrets_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from shared.config import GatewaySettings

    assert Authenticator.from_settings(GatewaySettings()) is None
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Authenticator.from_settings(GatewaySettings(token_secret="too-short"))
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_A} alice\n")
    auth = Authenticator.from_settings(GatewaySettings(api_keys=str(keys), key_max_sessions=3))
    assert auth is not None and auth.authenticate(KEY_A) == Principal("alice", 3, 0)


def test_access_log_drops_tokens_and_probes(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from gateway.auth import AccessLogger

    logger = logging.getLogger("test.access")
    access = AccessLogger(logger, "")
    with caplog.at_level(logging.INFO, logger="test.access"):
        for path in ("/client/ws/speech?token=SECRET", "/readyz", "/healthz", "/x%0Aforged%22"):
            access.log(make_mocked_request("GET", path), web.Response(status=200), 0.01)
    assert [r.getMessage() for r in caplog.records] == [
        'None "GET /client/ws/speech" 200 0.010 s',
        'None "GET /x\\x0aforged\\"" 200 0.010 s',
    ]
