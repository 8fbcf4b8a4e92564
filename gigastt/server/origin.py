"""Origin policy: which browser origins may call the API, and the CORS headers they get.

Sans-I/O: takes the Origin header value, returns a decision (docs/api.md "Origin policy (CORS)").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["EXEMPT_PATHS", "OriginDecision", "OriginPolicy", "is_loopback_origin"]

# Probes must work from anywhere and must stay unreadable cross-origin, so no check, no CORS.
EXEMPT_PATHS: frozenset[str] = frozenset({"/health", "/ready"})

_LOOPBACK_PREFIXES = (
    "http://localhost",
    "https://localhost",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://[::1]",
    "https://[::1]",
)

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(s: str) -> str:
    # str.lower() folds non-ASCII too (KELVIN SIGN -> "k"), which would widen an allowlist.
    return s.translate(_ASCII_LOWER)


def _is_visible_ascii(s: str) -> bool:
    # The http crate's HeaderValue::to_str rule: tab or 0x20..0x7E.
    return all(ch == "\t" or " " <= ch <= "~" for ch in s)


def is_loopback_origin(origin: str) -> bool:
    """True for http(s) origins on localhost, 127.0.0.1 or [::1], any port.

    See docs/api.md "Origin policy (CORS)".

    The character after the host must be ``:`` or ``/`` (or nothing), so that
    ``http://localhost.evil.example.com`` and ``http://127.0.0.10`` do not qualify.
    """
    lowered = _ascii_lower(origin)
    for prefix in _LOOPBACK_PREFIXES:
        if lowered.startswith(prefix):
            rest = lowered[len(prefix) :]
            if not rest or rest[0] in ":/":
                return True
    return False


_CORS_METHODS = (b"access-control-allow-methods", b"GET, POST, OPTIONS")
_CORS_HEADERS = (b"access-control-allow-headers", b"*")
_VARY = (b"vary", b"origin")


def _cors(value: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"access-control-allow-origin", value), _CORS_METHODS, _CORS_HEADERS, _VARY)


@dataclass(frozen=True, slots=True)
class OriginDecision:
    """``headers`` are set on the response (overwriting) when ``allowed``; empty otherwise."""

    allowed: bool
    headers: tuple[tuple[bytes, bytes], ...] = ()


_ALLOWED_PLAIN = OriginDecision(allowed=True)
_DENIED = OriginDecision(allowed=False)


class OriginPolicy:
    """``--allow-origin`` values (exact, ASCII case-insensitive) and ``--cors-allow-any``."""

    def __init__(self, allowed: Iterable[str] = (), allow_any: bool = False) -> None:
        self._allowed = frozenset(_ascii_lower(origin) for origin in allowed)
        self._allow_any = allow_any
        self._any = OriginDecision(allowed=True, headers=_cors(b"*"))

    @property
    def allow_any(self) -> bool:
        return self._allow_any

    @property
    def allowed(self) -> frozenset[str]:
        """The allowlist, lowercased."""
        return self._allowed

    def decide(self, origin: str | bytes | None) -> OriginDecision:
        """Decide for the first ``Origin`` header value (bytes are read as Latin-1)."""
        if isinstance(origin, bytes):
            origin = origin.decode("latin-1")
        # "null" is an origin like any other (D21 in docs/decisions.md): sandboxed iframes and
        # data: pages of every web site send it, so allowing it would let any site drive us.
        if origin is None or not _is_visible_ascii(origin):
            return _ALLOWED_PLAIN
        if self._allow_any:
            return self._any
        if is_loopback_origin(origin) or _ascii_lower(origin) in self._allowed:
            return OriginDecision(allowed=True, headers=_cors(origin.encode("ascii")))
        return _DENIED
