"""Optional API-key authentication: ASGI middleware in front of every route.

Off unless keys are configured (`api_keys`, i.e. MMSERVE_API_KEYS=k1,k2, or `api_keys_file`),
so local use needs nothing. A client sends `Authorization: Bearer <key>` (what the OpenAI SDK
sends, so the OpenAI-compatible route works with `api_key=`) or `X-API-Key: <key>`. Paths in
`auth_exempt_paths` (health, metrics and the docs by default) stay open for probes and scrapers.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every configured key
without stopping early, so neither the key's length nor which key nearly matched shows in the
timing. Keys are never logged or echoed: the 401 says what is missing, not what was sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from mmserve.server.settings import Settings

SCHEME = "Bearer"
KEY_HEADER = "X-API-Key"
REALM = "mmserve"
MIN_KEY_LENGTH = 8
# The OpenAI-compatible routes answer in OpenAI's error shape, so the SDK reports the 401 well.
OPENAI_PREFIX = "/v1/audio/"


class ApiKeyConfigError(ValueError):
    """API keys are configured but unusable (empty key file, a key too short)."""


def load_api_keys(settings: Settings) -> list[str]:
    """The configured keys: `api_keys` plus one per line of `api_keys_file` (# comments allowed).

    A key file that is set but missing or holds no key is an error, not "auth off": a server
    meant to be protected must not start open.
    """
    keys = [k.strip() for k in settings.api_keys if k.strip()]
    if settings.api_keys_file is not None:
        path = Path(settings.api_keys_file).expanduser()
        if not path.is_file():
            raise ApiKeyConfigError(f"api_keys_file {path} does not exist")
        from_file = [line.strip() for line in path.read_text().splitlines()]
        from_file = [line for line in from_file if line and not line.startswith("#")]
        if not from_file:
            raise ApiKeyConfigError(f"api_keys_file {path} holds no key")
        keys += from_file
    short = sum(1 for k in keys if len(k) < MIN_KEY_LENGTH)
    if short:
        raise ApiKeyConfigError(f"{short} API key(s) shorter than {MIN_KEY_LENGTH} characters; use longer random keys")
    return keys


def is_exempt(path: str, exempt: Iterable[str]) -> bool:
    """True when `path` is an exempt path or lies under one (`/v2/health` covers `/v2/health/live`)."""
    for entry in exempt:
        base = entry.rstrip("/")
        if path == base or path.startswith(base + "/"):
            return True
    return False


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeyAuth:
    """Answers 401 (with `WWW-Authenticate: Bearer`) unless the request carries a valid key."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], exempt_paths: Sequence[str] = ()):
        assert keys, "ApiKeyAuth needs at least one key; leave it out to serve without keys"
        self.app = app
        self._digests = [_digest(k) for k in keys]
        self.exempt_paths = tuple(exempt_paths)

    def is_valid(self, presented: bytes) -> bool:
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:  # no early exit: every key is compared every time
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_exempt(scope.get("path", ""), self.exempt_paths):
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope.get("headers", []))
        openai = scope.get("path", "").startswith(OPENAI_PREFIX)
        if presented is None:
            message = f"missing API key: send 'Authorization: {SCHEME} <key>' or '{KEY_HEADER}: <key>'"
            await _unauthorized(send, message, openai=openai)
            return
        if not self.is_valid(presented):
            await _unauthorized(send, "invalid API key", error="invalid_token", openai=openai)
            return
        await self.app(scope, receive, send)


def _presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == SCHEME.lower().encode() and token.strip():
                return token.strip()
        elif name == KEY_HEADER.lower().encode() and value.strip():
            return value.strip()
    return None


async def _unauthorized(send: Send, message: str, error: str | None = None, openai: bool = False) -> None:
    challenge = f'{SCHEME} realm="{REALM}"' + (f', error="{error}"' if error else "")
    payload: dict = {"error": message}
    if openai:
        payload = {"error": {"message": message, "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
