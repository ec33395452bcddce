"""The hooks an mmserve plugin can implement.

Every hook is verb-first and documents each argument; tests/unit/test_hookspecs.py fails when
one is undocumented.
"""

from __future__ import annotations

import pluggy

from mmserve.plugins import PROJECT_NAME
from mmserve.plugins.task import Task

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_tasks() -> list[Task]:
    """Return the tasks this plugin serves.

    Each task's ``name`` becomes its endpoint (``POST /v1/<name>``), its Open Inference Protocol
    model name and its MLflow registered-model name, so it must be unique across all loaded
    plugins: two plugins claiming the same name stop the server at start-up.

    Takes no arguments. Called once per process, when the plugin manager is built.
    """
