"""The chart's JSON schema for mmserve settings, derived from the pydantic models.

`serve.tasks.*`, `serve.ray` and `serve.settings` in values.schema.json are these definitions;
test_values_schema.py fails when they drift from server/settings.py. After changing the
settings, rewrite them with:

    .venv/bin/python -m tests.helm.settings_schema
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "helm" / "mmserve" / "values.schema.json"

# Settings the chart owns (serve.port, the pods) or that mean nothing in a RayService.
CHART_OWNED = {"host", "port", "backend"}
# RaySettings that only size a locally started cluster; KubeRay sizes the cluster instead.
LOCAL_CLUSTER_ONLY = {"address", "num_cpus", "num_gpus"}
KEEP = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "enum", "items")


def _field(spec: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    if "anyOf" in spec:  # Optional[X]: Helm drops null keys, so the chart accepts X only
        (spec_x,) = [arm for arm in spec["anyOf"] if arm.get("type") != "null"]
        merged = {k: v for k, v in spec.items() if k != "anyOf"}
        return _field({**merged, **spec_x}, refs)
    if "$ref" in spec:
        return {
            "$ref": refs[spec["$ref"].rsplit("/", 1)[-1]],
            **({"description": spec["description"]} if "description" in spec else {}),
        }
    out = {k: spec[k] for k in KEEP if k in spec}
    if spec.get("format") == "path":
        out["type"] = "string"
    if "description" in spec:
        out["description"] = spec["description"]
    return out


def _object(model: type, refs: dict[str, str], skip: set[str] = frozenset()) -> dict[str, Any]:
    schema = model.model_json_schema()
    properties = {name: _field(spec, refs) for name, spec in schema["properties"].items() if name not in skip}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def settings_definitions() -> dict[str, Any]:
    """JSON-schema definitions (draft-07) for the settings that the chart passes to mmserve."""
    from mmserve.server.settings import AutoscalingSettings, RaySettings, Settings, TaskSettings

    refs = {"AutoscalingSettings": "#/definitions/mmserveAutoscaling"}
    task = _object(TaskSettings, refs)
    # Ray hands out whole devices above one GPU (TaskSettings._whole_gpus_above_one).
    task["properties"]["num_gpus"].update({"if": {"exclusiveMinimum": 1}, "then": {"multipleOf": 1}})
    # Ray's DeploymentSchema takes -1 or a positive count; TaskSettings (ge=-1) also lets 0 through,
    # which `mmserve serve-config` then fails on. The chart rejects it at `helm install`.
    task["properties"]["max_queued_requests"]["not"] = {"const": 0}
    settings = _object(Settings, refs, skip=CHART_OWNED | {"tasks", "ray"})
    return {
        "mmserveAutoscaling": _object(AutoscalingSettings, refs),
        "mmserveTask": task,
        "mmserveRay": _object(RaySettings, refs, skip=LOCAL_CLUSTER_ONLY),
        "mmserveSettings": settings,
    }


def main() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    schema.setdefault("definitions", {}).update(settings_definitions())
    SCHEMA_PATH.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"updated {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
