"""The CI-sized soak (`make soak` runs the same for 5 minutes): capacity, then twice that,
against captioning and music on a real server. Excess is shed with 503/429 + Retry-After,
every accepted request is answered, and RSS, file descriptors and threads do not grow."""

from __future__ import annotations

import pytest

from bench import soak

pytestmark = pytest.mark.e2e


def test_twice_capacity_for_fifteen_seconds_sheds_the_excess_and_loses_nothing(tmp_path):
    out = tmp_path / "soak"
    code = soak.main(["--warmup-s", "1", "--capacity-s", "4", "--duration-s", "15", "--idle-s", "1",
                      "--sample-every-s", "1", "--out", str(out)])  # fmt: skip
    result = soak.json.loads(out.with_suffix(".json").read_text())
    over = result["overload"]
    assert over["sent"] == over["ok"] + over["shed"] + over["shed_without_retry_after"] + over["errors"] + over["lost"]
    assert over["lost"] == 0, over["error_samples"]
    assert over["errors"] == 0, over["error_samples"]
    assert over["shed_without_retry_after"] == 0
    assert over["ok"] > 0 and over["shed"] > 0, f"offered {over['rate_rps']:.1f} req/s: {over['statuses']}"
    assert set(over["statuses"]) <= {"200", "503", "429"}, over["statuses"]
    resources = result["resources"]
    assert resources["rss_growth"] < 0.10, resources
    assert resources["end"]["threads"] <= resources["start"]["threads"], resources
    assert resources["end"]["fds"] <= resources["start"]["fds"] + 4, resources
    assert result["server_alive"]
    assert code == 0, out.with_suffix(".md").read_text()
