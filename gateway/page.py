"""The browser page at ``/``: the static files of ``gateway/static/``, served as they are.

No build step and nothing fetched from elsewhere at run time: ``gateway/static/`` holds plain
HTML, CSS and JavaScript modules (see ``docs/web.md``). The files are read once, when
the routes are added, and each gets an exact-path route, so they can never shadow the
gateway's own endpoints and no request path reaches the file system. Edit ``gateway/static/``,
restart the gateway.

Caching: every reply carries a strong ``ETag`` (a digest of the bytes) and
``Cache-Control: no-cache``; a browser keeps its copy and revalidates it on each load,
which costs a ``304`` until the file changes. The URLs carry no version, so this is
what keeps a browser from running an old ``app.js`` against a new page.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

#: The page's files: package data of ``gateway``, so checkouts and wheels both have them.
WEB_ROOT = Path(__file__).resolve().parent / "static"

#: Served file types; files of any other type in ``gateway/static/`` are not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}

#: The page loads only its own files and talks only to its own origin (``ws:``/``wss:``
#: are listed because older browsers do not count them as ``'self'``).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "connect-src 'self' ws: wss:",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    ]
)

_COMMON_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self)",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @property
    def headers(self) -> dict[str, str]:
        page = self.content_type.startswith("text/html")
        return {**_COMMON_HEADERS, **(_PAGE_HEADERS if page else {}), "ETag": self.etag}


def load_assets(root: Path) -> dict[str, Asset]:
    """URL path -> asset for every servable file under ``root`` (``/`` is ``index.html``)."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None:
            continue
        body = path.read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        assets["/" + rel.as_posix()] = Asset(body, content_type, etag)
    if "/index.html" in assets:
        assets["/"] = assets["/index.html"]
    return assets


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 ``If-None-Match``: ``*`` or a list of tags, compared weakly."""
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def _handler(asset: Asset) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        headers = asset.headers
        if _matches(request.headers.get("If-None-Match", ""), asset.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body, headers={**headers, "Content-Type": asset.content_type}
        )

    return handle


def add_routes(
    app: web.Application, root: Path = WEB_ROOT, *, upgrade: Handler | None = None
) -> None:
    """Serve ``root`` at ``/``; without it (or its ``index.html``) the page is off.

    ``upgrade`` answers websocket upgrades of ``/`` (vosk clients connect there), so one
    route serves both: a browser's ``GET /`` gets the page, a websocket the dialect.
    """
    assets = load_assets(root) if root.is_dir() else {}
    if "/" not in assets:
        log.warning("no web page: %s has no index.html", root)
    for path, asset in assets.items():
        handler = _handler(asset)
        if path == "/" and upgrade is not None:
            handler = _or_upgrade(upgrade, handler)
        app.router.add_get(path, handler)
    if "/" not in assets and upgrade is not None:
        app.router.add_get("/", _or_upgrade(upgrade, _not_found))


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


def _or_upgrade(upgrade: Handler, page: Handler) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if web.WebSocketResponse().can_prepare(request).ok:
            return await upgrade(request)
        return await page(request)

    return handle
