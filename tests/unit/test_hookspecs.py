"""Every hook is documented: its docstring names each argument (datasette's rule)."""

from __future__ import annotations

import inspect

from mmserve.plugins import hookspecs


def _hooks():
    return [
        (name, fn)
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, "mmserve_spec")
    ]


def test_there_are_hooks():
    assert [name for name, _ in _hooks()] == ["register_tasks"]


def test_every_hook_is_documented_with_its_arguments():
    for name, fn in _hooks():
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 40, f"hook {name} needs a docstring"
        for arg in inspect.signature(fn).parameters:
            assert arg in doc, f"hook {name} does not document its argument {arg!r}"
        if not inspect.signature(fn).parameters:
            assert "no arguments" in doc.lower(), f"hook {name} should say it takes no arguments"


def test_every_hook_is_typed_and_verb_first():
    for name, fn in _hooks():
        assert inspect.signature(fn).return_annotation is not inspect.Signature.empty, f"hook {name} has no return type"
        assert name.split("_")[0] in {"register", "get", "prepare", "load", "create", "add"}, f"hook {name} is not verb-first"
