"""Which browser pages may use the gateway: the Origin check and the Host check.

A browser lends every page it shows the visitor's network position: a page on
``https://evil.example`` can make a visitor's browser open a websocket to, or POST to,
a gateway on the visitor's intranet. No credential here is ambient (there are no
cookies; keys and tokens travel where the caller puts them), so with authentication on
such a page gets a 401 — but with it off, network position is all it takes. Two
checks, applied by the middleware of :mod:`gateway.auth` before authentication:

**Origin** (cross-site websocket hijacking, cross-site request forgery). Every
websocket upgrade (any path) and every request under ``/client/`` and ``/v1/`` (CORS
preflights aside) that carries ``Origin`` must come from

* the gateway's own origin (the Origin's ``host:port`` is the request's ``Host``:
  the browser page at ``/``), or
* an origin listed in ``cors_origins`` (a listed origin, not ``*``) or in
  ``allowed_origins`` (where ``*`` allows any page),

else 403. ``*`` in ``cors_origins`` — the default, as kaldi-gstreamer-server — only
puts ``Access-Control-Allow-Origin: *`` on replies; it lets no foreign page past this
check. A request without ``Origin`` is not a browser's (or a same-origin ``GET``) and
passes — except an unsafe method (``POST``, ``PUT``, ``DELETE``, ``PATCH``) whose
``Sec-Fetch-Site`` says another site sent it: a browser that left ``Origin`` out of a
``text/plain`` form post, the CSRF "simple request".

**Host** (DNS rebinding). A page on ``evil.example`` whose name is re-pointed at the
gateway's address after it loaded talks to the gateway as its *own* origin: its
``Origin`` and the ``Host`` its browser sends both say ``evil.example``. The ``Host``
header names what the browser connected to; an IP literal or ``localhost`` (and
``*.localhost``, which browsers resolve themselves) cannot be rebound. So:

* ``allowed_hosts`` set: every request (the probes and ``/metrics`` aside) must name
  an IP literal, localhost or a listed name; ``*`` turns the check off;
* unset, authentication off: a *browser's* request (one with ``Origin`` or
  ``Sec-Fetch-*`` headers) must name an IP literal or localhost — open the page by
  address, or list its name; other clients (a Kubernetes service name, curl) pass;
* unset, authentication on: no check (a rebinding page has no credential).

Refused with 421 Misdirected Request.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from shared.config import GatewaySettings

#: Paths with an Origin check beside websocket upgrades.
CHECKED_PREFIXES = ("/client/", "/v1/")
#: Methods that change nothing (RFC 9110 "safe"); the others need an allowed origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: ``Sec-Fetch-Site`` values of a request another site's page made.
_FOREIGN_SITES = frozenset({"cross-site", "same-site"})
#: Probes and metrics are asked for by address, by machines: no Host check.
UNCHECKED_HOST_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_BROWSER_HEADERS = (hdrs.ORIGIN, "Sec-Fetch-Site", "Sec-Fetch-Mode")


def is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def is_browser(request: web.Request) -> bool:
    """Whether a browser sent the request (every current browser adds these headers)."""
    return any(name in request.headers for name in _BROWSER_HEADERS)


def _normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _origin_list(raw: str) -> frozenset[str]:
    return frozenset(_normalise_origin(o) for o in raw.split(",") if o.strip())


def host_name(header: str) -> str:
    """The name (or address) of a ``Host`` header, without port, brackets or final dot."""
    host = header.strip().lower()
    if host.startswith("["):  # an IPv6 literal, [::1]:8888
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        host = name
    return host.rstrip(".")


def cannot_be_rebound(host: str) -> bool:
    """An IP literal or localhost: a name no other site's DNS answer can stand for."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class OriginRule:
    """The Origin check: the gateway's own origin, ``allowed``, or any when ``any_origin``."""

    allowed: frozenset[str] = frozenset()
    any_origin: bool = False

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> OriginRule:
        cors = _origin_list(settings.cors_origins) - {"*"}
        extra = _origin_list(settings.allowed_origins)
        return cls(cors | (extra - {"*"}), "*" in extra)

    @staticmethod
    def applies(request: web.Request) -> bool:
        if is_websocket_upgrade(request):
            return True
        return request.method != hdrs.METH_OPTIONS and request.path.startswith(CHECKED_PREFIXES)

    def allows(self, request: web.Request) -> bool:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            site = request.headers.get("Sec-Fetch-Site", "").lower()
            return request.method in SAFE_METHODS or site not in _FOREIGN_SITES
        if self.any_origin:
            return True
        origin = _normalise_origin(origin)
        if origin in self.allowed:
            return True
        parts = urlsplit(origin)
        own = request.headers.get(hdrs.HOST, "").strip().lower()
        return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == own


@dataclass(frozen=True)
class HostRule:
    """The Host check: ``mode`` says which requests, ``names`` which names pass."""

    names: frozenset[str] = frozenset()
    mode: Literal["all", "browsers", "off"] = "off"

    @classmethod
    def from_settings(cls, settings: GatewaySettings, *, auth_on: bool) -> HostRule:
        names = frozenset(host_name(h) for h in settings.allowed_hosts.split(",") if h.strip())
        if "*" in names:
            return cls(frozenset(), "off")
        if names:
            return cls(names, "all")
        return cls(frozenset(), "off" if auth_on else "browsers")

    def allows(self, request: web.Request) -> bool:
        if self.mode == "off" or request.path in UNCHECKED_HOST_PATHS:
            return True
        if self.mode == "browsers" and not is_browser(request):
            return True
        header = request.headers.get(hdrs.HOST)
        if not header:  # HTTP/1.0 without Host: no browser sends that
            return True
        host = host_name(header)
        return cannot_be_rebound(host) or host in self.names
