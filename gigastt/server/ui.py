"""The browser page: ``GET /`` and its few files under ``/ui/`` (package data in ``gigastt/ui``),
served as they are with strict headers (docs/api.md "The browser page", D55 in docs/decisions.md).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from gigastt.server.http import Headers, Request, Response

__all__ = ["PATHS", "content_security_policy", "respond"]

# Route → (file in gigastt/ui, content type). Nothing else is served: no directory listing, no
# path ever built from the request.
_FILES: dict[str, tuple[str, bytes]] = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/worklet.js": ("worklet.js", b"text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", b"text/css; charset=utf-8"),
    "/ui/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}
PATHS: frozenset[str] = frozenset(_FILES)

# A Host value that may stand in the policy as it is: a DNS name or IP literal, and a port.
_HOST = re.compile(rb"(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]{2,45}\])"
                   rb"(?::[0-9]{1,5})?")

_FIXED: Headers = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"permissions-policy", b"microphone=(self), camera=(), geolocation=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    # Revalidated on every load (the ETag makes that a 304): an upgraded server's page and
    # scripts are never mixed with cached old ones.
    (b"cache-control", b"no-cache"),
]


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: bytes
    etag: bytes


@functools.cache
def _assets() -> dict[str, _Asset]:
    folder = resources.files("gigastt") / "ui"
    assets = {}
    for path, (name, content_type) in _FILES.items():
        body = (folder / name).read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        assets[path] = _Asset(body, content_type, etag)
    return assets


def content_security_policy(host: bytes | None) -> bytes:
    """Only this server's own files run, and the page talks only to this server.

    ``'self'`` covers the same-origin ``ws:``/``wss:`` URL in CSP Level 3 browsers; the
    ``Host`` the page was loaded from is named as well for older ones (a value that is not a
    plain host and port is left out, never copied into the header).
    """
    connect = b"'self'"
    if host is not None and _HOST.fullmatch(host):
        connect += b" ws://" + host + b" wss://" + host
    return (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            b"connect-src " + connect + b"; base-uri 'none'; form-action 'none'; "
            b"frame-ancestors 'none'")


def respond(request: Request) -> Response:
    """The file for ``request.path`` (one of PATHS), a 304 for a current cached copy, or 405."""
    if request.method not in ("GET", "HEAD"):
        return Response(405, [(b"allow", b"GET,HEAD")])
    asset = _assets()[request.path]
    headers: Headers = [
        (b"content-security-policy", content_security_policy(request.header(b"host"))),
        *_FIXED,
        (b"etag", asset.etag),
    ]
    if _matches(request.header(b"if-none-match"), asset.etag):
        return Response(304, headers)
    return Response(200, [(b"content-type", asset.content_type), *headers], asset.body)


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")]
    return etag in tags or b"*" in tags
