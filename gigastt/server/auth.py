"""Optional API key: does a request carry the configured key, and which subprotocol to echo.

Sans-I/O: takes header values, returns a decision; the key file is read by ``gigastt.config``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CHALLENGE", "SUBPROTOCOL_PREFIX", "ApiKeyPolicy", "AuthDecision", "bearer_token"]

# The header every 401 carries (RFC 6750 §3).
CHALLENGE = (b"www-authenticate", b"Bearer")
# Browsers cannot set headers on a WebSocket; they may offer the key as this subprotocol
# (D23 in docs/decisions.md, docs/api.md "Authentication").
SUBPROTOCOL_PREFIX = "bearer."


def bearer_token(authorization: bytes) -> bytes | None:
    """The credentials of an ``Authorization: Bearer <token>`` value (scheme in any case)."""
    scheme, _, rest = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = rest.strip(b" \t")
    return token or None


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """``subprotocol`` is what the WebSocket handshake answers with (None: no header)."""

    allowed: bool
    subprotocol: str | None = None


_ALLOWED = AuthDecision(allowed=True)
_DENIED = AuthDecision(allowed=False)


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class ApiKeyPolicy:
    """``key`` None: everything is allowed and any credentials are ignored (OpenAI SDKs always
    send some). Otherwise a request needs the key as a bearer token or, on the WebSocket
    upgrade, as the subprotocol ``bearer.<key>``.

    Only a SHA-256 digest of the key is kept, and candidates are compared digest to digest with
    ``hmac.compare_digest``: the time taken reveals neither the key nor its length.
    """

    __slots__ = ("_digest",)

    def __init__(self, key: str | None = None) -> None:
        self._digest = None if key is None else _digest(key.encode())

    def __repr__(self) -> str:  # never the key, never its digest
        return f"ApiKeyPolicy(required={self.required})"

    @property
    def required(self) -> bool:
        return self._digest is not None

    def _matches(self, candidate: bytes) -> bool:
        assert self._digest is not None
        return hmac.compare_digest(_digest(candidate), self._digest)

    def check(self, authorization: bytes | None,
              subprotocols: Sequence[str] = ()) -> AuthDecision:
        """Decide for the first ``Authorization`` value and the offered WebSocket subprotocols.

        The subprotocol that carried the key is echoed; with no key configured the first
        ``bearer.`` offer is echoed, so that a browser client written for a server with a key
        (which must get one of its offers back) works against one without.
        """
        offers = [p for p in subprotocols if p.startswith(SUBPROTOCOL_PREFIX)]
        if self._digest is None:
            return AuthDecision(allowed=True, subprotocol=offers[0]) if offers else _ALLOWED
        for offer in offers:
            if self._matches(offer[len(SUBPROTOCOL_PREFIX):].encode()):
                return AuthDecision(allowed=True, subprotocol=offer)
        token = bearer_token(authorization) if authorization is not None else None
        if token is not None and self._matches(token):
            return _ALLOWED
        return _DENIED
