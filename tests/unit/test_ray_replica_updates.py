"""A Ray task replica follows its alias like the embedded server (its class, without a cluster)."""

from __future__ import annotations

import asyncio
import shutil

import torch

from mmserve.server.rayserve import ray_replica
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE, ECHO_SRC


def test_a_replica_switches_when_the_alias_moves(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_replica, "replica_device", lambda: torch.device("cpu"))  # no cluster here
    settings = Settings(data_dir=tmp_path, plugins=["none"], plugin_modules=[ECHO_MODULE], model_poll_interval_s=0.1)
    replica = ray_replica.TaskReplica("echo", settings.model_dump(mode="json"))
    artifact = tmp_path / "next"
    shutil.copytree(ECHO_SRC / "mmserve_echo" / "artifact", artifact)
    new = replica.runtime.registry.register("echo", artifact)

    async def scenario() -> list[str]:
        versions = [(await replica.run(b"ab", "text/plain", {}))["output"]["model"]["version"]]
        replica.runtime.registry.set_alias("echo", "production", new)
        for _ in range(300):  # up to ~30 s on a busy machine
            await asyncio.sleep(0.1)
            if replica.service.version == new:
                break
        versions.append((await replica.run(b"ab", "text/plain", {}))["output"]["model"]["version"])
        await replica.inference.updater.stop()
        return versions

    try:
        assert asyncio.run(scenario()) == ["1", new]
    finally:
        replica.runtime.stop()
        replica.inference.shutdown()
