"""Authentication, the browser checks and the identity per-key limits count against.

Off unless configured: with neither ``--api-keys`` nor ``--token-secret`` every client
is anonymous (:data:`ANONYMOUS` for the limits that apply then), as in
kaldi-gstreamer-server. Once either is set, every *protected* request must present a
credential, or it gets HTTP 401 before anything else happens (for a websocket: before
the upgrade). Protected, for every transport at once and whichever module serves it
(one middleware, not a check per handler):

* every websocket upgrade, on any path (``/client/ws/speech``, ``/client/ws/status``,
  the vosk dialect at ``/`` and ``/vosk``, …);
* every path under ``/client/`` (recognition, references) and ``/v1/`` (batch jobs);
* ``/status`` (the cluster's sessions and workers).

Left open: ``/healthz``, ``/readyz`` and ``/metrics`` (probes and scrapers carry no
key; they show no session, key or text) and the browser page's files.

A credential is read from ``Authorization: Bearer …``, ``X-API-Key: …`` or, for
browsers (which cannot set headers on a websocket), the ``token`` query parameter.
It is either

* an **API key** from the ``--api-keys`` file — one ``KEY [NAME [max-sessions=N]
  [audio-seconds=S]]`` a line, ``#`` comments; only SHA-256 digests are kept in
  memory, and a presented key is compared with every digest in constant time; or
* a **signed token**: a JWT signed with HMAC-SHA256 (``--token-secret``) whose ``sub``
  claim names the key and whose ``exp`` claim is required. With ``--token-audience``
  / ``--token-issuer`` set, ``aud`` / ``iss`` are required and must match (a token
  with an ``aud`` is refused while no audience is set); a token valid for longer than
  ``--token-max-lifetime`` (``exp - iat``, or ``exp - now`` without ``iat``) is refused.

The request then runs as a :class:`Principal` (the key's name, its limits and, for a
token, its expiry), which :data:`PRINCIPAL` carries to the handlers: per-key limits
(:mod:`gateway.limits`) apply to every transport without the transports knowing, and
a ``/client/ws/status`` socket is closed when its token expires (a speech session may
finish: ``docs/security.md``).

Before authentication the middleware applies the Host and Origin checks of
:mod:`gateway.origins` (DNS rebinding, cross-site websockets and requests).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from gateway.logtext import printable
from gateway.origins import HostRule, OriginRule, host_name, is_websocket_upgrade
from shared.config import GatewaySettings
from shared.protocol import ErrorReply, Status

log = logging.getLogger(__name__)

#: The authenticated client of the request being handled; ``None`` when auth is off.
PRINCIPAL: ContextVar[Principal | None] = ContextVar("ksc_principal", default=None)
#: Path prefixes that carry audio or stored data, beside websocket upgrades.
PROTECTED_PREFIXES = ("/client/", "/v1/")
#: Other protected paths: the cluster's sessions and workers.
PROTECTED_PATHS = frozenset({"/status"})
#: The name limits count against when authentication is off: everyone together.
ANONYMOUS = "anonymous"
#: Signed tokens may be this many seconds past ``exp`` (clock skew between hosts).
TOKEN_LEEWAY_S = 5
#: HS256 secrets shorter than the hash are refused (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32
_JSON = "application/json"


class AuthError(Exception):
    """A credential that was presented but is not valid (unknown key, bad token)."""


@dataclass(frozen=True)
class Principal:
    """Who a request runs as: a key's name and its limits (0 = unlimited)."""

    name: str
    max_sessions: int = 0
    audio_seconds: float = 0.0
    #: a signed token's ``exp`` (Unix time); ``None`` for an API key
    expires: float | None = None


def principal_name() -> str:
    """The name of the request's principal, :data:`ANONYMOUS` when auth is off."""
    principal = PRINCIPAL.get()
    return ANONYMOUS if principal is None else principal.name


@dataclass(frozen=True)
class KeyEntry:
    """One line of the keys file, the key itself reduced to its SHA-256 digest."""

    digest: bytes
    name: str
    max_sessions: int | None = None
    audio_seconds: float | None = None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(text: str, source: str = "api keys") -> list[KeyEntry]:
    """Parse a keys file; raises :class:`ValueError` naming the line of any mistake."""
    entries: list[KeyEntry] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, *rest = line.split()
        if len(key) < 16:
            raise ValueError(f"{source} line {number}: a key must have at least 16 characters")
        name = rest[0] if rest and "=" not in rest[0] else f"key{number}"
        options = rest[1:] if rest and "=" not in rest[0] else rest
        max_sessions: int | None = None
        audio_seconds: float | None = None
        for option in options:
            field, _, value = option.partition("=")
            try:
                if field == "max-sessions":
                    max_sessions = int(value)
                elif field == "audio-seconds":
                    audio_seconds = float(value)
                else:
                    raise ValueError(f"unknown option {field!r}")
            except ValueError as exc:
                raise ValueError(f"{source} line {number}: {exc}") from exc
        if name in names:
            raise ValueError(f"{source} line {number}: name {name!r} used twice")
        names.add(name)
        entries.append(KeyEntry(digest(key), name, max_sessions, audio_seconds))
    return entries


class Authenticator:
    """Checks credentials against the configured keys and token secret."""

    def __init__(
        self,
        keys: Iterable[KeyEntry],
        token_secret: str = "",
        *,
        max_sessions: int = 0,
        audio_seconds: float = 0.0,
        token_audience: str = "",
        token_issuer: str = "",
        token_max_lifetime: float = 0.0,
    ) -> None:
        self.keys = tuple(keys)
        self.token_secret = token_secret
        self.max_sessions = max_sessions
        self.audio_seconds = audio_seconds
        self.token_audience = token_audience
        self.token_issuer = token_issuer
        self.token_max_lifetime = token_max_lifetime
        self._by_name = {entry.name: entry for entry in self.keys}

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Authenticator | None:
        """``None`` when authentication is off (no keys file, no token secret)."""
        if not settings.api_keys and not settings.token_secret:
            return None
        if settings.token_secret and len(settings.token_secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"token secret: at least {MIN_SECRET_BYTES} bytes (RFC 7518 3.2)")
        keys: list[KeyEntry] = []
        if settings.api_keys:
            path = Path(settings.api_keys)
            keys = parse_keys(path.read_text(encoding="utf-8"), str(path))
        log.info(
            "authentication on: %d API keys, signed tokens %s",
            len(keys),
            "accepted" if settings.token_secret else "off",
        )
        return cls(
            keys,
            settings.token_secret,
            max_sessions=settings.key_max_sessions,
            audio_seconds=settings.key_audio_seconds,
            token_audience=settings.token_audience,
            token_issuer=settings.token_issuer,
            token_max_lifetime=settings.token_max_lifetime,
        )

    def authenticate(self, credential: str, now: float | None = None) -> Principal:
        if self.token_secret and credential.count(".") == 2:
            subject, expires = self._token_claims(credential, time.time() if now is None else now)
            return self._principal(subject, expires)
        presented = digest(credential)
        found: KeyEntry | None = None
        for entry in self.keys:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(entry.digest, presented):
                found = entry
        if found is None:
            raise AuthError("unknown API key")
        return self._principal(found.name)

    def _token_claims(self, token: str, now: float) -> tuple[str, float]:
        """The token's subject and expiry, once its signature and claims are checked."""
        required = ["exp", "sub"]
        if self.token_audience:
            required.append("aud")
        if self.token_issuer:
            required.append("iss")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.token_secret,
                algorithms=["HS256"],
                audience=self.token_audience or None,
                issuer=self.token_issuer or None,
                options={"require": required},
                leeway=TOKEN_LEEWAY_S,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid token: empty subject")
        expires = float(claims["exp"])
        if self.token_max_lifetime > 0:
            issued = claims.get("iat")
            start = float(issued) if isinstance(issued, int | float) else now
            if expires - start > self.token_max_lifetime:
                raise AuthError(
                    f"token valid for {expires - start:.0f} s, longer than the "
                    f"{self.token_max_lifetime:g} s allowed"
                )
        return subject, expires

    def _principal(self, name: str, expires: float | None = None) -> Principal:
        """Limits of the keys-file entry of that name, else the defaults."""
        entry = self._by_name.get(name)
        sessions = entry.max_sessions if entry and entry.max_sessions is not None else None
        audio = entry.audio_seconds if entry and entry.audio_seconds is not None else None
        return Principal(
            name,
            self.max_sessions if sessions is None else sessions,
            self.audio_seconds if audio is None else audio,
            expires,
        )


def make_token(
    secret: str,
    name: str,
    expires_in: float,
    now: float | None = None,
    *,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A signed token for ``name`` valid ``expires_in`` seconds (for operators and tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": name, "iat": issued, "exp": issued + int(expires_in)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def credential(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    return request.query.get("token") or None


def is_protected(request: web.Request) -> bool:
    return (
        is_websocket_upgrade(request)
        or request.path.startswith(PROTECTED_PREFIXES)
        or request.path in PROTECTED_PATHS
    )


def _refuse(code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = ErrorReply(Status.SERVICE_NOT_ALLOWED, message).serialize()
    return web.Response(status=code, text=body, content_type=_JSON, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(authenticator: Authenticator | None, settings: GatewaySettings) -> Middleware:
    """The aiohttp middleware: the Host check, the Origin check, then authentication."""
    hosts = HostRule.from_settings(settings, auth_on=authenticator is not None)
    origins = OriginRule.from_settings(settings)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not hosts.allows(request):
            host = host_name(request.headers.get(hdrs.HOST, ""))
            log.info("%s %s for host %s refused", *_logged(request), printable(host))
            return _refuse(
                421,
                f"Host {host[:100]!r} not allowed: use the gateway's address or localhost, "
                "or list the name in --allowed-hosts",
            )
        if origins.applies(request) and not origins.allows(request):
            origin = request.headers.get(hdrs.ORIGIN, "") or "Sec-Fetch-Site: " + (
                request.headers.get("Sec-Fetch-Site", "")
            )
            log.info("%s %s from origin %s refused", *_logged(request), printable(origin))
            return _refuse(403, "Origin not allowed")
        if authenticator is None or request.method == "OPTIONS" or not is_protected(request):
            return await handler(request)
        presented = credential(request)
        if presented is None:
            return _refuse(
                401,
                "Authentication required: Authorization: Bearer, X-API-Key or ?token=",
                {hdrs.WWW_AUTHENTICATE: 'Bearer realm="ksc"'},
            )
        try:
            principal = authenticator.authenticate(presented)
        except AuthError as exc:
            log.info("%s %s refused: %s", *_logged(request), printable(str(exc)))
            return _refuse(
                401,
                f"Authentication failed: {exc}",
                {hdrs.WWW_AUTHENTICATE: 'Bearer realm="ksc", error="invalid_token"'},
            )
        token = PRINCIPAL.set(principal)
        try:
            return await handler(request)
        finally:
            PRINCIPAL.reset(token)

    return check


def _logged(request: web.BaseRequest) -> tuple[str, str]:
    """Method and path of a request, safe for a log line."""
    return printable(request.method, 20), printable(request.path)


#: Probe paths: polled every few seconds by Kubernetes and ``ksc up``; not logged.
PROBES = frozenset({"/healthz", "/readyz"})


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log without query strings, which may carry ``?token=``, and
    without the probes, which would drown everything else. The path is decoded
    (``%0A`` is a newline), so it is escaped: one request, one line."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path in PROBES:
            return
        self.logger.info(
            '%s "%s %s" %d %.3f s',
            printable(str(request.remote), 64),
            *_logged(request),
            response.status,
            time,
        )
