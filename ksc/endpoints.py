"""The gateway's address as the user gives it, turned into the URLs the clients need.

Users paste whatever they have at hand: the base URL (``http://host:8888``), the
websocket ``ksc up`` prints (``ws://host:8888/client/ws/speech``), the HTTP endpoint of
the README (``…/client/dynamic/recognize``), with or without a trailing slash, with a
query (``?token=…&model=…``), behind a proxy under a path prefix (``https://host/asr/``).
:meth:`GatewayUrl.parse` is the one place that reads all of them: it keeps the scheme's
security (``https``/``wss``), the host and the prefix, drops a known endpoint path and
keeps the query, which the speech socket passes on (``content-type``, ``model``,
``token``, …).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["ENDPOINTS", "GatewayUrl"]

#: Paths the gateway serves under its base (``docs``: README's endpoint table); one of
#: them at the end of a URL the user gives is not part of the base.
ENDPOINTS = (
    "/client/ws/speech",
    "/client/ws/status",
    "/client/dynamic/recognize",
    "/client/dynamic/reference",
    "/v1/transcriptions",
    "/vosk",
    "/status",
    "/readyz",
    "/healthz",
    "/metrics",
)
_SCHEMES = {"ws": False, "http": False, "wss": True, "https": True}


@dataclass(frozen=True)
class GatewayUrl:
    secure: bool
    netloc: str
    #: The path before the gateway's own paths: ``""`` or e.g. ``"/asr"`` (no trailing slash).
    prefix: str = ""
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str) -> GatewayUrl:
        """Any form of the gateway's address; ``ValueError`` when it names no server.
        Without a scheme (``host:8888``) it is taken as ``ws://``."""
        text = url.strip()
        if "://" not in text:
            text = "ws://" + text
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"{url!r}: not a ws://, wss://, http:// or https:// URL")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host")
        query = tuple(parse_qsl(parts.query, keep_blank_values=True))
        return cls(_SCHEMES[scheme], parts.netloc, _base_path(parts.path), query)

    def http(self, path: str = "") -> str:
        """``http(s)://host[:port][/prefix]`` followed by ``path``."""
        return f"{'https' if self.secure else 'http'}://{self.netloc}{self.prefix}{path}"

    def ws(self, path: str = "") -> str:
        """``ws(s)://host[:port][/prefix]`` followed by ``path``."""
        return f"{'wss' if self.secure else 'ws'}://{self.netloc}{self.prefix}{path}"

    def speech(self, content_type: str = "", **params: str) -> str:
        """The speech websocket with the user's query: an explicit ``content_type`` or
        parameter wins over the same one in the URL; ``content-type`` always comes first
        (empty: the gateway detects the container from the bytes)."""
        query = dict(self.query)
        caps = content_type or query.pop("content-type", "")
        query.pop("content-type", None)
        query.update(params)
        return self.ws("/client/ws/speech") + "?" + urlencode({"content-type": caps, **query})


def _base_path(path: str) -> str:
    """The path without a trailing slash and without the gateway's own path at its end."""
    path = path.rstrip("/")
    for endpoint in ENDPOINTS:  # /client/ws/status before /status
        if path.endswith(endpoint):
            return path[: -len(endpoint)]
    parent = path.rpartition("/")[0]
    if parent.endswith("/v1/transcriptions"):  # a job: /v1/transcriptions/ID
        return parent[: -len("/v1/transcriptions")]
    return path
