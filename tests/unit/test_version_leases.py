"""Which version answers, and when a version's lease is given back: a v2 batch names the
version that produced it, a streamed answer nobody reads frees its lease and decode slot,
and requests still preprocessing count against the queue."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient

from mmserve.server.engine import DecodeParams, EngineOverloaded
from mmserve.server.http.app import create_app
from mmserve.server.http.params import GenerationParams
from mmserve.server.inference import Inference
from mmserve.server.runtime import Runtime
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE, ECHO_SRC

TEXT = {"content-type": "text/plain"}


def _infer_body(*texts: str) -> dict:
    return {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}]}


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("leases"), plugins=["none"], plugin_modules=[ECHO_MODULE],
                        model_poll_interval_s=0)  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as client:
        yield app, client


def test_a_v2_batch_straddling_a_switch_is_answered_by_one_version_it_names(app_client, tmp_path, monkeypatch):
    app, client = app_client
    runtime = app.state.runtime
    service = runtime.services["echo"]
    old = service.version
    artifact = tmp_path / "next"
    shutil.copytree(ECHO_SRC / "mmserve_echo" / "artifact", artifact)
    new = runtime.registry.register("echo", artifact, description="next")
    runtime.registry.set_alias("echo", "production", new)
    preprocess = service.task.preprocess
    entered = threading.Event()
    used: list[int] = []  # id() of the model each element was preprocessed for

    def slow_preprocess(data, content_type, model, *args, **kwargs):
        used.append(id(model))
        entered.set()
        time.sleep(0.3 if data != b"a" else 0.0)  # the batch is still running when the switch lands
        return preprocess(data, content_type, model, *args, **kwargs)

    monkeypatch.setattr(service.task, "preprocess", slow_preprocess)
    answer: dict = {}
    sender = threading.Thread(target=lambda: answer.update(
        client.post("/v2/models/echo/infer", json=_infer_body("a", "bb", "ccc", "dddd")).json()))  # fmt: skip
    old_model = service.loaded.model
    sender.start()
    assert entered.wait(10)
    switched = client.post("/v2/repository/models/echo/load").json()
    sender.join(30)
    assert switched["switched"] and switched["version"] == new, switched
    assert answer["model_version"] == old, answer  # every element ran on the version it started on
    assert set(used) == {id(old_model)}, "elements of one batch were preprocessed by two versions"
    assert answer["outputs"][0]["data"] == ["A", "BB", "CCC", "DDDD"]
    after = client.post("/v2/models/echo/infer", json=_infer_body("e")).json()
    assert after["model_version"] == new


def test_a_v2_answer_from_replicas_on_two_versions_names_both(app_client, monkeypatch):
    # On Ray each element may reach a different replica mid-rollout: the answer must not
    # claim the first element's version for all of them.
    app, client = app_client
    inference = app.state.inference
    original = inference.run

    async def run(task, data, content_type, params, request=None, pinned=None):
        output = await original(task, data, content_type, params, request, pinned)
        output["model"]["version"] = "7" if data == b"a" else "8"
        return output

    monkeypatch.setattr(inference, "run", run)
    answer = client.post("/v2/models/echo/infer", json=_infer_body("a", "b", "c")).json()
    assert answer["model_version"] == "7,8", answer


@pytest.fixture
def inference(shared_data_dir):
    settings = Settings(data_dir=shared_data_dir, plugins=["none"], plugin_modules=[ECHO_MODULE], request_timeout_s=0.5,
                        model_poll_interval_s=0)  # fmt: skip
    runtime = Runtime.from_settings(settings)
    runtime.load_all()
    yield Inference(runtime)
    runtime.stop()


def _leases(inference: Inference) -> int:
    return inference.runtime.services["echo"].loaded._leases


def test_a_stream_never_read_gives_back_its_lease_and_slot(inference):
    async def scenario():
        stream = await inference.open_stream("echo", b"x" * 50, "text/plain", GenerationParams(max_length=60))
        held = _leases(inference)
        await asyncio.sleep(1.5)  # past the 0.5 s request timeout, never iterated
        engine = inference.runtime.services["echo"].engine
        return held, stream.released, _leases(inference), engine.active_sequences, engine.queue_depth

    held, released, leases, active, queued = asyncio.run(scenario())
    assert held == 1 and released and leases == 0 and active == 0 and queued == 0


def test_closing_an_unread_stream_releases_at_once_and_a_read_one_at_its_end(inference):
    async def scenario():
        unread = await inference.open_stream("echo", b"abc", "text/plain", GenerationParams())
        await unread.aclose()  # what a disconnect does before the answer started
        after_close = _leases(inference)
        stream = await inference.open_stream("echo", b"abc", "text/plain", GenerationParams())
        events = [event async for event in stream]
        return after_close, events, _leases(inference)

    after_close, events, leases = asyncio.run(scenario())
    assert after_close == 0 and leases == 0
    assert [e for e, _ in events] == ["token"] * 3 + ["result"] and events[-1][1]["text"] == "ABC"


def test_requests_still_preprocessing_count_against_the_queue(inference):
    engine = inference.runtime.services["echo"].engine
    limit = engine.config.max_queue

    async def scenario():
        for _ in range(limit):
            engine.admit()
        with pytest.raises(EngineOverloaded):
            engine.admit()
        with pytest.raises(EngineOverloaded):  # a request that skipped admission is refused too
            engine.submit(b"x", DecodeParams())
        engine.withdraw()
        engine.admit()  # the freed place is taken again
        for _ in range(limit):
            engine.withdraw()

    asyncio.run(scenario())
    assert engine._admitted == 0
