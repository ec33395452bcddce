"""Zero-downtime model updates against a real MLflow sqlite store: move the alias under load."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mmserve.server.http.app import create_app
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE, ECHO_SRC

TEXT = {"content-type": "text/plain"}
ECHO_ARTIFACT = ECHO_SRC / "mmserve_echo" / "artifact"
WORDS = b"steady load"  # short decode: requests spend their time in (slowed) preprocessing


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("updates"),
        plugins=["none"],
        plugin_modules=[ECHO_MODULE],
        model_poll_interval_s=0.2,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        yield app, client


def _new_version(app, tmp_path: Path, name: str) -> str:
    artifact = tmp_path / name
    shutil.copytree(ECHO_ARTIFACT, artifact)
    return app.state.runtime.registry.register("echo", artifact, description=name)


class Load:
    """Threads sending requests until stopped; each records (started after the switch?, status, version)."""

    def __init__(self, client: TestClient, threads: int = 4):
        self.client = client
        self.switched = threading.Event()
        self.stopped = threading.Event()
        self.records: list[tuple[bool, int, str | None]] = []
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]

    def _send(self) -> None:
        while not self.stopped.is_set():
            after = self.switched.is_set()
            response = self.client.post("/v1/echo", content=WORDS, headers=TEXT)
            version = response.json().get("model", {}).get("version") if response.status_code == 200 else None
            self.records.append((after, response.status_code, version))

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.records) >= count, f"only {len(self.records)} answers in {timeout_s} s"

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(60)


def test_moving_the_alias_under_load_switches_with_no_errors(app_client, tmp_path, monkeypatch):
    app, client = app_client
    runtime = app.state.runtime
    service = runtime.services["echo"]
    # Slow preprocessing keeps requests between "accepted" and "queued in the engine" when the
    # switch happens: the window in which stopping the old engine too early would refuse them.
    preprocess = service.task.preprocess

    def slow_preprocess(*args, **kwargs):
        time.sleep(0.2)
        return preprocess(*args, **kwargs)

    monkeypatch.setattr(service.task, "preprocess", slow_preprocess)
    before = service.version
    old = service.loaded
    new = _new_version(app, tmp_path, "next")
    with Load(client) as load:
        load.wait_for(12)
        runtime.registry.set_alias("echo", "production", new)
        answer = client.post("/v2/repository/models/echo/load")  # now, not at the next poll
        assert answer.status_code == 200 and answer.json()["version"] == new
        load.switched.set()
        load.wait_for(len(load.records) + 24)
    statuses = {status for _, status, _ in load.records}
    assert statuses == {200}, f"errors during the switch: {statuses}"
    assert {version for _, _, version in load.records} == {before, new}
    late = [version for after, _, version in load.records if after]
    assert late and set(late) == {new}, "a request sent after the switch was answered by the old version"
    assert old.stopped.wait(10), "the old version's engine did not stop after its requests finished"
    assert service.loaded.version == new and not service.loaded.stopped.is_set()
    infer = client.post("/v2/models/echo/infer", json={"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1],
                                                                     "data": ["ab"]}]})
    assert infer.json()["model_version"] == new


def test_the_poller_notices_a_moved_alias(app_client, tmp_path):
    app, client = app_client
    newer = _new_version(app, tmp_path, "newer")
    app.state.runtime.registry.set_alias("echo", "production", newer)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.post("/v1/echo", content=b"x", headers=TEXT).json()["model"]["version"] == newer:
            break
        time.sleep(0.1)
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert [t["model"]["version"] for t in tasks if t["name"] == "echo"] == [newer]


def test_a_failed_update_keeps_the_old_version_serving(app_client, monkeypatch):
    app, client = app_client
    runtime = app.state.runtime
    serving = runtime.services["echo"].version

    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(runtime, "prepare", broken)
    monkeypatch.setattr(runtime.registry, "current_version", broken)  # the poller cannot reach MLflow
    answer = client.post("/v2/repository/models/echo/load")
    assert answer.status_code == 503 and "artifact store unreachable" in answer.json()["error"]
    assert client.post("/v1/echo", content=b"ok", headers=TEXT).json()["model"]["version"] == serving
    time.sleep(0.5)  # a few polls that cannot reach MLflow
    echo = [t for t in client.get("/v1/tasks").json()["tasks"] if t["name"] == "echo"][0]
    assert echo["status"] == "ready" and "artifact store unreachable" in echo["update_error"]


def test_unload_and_load_through_the_repository_api(app_client):
    _, client = app_client
    assert client.post("/v2/repository/models/nothing/load").status_code == 404
    assert client.post("/v2/repository/models/echo/unload").json() == {"name": "echo", "state": "UNAVAILABLE"}
    assert client.post("/v1/echo", content=b"ab", headers=TEXT).status_code == 503
    assert client.get("/v2/health/ready").status_code == 503
    index = client.post("/v2/repository/index").json()
    assert [(m["name"], m["state"]) for m in index] == [("echo", "UNAVAILABLE")]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == []
    loaded = client.post("/v2/repository/models/echo/load")
    assert loaded.status_code == 200 and loaded.json()["switched"]
    assert client.post("/v1/echo", content=b"ab", headers=TEXT).json()["text"] == "AB"
    assert client.post("/v2/repository/index").json()[0]["state"] == "READY"
