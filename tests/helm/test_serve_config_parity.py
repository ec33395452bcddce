"""The chart's serveConfigV2 is what `mmserve serve-config` writes for the same settings.

For each case the chart is rendered with some `serve` values, and the real command runs on the
mmserve settings file those values stand for (serve.settings + the non-empty serve.tasks +
serve.ray + serve.port) with the chart's MLFLOW_TRACKING_URI in the environment. Both YAML
documents are parsed and compared as structures, and the chart's also passes mmserve's own
validation (Ray's ServeDeploySchema, unknown keys, mmserve settings).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import yaml

from tests.conftest import ECHO_MODULE
from tests.helm.conftest import NAMESPACE, RELEASE, VALUE_SETS, load_values, render

BUNDLED_MLFLOW = f"http://{RELEASE}-mmserve-mlflow.{NAMESPACE}.svc:5000"

CASES: dict[str, dict[str, Any]] = {
    # The chart's defaults against the built-in plugins: also checks that serve.tasks names
    # every task the built-in plugins provide.
    "chart defaults": {},
    "gpu value set": load_values("gpu"),
    "no-autoscaling value set": load_values("no-autoscaling"),
    "external mlflow": load_values("external-mlflow"),
    "every task option, two tasks": {
        "serve": {
            "port": 8080,
            "tasks": {
                "captioning": None,
                "echo": {
                    "num_replicas": 3,
                    "num_cpus": 2,
                    "num_gpus": 0.25,
                    "max_ongoing_requests": 32,
                    "max_queued_requests": 1,
                    "alias": "staging",
                    "max_batch_size": 8,
                    "max_active": 32,
                },
                "shout": {
                    "autoscaling": {"min_replicas": 0, "max_replicas": 6, "target_ongoing_requests": 8},
                    "num_gpus": 1,
                    "max_queued_requests": -1,
                },
            },
            "ray": {
                "app_name": "mm",
                "ingress_replicas": 2,
                "ingress_num_cpus": 0,
                "ingress_max_ongoing_requests": 1_000_000,
            },
            "settings": {
                "plugins": ["none"],
                "plugin_modules": [ECHO_MODULE, "tests.fixtures.second_task_plugin"],
                "max_beam_size": 4,
                "max_upload_bytes": 20_971_520,
                "request_timeout_s": 30.5,
                "torch_threads": 0,
            },
        }
    },
}


def mmserve_settings(values: dict[str, Any], port: int) -> dict[str, Any]:
    """The mmserve settings file that the chart's `serve` values stand for."""
    serve = values.get("serve", {})
    settings = copy.deepcopy(serve.get("settings") or {})
    tasks = {name: task for name, task in (serve.get("tasks") or {}).items() if task}
    if tasks:
        settings["tasks"] = tasks
    if serve.get("ray"):
        settings["ray"] = serve["ray"]
    settings["port"] = port
    return settings


def merged_serve_values(helm, values: dict[str, Any]) -> dict[str, Any]:
    from tests.helm.conftest import CHART

    with helm.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chart_serve_config_equals_mmserve_serve_config(helm, case, tmp_path, monkeypatch):
    from mmserve.server import cli
    from mmserve.server.rayserve.serve_config import validate_serve_config

    values = CASES[case]
    chart_document = yaml.safe_load(render(helm, values).one("RayService")["spec"]["serveConfigV2"])

    merged = merged_serve_values(helm, values)  # the chart's defaults + these values, as Helm merges
    settings_file = tmp_path / "mmserve.yaml"
    settings_file.write_text(yaml.safe_dump(mmserve_settings(merged, merged["serve"]["port"])))
    for name in list(os.environ):
        if name.startswith("MMSERVE_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)
    monkeypatch.setenv("MMSERVE_CONFIG", str(settings_file))  # restored after the test
    uri = BUNDLED_MLFLOW if merged["mlflow"]["enabled"] else merged["mlflow"]["externalUri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    output = tmp_path / "serve.yaml"
    assert cli.main(["serve-config", "--output", str(output)]) == 0
    mmserve_document = yaml.safe_load(output.read_text())

    assert chart_document == mmserve_document
    schema = validate_serve_config(chart_document)
    assert schema.applications[0].import_path == "mmserve.server.rayserve.ray_backend:build_app"


def test_comparison_sees_a_difference(helm):
    # The equality above is not vacuous: a changed value changes the chart's document.
    base = yaml.safe_load(render(helm).one("RayService")["spec"]["serveConfigV2"])
    changed = render(helm, {"serve": {"tasks": {"captioning": {"num_gpus": 0.5}}}})
    other = yaml.safe_load(changed.one("RayService")["spec"]["serveConfigV2"])
    assert base != other
    (task,) = [d for d in other["applications"][0]["deployments"] if d["name"] == "task-captioning"]
    assert task["ray_actor_options"]["num_gpus"] == 0.5


def test_large_numbers_stay_numbers(helm):
    # Helm's toYaml writes 1000000 as 1e+06, which YAML readers take for a string.
    document = render(helm, {"serve": {"ray": {"ingress_max_ongoing_requests": 1_000_000}}})
    config = yaml.safe_load(document.one("RayService")["spec"]["serveConfigV2"])
    (ingress,) = [d for d in config["applications"][0]["deployments"] if d["name"] == "ingress"]
    assert ingress["max_ongoing_requests"] == 1_000_000


def test_runtime_env_pip_for_a_third_party_plugin(helm):
    from mmserve.server.rayserve.serve_config import validate_serve_config

    values = {"serve": {"runtimeEnv": {"pip": ["mmserve-echo==0.1.0"]}, "tasks": {"captioning": {}, "echo": {}}}}
    config = yaml.safe_load(render(helm, values).one("RayService")["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["runtime_env"] == {"pip": ["mmserve-echo==0.1.0"], "env_vars": {"MLFLOW_TRACKING_URI": BUNDLED_MLFLOW}}
    assert [d["name"] for d in app["deployments"]] == ["ingress", "task-captioning", "task-echo"]
    validate_serve_config(config)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_value_sets_serve_config_parses_with_rays_schema(rendered, value_set):
    from ray.serve.schema import ServeDeploySchema

    from mmserve.server.rayserve.serve_config import validate_serve_config

    document = yaml.safe_load(rendered[value_set].one("RayService")["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(document)
    assert schema.model_dump(mode="json", exclude_unset=True) == document  # nothing dropped or coerced away
    validate_serve_config(document)  # and mmserve's stricter walk: unknown keys, its settings
