"""Parse request JSON within limits: a byte size and a nesting depth, checked before parsing.

Python's json module recurses once per nesting level, so a body like `[[[[...]]]]` thousands
of levels deep raises RecursionError (or, with a raised recursion limit, can crash the
process). The depth is therefore measured first, with a few C-speed passes over the bytes
(no per-character Python loop), and a body over either limit is refused with a 4xx that
names the limit. Every JSON body the server parses (task routes, v2) goes through
`load_json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

# Everything but brackets and quotes is deleted before the depth is measured.
_KEEP = b'[]{}"'
_DELETE = bytes(b for b in range(256) if b not in _KEEP)
_STRING = re.compile(rb'"[^"]*"')
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


class JsonLimitError(ValueError):
    """A JSON body over a limit, or not JSON at all; `status_code` is the HTTP status."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


class InvalidJson(JsonLimitError):
    """The text is not JSON (HTTP 400)."""


@dataclass(frozen=True)
class JsonLimits:
    max_bytes: int  # largest JSON text accepted (413 above)
    max_depth: int  # most nested arrays / objects (400 above)


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON `text`, brackets in strings ignored.

    Exact for valid JSON; for invalid JSON it is some number, and the parser rejects the text.
    """
    # A backslash always starts a two-character escape inside a string, so removing `\\` first
    # and then `\"` leaves every remaining quote a string delimiter.
    skeleton = text.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DELETE)
    brackets = _STRING.sub(b"", skeleton)
    if not brackets:
        return 0
    steps = _STEP[np.frombuffer(brackets, dtype=np.uint8)].astype(np.int32)  # [len(brackets)] of +1/-1
    return int(np.cumsum(steps).max())


def load_json(text: bytes, limits: JsonLimits, what: str = "request body") -> Any:
    """`json.loads(text)` once `text` is within `limits`; JsonLimitError naming the problem."""
    if len(text) > limits.max_bytes:
        raise JsonLimitError(
            f"{what} is {len(text)} bytes of JSON, over the limit of {limits.max_bytes} bytes", status_code=413
        )
    depth = nesting_depth(text)
    if depth > limits.max_depth:
        raise JsonLimitError(f"{what} is JSON nested {depth} levels deep, over the limit of {limits.max_depth}")
    try:
        return json.loads(text)
    except RecursionError:  # a limit set above what the interpreter's stack allows
        raise JsonLimitError(f"{what} is JSON nested too deeply to parse") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"{what} is not valid JSON: {exc}") from None
