"""Plugin discovery: entry points, allow-list, dotted modules, duplicates and broken plugins."""

from __future__ import annotations

import pytest

from mmserve.registry.discovery import DuplicateTaskError, discover
from tests.conftest import ECHO_MODULE


def test_builtin_plugins_come_from_entry_points():
    _, found = discover()
    assert "captioning" in found.tasks
    info = next(p for p in found.plugins if p.name == "captioning")
    assert info.source.startswith("entry point mmserve.plugins.captioning.plugin")
    assert info.tasks == ["captioning"] and info.error is None


def test_allow_list_limits_entry_points():
    _, found = discover(allow=["none"])
    assert found.tasks == {}


def test_dotted_module_adds_a_task_without_packaging():
    _, found = discover(allow=["none"], modules=[ECHO_MODULE])
    assert list(found.tasks) == ["echo"]
    assert found.owners["echo"] == ECHO_MODULE


def test_duplicate_task_names_name_both_plugins():
    with pytest.raises(DuplicateTaskError) as err:
        discover(allow=["none"], modules=[ECHO_MODULE, "tests.fixtures.duplicate_echo_plugin"])
    message = str(err.value)
    assert ECHO_MODULE in message and "tests.fixtures.duplicate_echo_plugin" in message and "'echo'" in message


def test_broken_plugins_are_reported_and_skipped():
    _, found = discover(
        allow=["none"],
        modules=["tests.fixtures.broken_import_plugin", "tests.fixtures.broken_hook_plugin", ECHO_MODULE],
    )
    assert list(found.tasks) == ["echo"]
    errors = {p.name: p.error for p in found.failed}
    assert "does-not-exist" in errors["tests.fixtures.broken_import_plugin"]
    assert "model config missing" in errors["tests.fixtures.broken_hook_plugin"]


def test_missing_module_is_reported():
    _, found = discover(allow=["none"], modules=["no.such.module"])
    assert found.failed and "No module named" in found.failed[0].error
