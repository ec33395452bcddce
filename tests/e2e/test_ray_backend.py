"""`mmserve serve --backend ray` end to end, on a local Ray cluster that pretends to have 4 GPUs.

One cluster for the module: this process starts it (`ray.init(num_gpus=4)`, so fractional GPU
placement can be checked on a CPU machine) and a real `mmserve serve --backend ray` process
joins it through RAY_ADDRESS. Replica facts (GPU ids, pids) are read over HTTP from
`GET /v1/tasks`, which asks every replica to describe itself.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ECHO_MODULE, ECHO_SRC
from tests.e2e.server_process import ROOT, free_port

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.e2e

TEXT = {"content-type": "text/plain"}
STARTUP_TIMEOUT_S = 180.0
GPU_TASKS = ("echo", "shout")


def _server_settings(data_dir: Path) -> dict:
    gpu_task = {"num_replicas": 2, "num_gpus": 0.5, "num_cpus": 0.25}
    return {
        "data_dir": str(data_dir),
        "plugins": ["none"],
        "plugin_modules": [ECHO_MODULE, "tests.fixtures.second_task_plugin", "tests.fixtures.unloadable_model_plugin"],
        "tasks": {"echo": gpu_task, "shout": gpu_task, "unloadable": {"num_cpus": 0.25}},
        "ray": {"ingress_num_cpus": 0.25},
    }


def _tasks(base: str) -> dict[str, dict]:
    response = httpx.get(f"{base}/v1/tasks", timeout=30.0)
    response.raise_for_status()
    return {task["name"]: task for task in response.json()["tasks"]}


def _settled(tasks: dict[str, dict]) -> bool:
    """Every replica of the GPU tasks is up and ready, and the unloadable task has reported."""
    gpu_ready = all(
        tasks[name]["status"] == "ready" and len(tasks[name]["replicas"]) == 2
        and all(r["status"] == "ready" for r in tasks[name]["replicas"])
        for name in GPU_TASKS
    )
    return gpu_ready and tasks["unloadable"]["status"] == "failed"


def _wait_until_settled(base: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-6000:]}")
        try:
            tasks = _tasks(base)
            if _settled(tasks):
                return tasks
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray backend did not settle in {timeout_s}s:\n{log_path.read_text()[-6000:]}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory) -> Iterator[str]:
    """Base URL of `mmserve serve --backend ray` on this module's cluster."""
    work = tmp_path_factory.mktemp("ray-backend")
    config = work / "mmserve.yaml"
    config.write_text(yaml.safe_dump(_server_settings(work / "data")))
    # Logical resources only: the replicas are mostly idle processes on a 2-core machine.
    context = ray.init(address="local", num_cpus=4, num_gpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    env = {
        **os.environ,
        "RAY_ADDRESS": context.address_info["gcs_address"],
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ECHO_SRC)]),
    }
    log_path = work / "server.log"
    process = None
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mmserve.server", "--config", str(config),
                 "serve", "--backend", "ray", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        _wait_until_settled(base, process, log_path, STARTUP_TIMEOUT_S)
        yield base
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # it deletes its application, then disconnects
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def test_task_is_served_end_to_end_over_http(ray_server):
    out = httpx.post(f"{ray_server}/v1/echo", content=b"hello ray", headers=TEXT, timeout=30).json()
    assert out["text"] == "HELLO RAY"
    assert out["model"] == {"name": "echo", "version": "1"}
    as_json = httpx.post(f"{ray_server}/v1/shout", json={"data": "c2hvdXQ=", "max_length": 3}, timeout=30)
    assert as_json.json()["text"] == "SHO"


def test_streaming_is_preserved(ray_server):
    url = f"{ray_server}/v1/echo?stream=true"
    with httpx.stream("POST", url, content=b"abc", headers=TEXT, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [block.split("\n")[0] for block in body.strip().split("\n\n")]
    assert events == ["event: token"] * 3 + ["event: result"]
    assert '"token": "A"' in body and '"text": "ABC"' in body


def test_errors_keep_their_status_and_shape(ray_server):
    wrong_type = httpx.post(f"{ray_server}/v1/echo", content=b"abc", headers={"content-type": "image/gif"}, timeout=30)
    assert wrong_type.status_code == 415 and "image/gif" in wrong_type.json()["error"]
    # A streamed request with bad input is still refused before the stream starts.
    empty = httpx.post(f"{ray_server}/v1/echo?stream=true", content=b"", headers=TEXT, timeout=30)
    assert empty.status_code == 400 and "empty input" in empty.json()["error"]
    bad_param = httpx.post(f"{ray_server}/v1/echo?beam_size=0", content=b"abc", headers=TEXT, timeout=30)
    assert bad_param.status_code == 422


def test_a_task_whose_model_fails_reports_why(ray_server):
    tasks = _tasks(ray_server)
    assert "weights are corrupt" in tasks["unloadable"]["error"]
    response = httpx.post(f"{ray_server}/v1/unloadable", content=b"abc", headers=TEXT, timeout=30)
    assert response.status_code == 503 and "weights are corrupt" in response.json()["error"]
    assert response.headers["retry-after"] == "5"


def test_fractional_gpus_are_assigned_by_ray(ray_server):
    tasks = _tasks(ray_server)
    replicas = [r for name in GPU_TASKS for r in tasks[name]["replicas"]]
    assert len(replicas) == 4
    # Each replica asked for half a GPU: Ray gives it exactly one device id ...
    assert all(len(r["gpu_ids"]) == 1 for r in replicas), replicas
    per_gpu = collections.Counter(r["gpu_ids"][0] for r in replicas)
    # ... packs two halves onto each device before opening another, so 4 halves use 2 of the 4 ...
    assert sorted(per_gpu.values()) == [2, 2], per_gpu
    assert set(per_gpu) <= {0, 1, 2, 3}
    # ... and with no CUDA on this machine the model runs on the CPU.
    assert {r["device"] for r in replicas} == {"cpu"}
    for name in GPU_TASKS:
        assert len({r["replica_id"] for r in tasks[name]["replicas"]}) == 2


def test_a_killed_replica_is_replaced(ray_server):
    victim = _tasks(ray_server)["echo"]["replicas"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        replicas = _tasks(ray_server)["echo"]["replicas"]
        pids = {r["pid"] for r in replicas}
        if len(replicas) == 2 and victim["pid"] not in pids and all(r["status"] == "ready" for r in replicas):
            break
        assert time.monotonic() < deadline, f"replica not replaced: {replicas}"
        time.sleep(1.0)
    assert victim["replica_id"] not in {r["replica_id"] for r in replicas}
    for i in range(20):
        response = httpx.post(f"{ray_server}/v1/echo", content=f"after {i}".encode(), headers=TEXT, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["text"] == f"AFTER {i}"


def test_a_replica_killed_under_load_loses_no_request(ray_server):
    """Requests the victim had accepted are retried once on the other replica or answered with
    an error (503 + Retry-After); none hangs, and new requests succeed."""
    import asyncio

    victim = _tasks(ray_server)["echo"]["replicas"][0]
    texts = [f"{i:03d} " + "load " * 20 for i in range(400)]  # ~100 decode steps each

    async def one(client: httpx.AsyncClient, text: str) -> tuple[str, int, str, str | None]:
        response = await client.post(f"{ray_server}/v1/echo?max_length=128", content=text.encode(), headers=TEXT)
        body = response.json()
        return text, response.status_code, body.get("text") or body.get("error", ""), response.headers.get("retry-after")

    async def load() -> list:
        async with httpx.AsyncClient(timeout=httpx.Timeout(90.0), limits=httpx.Limits(max_connections=48)) as client:
            calls = [asyncio.ensure_future(one(client, t)) for t in texts]
            await asyncio.sleep(1.5)  # requests are spread over both replicas and decoding
            os.kill(victim["pid"], signal.SIGKILL)
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(load())
    hung = [o for o in outcomes if isinstance(o, BaseException)]
    assert not hung, f"{len(hung)} requests got no answer: {hung[:3]}"
    ok = [o for o in outcomes if o[1] == 200]
    assert all(answer == text.upper() for text, _, answer, _ in ok), "a retried request came back wrong"
    failed = [o for o in outcomes if o[1] != 200]
    assert all(status == 503 and retry_after for _, status, _, retry_after in failed), failed[:3]
    assert len(ok) > len(texts) // 2, f"only {len(ok)} of {len(texts)} answered 200: {failed[:3]}"
    for i in range(20):  # new requests succeed (the survivor serves while Serve replaces the victim)
        response = httpx.post(f"{ray_server}/v1/echo", content=f"new {i}".encode(), headers=TEXT, timeout=60)
        assert response.status_code == 200 and response.json()["text"] == f"NEW {i}", response.text


def test_open_inference_protocol_works_through_replicas(ray_server):
    assert httpx.get(f"{ray_server}/v2/models/echo/ready", timeout=30).status_code == 200
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["ab", "cd"]}]}
    response = httpx.post(f"{ray_server}/v2/models/echo/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["TEXT_OUT"]["data"] == ["AB", "CD"]


def test_the_written_config_deploys_like_kuberay_would(ray_server, tmp_path, monkeypatch):
    """`mmserve serve-config` output, applied to the cluster the way `serve deploy` / KubeRay do:
    the controller imports `server.rayserve.ray_backend:build_app` and calls it with the document's args."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from mmserve.server.rayserve.serve_config import serve_config_yaml, validate_serve_config
    from mmserve.server.settings import Settings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(
        data_dir=tmp_path / "data",
        plugins=["none"],
        plugin_modules=[ECHO_MODULE],
        tasks={"echo": {"num_cpus": 0.25}},
        ray={"app_name": "from-config", "ingress_num_cpus": 0.25},
    )
    document = yaml.safe_load(serve_config_yaml(settings))
    (app,) = document["applications"]
    # Beside the app already on "/": its own prefix. In a cluster image mmserve and its plugins
    # are installed; here the builder needs the source paths.
    app["route_prefix"] = "/from-config"
    app["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ECHO_SRC)])}}
    schema = validate_serve_config(document)
    client = _get_global_client()
    # Not `_blocking=True`: Ray gives that a fixed 60 s, which a loaded CI machine can overrun
    # (seen with a training run beside it); the route is polled below with a deadline of our own.
    client.deploy_apps(schema)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                response = httpx.post(f"{ray_server}/from-config/v1/echo", content=b"declared", headers=TEXT, timeout=30)
            except httpx.TimeoutException:  # the proxy holds requests while the replica starts
                assert time.monotonic() < deadline, "the deployed app never answered"
                continue
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, response.text
            time.sleep(1.0)
        assert response.json()["text"] == "DECLARED"
        status = serve.status().applications["from-config"]
        assert set(status.deployments) == {"ingress", "task-echo"}
    finally:
        serve.delete("from-config")
