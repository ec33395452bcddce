"""Helpers every plugin's training recipe shares: task settings from `mmserve train --set`."""

from __future__ import annotations

import json
from typing import Any

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce_setting(key: str, value: Any, default: Any) -> Any:
    """`value` (a string from `--set key=value`, or already typed) read as `default`'s type:
    booleans from true/false words, integer lists from JSON or comma lists, numbers as numbers."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"setting {key!r} expects true/false, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        try:
            return [int(v) for v in value]
        except (TypeError, ValueError) as error:
            raise ValueError(f"setting {key!r} expects a list of integers, got {value!r}") from error
    try:
        return type(default)(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"setting {key!r} expects {type(default).__name__}, got {value!r}") from error


def resolve_settings(task: str, defaults: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`defaults` overridden by `extra`; an unknown key is an error that lists the known ones."""
    unknown = sorted(set(extra) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {task} setting(s) {unknown}; known: {', '.join(sorted(defaults))}")
    return {key: coerce_setting(key, extra[key], default) if key in extra else default for key, default in defaults.items()}
