"""The Ray Serve settings and config document: validation, strict keys, round trips."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError
from ray.serve._private.build_app import build_app as build_deployments
from ray.serve.schema import ServeDeploySchema

from mmserve.server import cli
from mmserve.server.rayserve.deployments import IMPORT_PATH, task_deployment_options
from mmserve.server.rayserve.ray_backend import build_app
from mmserve.server.rayserve.serve_config import (
    ServeConfigError,
    build_serve_config,
    serve_config_yaml,
    validate_serve_config,
)
from mmserve.server.settings import Settings, TaskSettings, resolved_settings
from tests.conftest import ECHO_MODULE

TASKS = {
    "echo": {"num_replicas": 2, "num_gpus": 0.5, "num_cpus": 1, "max_ongoing_requests": 32, "max_queued_requests": 100},
    "shout": {"autoscaling": {"min_replicas": 0, "max_replicas": 6, "target_ongoing_requests": 8}, "num_gpus": 1},
}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        plugins=["none"],
        plugin_modules=[ECHO_MODULE, "tests.fixtures.second_task_plugin"],
        tasks=TASKS,
    )


@pytest.fixture
def document(settings) -> dict:
    return yaml.safe_load(serve_config_yaml(settings))


# ----- per-task Ray settings --------------------------------------------------------------


def test_task_defaults_are_one_cpu_replica_without_gpu():
    options = task_deployment_options("echo", TaskSettings())
    assert options == {
        "name": "task-echo",
        "num_replicas": 1,
        "max_ongoing_requests": 64,
        "max_queued_requests": 256,
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0},
    }


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"num_replicas": 2, "autoscaling": {}}, "not both"),
        ({"autoscaling": {"min_replicas": 5, "max_replicas": 2}}, "above max_replicas"),
        ({"autoscaling": {"target_ongoing_requests": 100}, "max_ongoing_requests": 10}, "never reach the target"),
        ({"num_gpus": 1.5}, "whole number"),
        ({"num_gpus": -0.5}, "greater than or equal to 0"),
        ({"num_replicas": 0}, "greater than or equal to 1"),
        ({"max_queued_requests": -2}, "greater than or equal to -1"),
        ({"num_gpu": 1}, "Extra inputs are not permitted"),
        ({"autoscaling": {"max_replica": 3}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_task_settings_are_rejected(values, fragment):
    with pytest.raises(ValidationError, match=fragment):
        TaskSettings(**values)


def test_ray_task_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSERVE_TASKS__ECHO__NUM_GPUS", "0.25")
    monkeypatch.setenv("MMSERVE_TASKS__ECHO__AUTOSCALING__MAX_REPLICAS", "8")
    monkeypatch.setenv("MMSERVE_RAY__INGRESS_REPLICAS", "2")
    settings = Settings(data_dir=tmp_path)
    assert settings.task("echo").num_gpus == 0.25
    assert settings.task("echo").autoscaling.max_replicas == 8
    assert settings.ray.ingress_replicas == 2


def test_resolved_settings_ignore_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSERVE_MAX_BEAM_SIZE", "3")
    monkeypatch.setenv("MMSERVE_CONFIG", str(tmp_path / "missing.yaml"))  # would raise in Settings()
    assert resolved_settings({"data_dir": str(tmp_path)}).max_beam_size == 8


# ----- the document ---------------------------------------------------------------------


def test_config_has_an_ingress_and_a_deployment_per_task(document):
    (app,) = document["applications"]
    assert app["import_path"] == IMPORT_PATH == "mmserve.server.rayserve.ray_backend:build_app"
    assert app["route_prefix"] == "/"
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"ingress", "task-echo", "task-shout"}
    assert deployments["task-echo"] == {
        "name": "task-echo",
        "num_replicas": 2,
        "max_ongoing_requests": 32,
        "max_queued_requests": 100,
        "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.5},
    }
    shout = deployments["task-shout"]
    assert "num_replicas" not in shout
    assert shout["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 6, "target_ongoing_requests": 8.0}
    assert shout["ray_actor_options"]["num_gpus"] == 1.0
    # A cluster document listens on every interface unless a host was chosen.
    assert document["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_config_round_trips_through_yaml_and_the_schema(settings, document):
    assert document == build_serve_config(settings, ["echo", "shout"])
    schema = validate_serve_config(document)
    assert isinstance(schema, ServeDeploySchema)
    assert schema.model_dump(mode="json", exclude_unset=True) == document
    # The settings travel in `args` and come back the same.
    back = resolved_settings(document["applications"][0]["args"]["settings"])
    assert back.tasks == settings.tasks
    assert back.plugin_modules == settings.plugin_modules


def test_builder_makes_the_deployments_the_config_names(document):
    (app,) = document["applications"]
    built = build_deployments(build_app(app["args"]), name=app["name"])
    assert built.ingress_deployment_name == "ingress"
    by_name = {d.name: d for d in built.deployments}
    assert set(by_name) == {d["name"] for d in app["deployments"]}
    for entry in app["deployments"]:
        deployment = by_name[entry["name"]]
        assert deployment.ray_actor_options == entry["ray_actor_options"]
        assert deployment.max_ongoing_requests == entry["max_ongoing_requests"]
        assert deployment.max_queued_requests == entry.get("max_queued_requests", -1)
        if "autoscaling_config" in entry:
            scaling = deployment._deployment_config.autoscaling_config
            assert {k: getattr(scaling, k) for k in entry["autoscaling_config"]} == entry["autoscaling_config"]
        else:
            assert deployment.num_replicas == entry["num_replicas"]


def test_ray_schema_alone_accepts_unknown_keys(document):
    # Why the strict walk exists: Ray ignores a misspelt option and deploys its default.
    typo = copy.deepcopy(document)
    typo["applications"][0]["deployments"][1]["num_replica"] = 5
    ServeDeploySchema.model_validate(typo)


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda d: d.update(proxy_locaton="HeadOnly"), "proxy_locaton"),
        (lambda d: d["http_options"].update(prot=1), "http_options.prot"),
        (lambda d: d["applications"][0].update(import_pth="x:y"), "applications[0].import_pth"),
        (
            lambda d: d["applications"][0]["deployments"][1].update(num_replica=3),
            "applications[0].deployments[1].num_replica",
        ),
        (
            lambda d: d["applications"][0]["deployments"][2]["autoscaling_config"].update(max_replica=3),
            "applications[0].deployments[2].autoscaling_config.max_replica",
        ),
        (
            lambda d: d["applications"][0]["deployments"][1]["ray_actor_options"].update(num_gpu=1),
            "applications[0].deployments[1].ray_actor_options.num_gpu",
        ),
        (lambda d: d["applications"][0].update(runtime_env={"env_var": {}}), "applications[0].runtime_env.env_var"),
    ],
)
def test_unknown_keys_are_rejected_by_path(document, edit, path):
    edit(document)
    with pytest.raises(ServeConfigError, match="unknown key") as error:
        validate_serve_config(document)
    assert path in str(error.value)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda a: a.update(setting={}), "applications[0].args.setting"),
        (
            lambda a: a["settings"]["tasks"]["echo"].update(num_gpu=1),
            "applications[0].args.settings.tasks.echo.num_gpu",
        ),
        (lambda a: a["settings"].update(max_beam_size=0), "applications[0].args.settings.max_beam_size"),
    ],
)
def test_bad_mmserve_args_are_rejected_by_path(document, edit, fragment):
    edit(document["applications"][0]["args"])
    with pytest.raises(ServeConfigError) as error:
        validate_serve_config(document)
    assert fragment in str(error.value)


def test_schema_errors_are_reported(document):
    document["applications"][0]["deployments"][1]["num_replicas"] = -1
    with pytest.raises(ServeConfigError, match="invalid Serve config"):
        validate_serve_config(document)


def test_serve_config_command_writes_the_document(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MMSERVE_PLUGINS", "none")
    monkeypatch.setenv("MMSERVE_PLUGIN_MODULES", ECHO_MODULE)
    monkeypatch.setenv("MMSERVE_TASKS__ECHO__NUM_REPLICAS", "3")
    monkeypatch.setenv("MMSERVE_HOST", "10.0.0.1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    output = tmp_path / "serve.yaml"
    assert cli.main(["serve-config", "--output", str(output)]) == 0
    document = yaml.safe_load(output.read_text())
    validate_serve_config(document)
    (app,) = document["applications"]
    assert [d["name"] for d in app["deployments"]] == ["ingress", "task-echo"]
    assert app["deployments"][1]["num_replicas"] == 3
    assert app["runtime_env"] == {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}
    assert document["http_options"]["host"] == "10.0.0.1"
    assert "host" not in app["args"]["settings"]
