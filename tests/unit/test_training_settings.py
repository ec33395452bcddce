"""Task settings from `mmserve train --set key=value`, shared by every plugin's recipe."""

from __future__ import annotations

import pytest

from mmserve.plugins.training import coerce_setting, resolve_settings

DEFAULTS = {"epochs": 3, "lr": 1e-3, "widths": [16, 32], "ctc": True, "cell": "lstm"}


def test_strings_are_read_as_the_defaults_types():
    resolved = resolve_settings("demo", DEFAULTS, {"epochs": "7", "lr": "0.5", "widths": "8,16,32", "ctc": "off"})
    assert resolved == {"epochs": 7, "lr": 0.5, "widths": [8, 16, 32], "ctc": False, "cell": "lstm"}
    assert coerce_setting("widths", "[4, 5]", [1]) == [4, 5]
    assert coerce_setting("lr", 2, 0.1) == 2.0 and isinstance(coerce_setting("lr", 2, 0.1), float)


def test_unknown_and_malformed_settings_are_errors_naming_them():
    with pytest.raises(ValueError, match=r"unknown demo setting\(s\) \['epoch'\]; known: cell, ctc, epochs"):
        resolve_settings("demo", DEFAULTS, {"epoch": 3})
    with pytest.raises(ValueError, match="'ctc' expects true/false"):
        coerce_setting("ctc", "maybe", True)
    with pytest.raises(ValueError, match="'epochs' expects int"):
        coerce_setting("epochs", "many", 3)
    with pytest.raises(ValueError, match="list of integers"):
        coerce_setting("widths", "a,b", [1])
