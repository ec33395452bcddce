"""Fuzz every route of the server's own OpenAPI document with schemathesis (in-process, ASGI).

Checks on every answer: no server error (5xx), the status code is documented, the body
conforms to the documented schema and content type (music's binary answers included). Tasks
served: the built-in captioning, speech, action and music (so the OpenAI-compatible
transcription route reaches the real speech model), echo, a task with its own options
(repeat), and a transcribing fixture task (scribe).

Budget: MMSERVE_FUZZ_EXAMPLES examples per operation (hypothesis' upper bound; simple
operations need fewer). CI runs the default (a few hundred cases, deterministic);
`make fuzz` raises it to >= 1,000 cases with a random seed. The run's case count and
status codes are printed at the end and written to MMSERVE_FUZZ_REPORT when set.
"""

from __future__ import annotations

import collections
import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mmserve.server.http.app import create_app
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE

EXAMPLES = int(os.environ.get("MMSERVE_FUZZ_EXAMPLES", "15"))  # CI: ~220 cases
RANDOM = os.environ.get("MMSERVE_FUZZ_RANDOM", "") == "1"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
PLUGIN_MODULES = [ECHO_MODULE, "tests.fixtures.options_plugin", "tests.fixtures.transcribing_plugin"]
STATUSES: collections.Counter[str] = collections.Counter()
FAILED_OPERATIONS: list[str] = []


@pytest.fixture(scope="session")
def fuzz_app(tmp_path_factory):
    settings_ = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        plugins=["captioning", "speech", "action", "music"],
        plugin_modules=PLUGIN_MODULES,
        max_upload_bytes=64 * 1024,
        model_poll_interval_s=0,
        request_timeout_s=30,
    )
    app = create_app(settings_)
    yield app
    _report()


def test_every_route_answers_as_documented(fuzz_app):
    # The Python API rather than schemathesis' pytest plugin, which does not run on pytest 9.
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18, [op.label for op in operations]
    routes = {op.path for op in operations}
    assert {"/v1/speech", "/v1/action", "/v1/music", "/v1/audio/transcriptions"} <= routes, sorted(routes)
    for operation in operations:
        try:
            _fuzz(operation, fuzz_app)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis' FailureGroup included: collect all, fail once
            failures.append(f"{operation.label}: {exc}"[:3000])
    FAILED_OPERATIONS.extend(failures)
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)


def _fuzz(operation, app) -> None:
    """Up to EXAMPLES cases of `operation`, valid and invalid, each answer checked."""
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure as found
    )
    def fuzz(case) -> None:
        response = case.call()
        STATUSES[f"{operation.method.upper()} {operation.path} {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        finally:
            if operation.path.endswith("/unload"):
                _reload_all(app)  # fuzzing `unload` must not turn every later case into a 503

    fuzz()


def _reload_all(app) -> None:
    from schemathesis.python.asgi import get_client

    with get_client(app) as client:
        for name, service in app.state.runtime.services.items():
            if service.status == "unloaded":
                assert client.post(f"/v2/repository/models/{name}/load").status_code == 200


def _report() -> None:
    total = sum(STATUSES.values())
    server_errors = sum(n for key, n in STATUSES.items() if key.endswith(tuple(f" 5{d:02d}" for d in range(100))))
    summary = {
        "cases": total,
        "server_errors": server_errors,
        "failed_operations": FAILED_OPERATIONS,
        "by_operation_and_status": dict(sorted(STATUSES.items())),
    }
    print(f"\nfuzz: {total} cases, {server_errors} answered 5xx")
    path = os.environ.get("MMSERVE_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
