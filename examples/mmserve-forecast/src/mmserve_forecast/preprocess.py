"""Request bytes -> the observed history, a float tensor [N]; every bad input is an InputError.

Accepted bodies: a JSON array of numbers (application/json) or CSV / plain text with one number
per line or separated by commas, semicolons or whitespace, optionally after one header line
(text/csv, text/plain). With no content type, a body starting with '[' is read as JSON.
"""

from __future__ import annotations

import json
import math
import re

import torch

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType

MIN_HISTORY = 16  # values: fewer cannot show a period to the encoder
MAX_HISTORY = 2048
MAX_ABS_VALUE = 1e9  # keeps normalisation and the head's log-variance finite in float32
JSON_TYPES = ("application/json",)
TEXT_TYPES = ("text/csv", "text/plain")
SEPARATORS = re.compile(r"[,;\s]+")


def parse_series(data: bytes, content_type: str | None) -> torch.Tensor:
    """The history as float32 [N], validated (length, finiteness, magnitude)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media not in JSON_TYPES + TEXT_TYPES:
        raise UnsupportedMediaType(f"forecast accepts {', '.join(JSON_TYPES + TEXT_TYPES)}, got {media}")
    if not data.strip():
        raise InputError("empty input: send the observed series as a JSON array of numbers or CSV text")
    if len(data) > MAX_HISTORY * 32:
        raise PayloadTooLarge(f"a body of {len(data)} bytes cannot be a series of at most {MAX_HISTORY} values")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"input is not valid UTF-8: {exc}") from None
    as_json = media in JSON_TYPES or (not media and text.lstrip().startswith("["))
    values = _from_json(text) if as_json else _from_text(text)
    return _checked(values)


def _from_json(text: str) -> list[float]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"input is not valid JSON: {exc}") from None
    if not isinstance(body, list):
        raise InputError(f"JSON input must be an array of numbers, got {type(body).__name__}")
    for i, value in enumerate(body):
        # bool is an int in Python; true/false in a series is a client bug, not a 1/0.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"value {i} is not a number: {json.dumps(value)[:40]}")
    return [float(v) for v in body]


def _from_text(text: str) -> list[float]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    # A header ("value") is a first line of its own with letters in it: on a one-line body,
    # letters are a bad value, not a header.
    if len(lines) > 1 and re.search(r"[A-DF-Za-df-z_]", lines[0]) and not _is_number_line(lines[0]):
        lines = lines[1:]
    values: list[float] = []
    for line in lines:
        for field in SEPARATORS.split(line.strip()):
            if not field:
                continue
            try:
                values.append(float(field))
            except ValueError:
                raise InputError(f"value {len(values)} is not a number: {field[:40]!r}") from None
    return values


def _is_number_line(line: str) -> bool:
    try:
        [float(f) for f in SEPARATORS.split(line.strip()) if f]
    except ValueError:
        return False
    return True


def _checked(values: list[float]) -> torch.Tensor:
    if len(values) < MIN_HISTORY:
        raise InputError(f"the series has {len(values)} values; send at least {MIN_HISTORY}")
    if len(values) > MAX_HISTORY:
        raise InputError(f"the series has {len(values)} values; send at most {MAX_HISTORY} (the most recent)")
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise InputError(f"value {i} is {value}: every value must be a finite number")
        if abs(value) > MAX_ABS_VALUE:
            raise InputError(f"value {i} ({value:g}) is beyond +-{MAX_ABS_VALUE:g}; rescale the series")
    return torch.tensor(values, dtype=torch.float32)
