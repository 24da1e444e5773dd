"""Authentication logic without a server: the keys file, keys, tokens, Origins."""

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
    origin_allowed,
    parse_keys,
)

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
    assert auth.authenticate(make_token(SECRET, "alice", 60)) == Principal("alice", 2, 0)
    assert auth.authenticate(make_token(SECRET, "carol", 60)) == Principal("carol", 1, 0)
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
    assert not req("/") and not req("/healthz") and not req("/readyz") and not req("/metrics")


def test_origins() -> None:
    def allowed(origin: str | None, setting: str) -> bool:
        headers = {"Host": "asr.example:8888"}
        if origin is not None:
            headers["Origin"] = origin
        return origin_allowed(make_mocked_request("GET", "/", headers=headers), setting)

    assert allowed(None, "https://app.example")  # not a browser
    assert allowed("http://evil.example", "*")
    assert allowed("https://app.example", "https://app.example, https://b.example")
    assert allowed("http://asr.example:8888", "https://app.example")  # the page's own
    assert not allowed("http://evil.example", "https://app.example")


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
        for path in ("/client/ws/speech?token=SECRET", "/readyz", "/healthz"):
            access.log(make_mocked_request("GET", path), web.Response(status=200), 0.01)
    assert [r.getMessage() for r in caplog.records] == ['None "GET /client/ws/speech" 200 0.010 s']
