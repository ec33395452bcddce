"""values.schema.json: Helm rejects bad values before rendering, naming the key; the mmserve
parts of the schema are the pydantic settings' constraints (tests/helm/settings_schema.py)."""

from __future__ import annotations

import json

import pytest

from tests.helm.conftest import CHART, VALUE_SETS, load_values
from tests.helm.settings_schema import SCHEMA_PATH, settings_definitions


def test_schema_is_valid_draft7_and_closed_at_the_top():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def test_mmserve_settings_schema_matches_the_pydantic_models():
    definitions = json.loads(SCHEMA_PATH.read_text())["definitions"]
    expected = settings_definitions()
    for name, definition in expected.items():
        assert definitions[name] == definition, f"{name} drifted: run `.venv/bin/python -m tests.helm.settings_schema`"


def test_chart_defaults_name_only_known_values_keys(helm):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_value_sets_pass_the_schema(helm, value_set):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(load_values(value_set))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ({"ray": {"workers": {"cpu": {"replicas": -1}}}}, "at '/ray/workers/cpu/replicas': minimum: got -1, want 0"),
        (
            {"ray": {"workers": {"gpu": {"gpusPerWorker": 0}}}},
            "at '/ray/workers/gpu/gpusPerWorker': minimum: got 0, want 1",
        ),
        ({"ray": {"workers": {"cpu": {"minReplica": 1}}}}, "additional properties 'minReplica' not allowed"),
        ({"ray": {"autoscaling": {"upscalingMode": "Fast"}}}, "at '/ray/autoscaling/upscalingMode'"),
        ({"serve": {"tasks": {"captioning": {"num_replica": 2}}}}, "additional properties 'num_replica' not allowed"),
        ({"serve": {"tasks": {"captioning": {"num_gpus": 1.5}}}}, "multipleOf: got 1.5, want 1"),
        ({"serve": {"tasks": {"captioning": {"num_gpus": -0.5}}}}, "minimum: got -0.5, want 0"),
        (
            {"serve": {"tasks": {"captioning": {"max_queued_requests": 0}}}},
            "at '/serve/tasks/captioning/max_queued_requests'",
        ),
        (
            {"serve": {"tasks": {"captioning": {"autoscaling": {"max_replica": 3}}}}},
            "additional properties 'max_replica' not allowed",
        ),
        ({"serve": {"tasks": {"Bad Name": {}}}}, "invalid propertyName 'Bad Name'"),
        ({"serve": {"settings": {"port": 9000}}}, "additional properties 'port' not allowed"),
        ({"serve": {"settings": {"max_beam_size": 0}}}, "at '/serve/settings/max_beam_size': minimum: got 0, want 1"),
        ({"serve": {"ray": {"address": "10.0.0.1:6379"}}}, "additional properties 'address' not allowed"),
        ({"serve": {"runtimeEnv": {"env_var": {}}}}, "additional properties 'env_var' not allowed"),
        ({"serve": {"port": 70000}}, "at '/serve/port': maximum: got 70,000, want 65,535"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"extraEnv": [{"name": "DB_PASSWORD", "value": "hunter2"}]}, "at '/extraEnv/0': missing property 'valueFrom'"),
        ({"extraEnv": [{"name": "HF_TOKEN", "value": "x", "valueFrom": {}}]}, "at '/extraEnv/0': 'not' failed"),
        (
            {"mlflow": {"backendStore": {"uri": "postgresql://u:p@db/mlflow"}}},
            "additional properties 'uri' not allowed",
        ),
        ({"mlflow": {"artifacts": {"type": "gcs"}}}, "at '/mlflow/artifacts/type'"),
        ({"mlflow": {"persistence": {"size": "lots"}}}, "at '/mlflow/persistence/size'"),
        ({"ingress": {"hosts": [{"host": "a.example.com", "paths": [{"path": "/", "pathType": "Glob"}]}]}}, "pathType"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(helm, values, message):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema(values)
    assert message in str(error.value)


def test_secret_looking_env_by_reference_is_accepted(helm):
    values = {"extraEnv": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
