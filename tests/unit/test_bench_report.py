"""The benchmark's arithmetic and formatting: percentiles, ratios, the summary line, the table.

Fast and server-free: results are synthetic, shaped like bench/client.py's output.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from bench import report
from bench.client import multipart_body, parse_caption

SUMMARY = re.compile(r"^summary: ratio best-peer \d+\.\d{2} at c=32; ratio bare \d+\.\d{2}$")


def _level(c: int, throughput: float, latency_ms: float, errors: int = 0, n: int = 100) -> dict:
    latencies = [latency_ms / 1000 * (0.5 + i / n) for i in range(n)]  # spread around latency_ms
    return {
        "concurrency": c,
        "requests": n + errors,
        "ok": n,
        "errors": errors,
        "wall_s": n / throughput,
        "latencies_s": latencies,
        "captions": {"0": "a red one", "1": "a blue two"},
    }


def _results(**systems: list[dict]) -> dict:
    names = {"bare": report.BARE}
    return {
        "meta": {"started": "2026-01-01 00:00", "quick": True, "weights": "w", "weights_sha256": "0" * 64},
        "systems": [
            {"name": names.get(k, k.replace("_", "-")), "config": f"{k} config", "levels": v, "error": None}
            for k, v in systems.items()
        ],
    }


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q):
    values = list(np.random.default_rng(0).exponential(0.05, 257))
    assert report.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edge_cases():
    assert math.isnan(report.percentile([], 50))
    assert report.percentile([3.0], 99) == 3.0
    assert report.percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(AssertionError):
        report.percentile([1.0], 101)


def test_level_stats_units():
    stats = report.level_stats({"concurrency": 8, "ok": 4, "errors": 1, "wall_s": 2.0,
                                "latencies_s": [0.010, 0.020, 0.030, 0.040]})  # fmt: skip
    assert stats["throughput"] == 2.0  # completed requests / wall seconds; errors do not count
    assert stats["p50_ms"] == pytest.approx(25.0)
    assert stats["p99_ms"] == pytest.approx(39.7)
    assert (stats["ok"], stats["errors"]) == (4, 1)


def test_summary_picks_best_peer_at_32_and_divides():
    results = _results(
        bare=[_level(32, 500, 60)],
        mmserve=[_level(8, 100, 10), _level(32, 450, 70)],
        litserve_batched=[_level(32, 150, 200)],
        rayserve=[_level(32, 200, 160), _level(64, 900, 10)],  # c=64 must not matter
        fastapi=[_level(32, 60, 500)],
    )
    summary = report.summarize(results)
    assert summary["best_peer"] == "rayserve"
    assert summary["ratio_best_peer"] == pytest.approx(450 / 200)
    assert summary["ratio_bare"] == pytest.approx(450 / 500)
    assert summary["p99_no_worse"] is True
    line = report.summary_line(summary)
    assert line == "summary: ratio best-peer 2.25 at c=32; ratio bare 0.90"
    assert SUMMARY.match(line)


def test_summary_ignores_a_peer_whose_level_had_errors():
    results = _results(
        bare=[_level(32, 500, 60)],
        mmserve=[_level(32, 400, 70)],
        fastapi=[_level(32, 1000, 5, errors=3)],  # fast because it failed: not the best peer
        rayserve=[_level(32, 100, 300)],
    )
    summary = report.summarize(results)
    assert summary["best_peer"] == "rayserve"
    assert summary["ratio_best_peer"] == pytest.approx(4.0)


def test_summary_is_nan_not_a_crash_when_mmserve_failed():
    results = _results(bare=[_level(32, 500, 60)], mmserve=[], rayserve=[_level(32, 100, 300)])
    line = report.summary_line(report.summarize(results))
    assert line == "summary: ratio best-peer nan at c=32; ratio bare nan"


def test_markdown_has_every_system_and_level_and_ends_with_the_summary():
    results = _results(
        bare=[_level(c, 100 * c, 10) for c in (1, 8, 32, 64)],
        mmserve=[_level(c, 90 * c, 12) for c in (1, 8, 32, 64)],
        rayserve=[_level(c, 20 * c, 50) for c in (1, 8, 32, 64)],
    )
    results["systems"].append({"name": "litserve-cb", "config": "x", "levels": [], "error": "TimeoutError: late"})
    text = report.markdown(results, "latest.png")
    for name in ("bare model", "mmserve", "rayserve"):
        for c in (1, 8, 32, 64):
            assert re.search(rf"^\| {name} \| {c} \| ", text, re.M), (name, c)
    assert "failed: TimeoutError: late" in text
    assert "![throughput" in text
    assert [line for line in text.splitlines() if line.startswith("summary:")][-1] == report.summary_line(
        report.summarize(results)
    )


def test_caption_agreement_against_the_bare_model():
    results = _results(bare=[_level(32, 1, 1)], mmserve=[_level(32, 1, 1)], fastapi=[_level(32, 1, 1)])
    results["systems"][2]["levels"][0]["captions"] = {"0": "a red one", "1": "wrong"}
    agreement = report.caption_agreement(results)
    assert agreement["mmserve"] == 1.0 and agreement["fastapi"] == 0.5


def test_write_produces_markdown_plot_and_json(tmp_path):
    results = _results(bare=[_level(32, 500, 60)], mmserve=[_level(32, 450, 70)], rayserve=[_level(32, 200, 160)])
    md, png, line = report.write(results, tmp_path)
    assert md.read_text().rstrip().endswith("```") and line in md.read_text()
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "latest.json").is_file()


def test_client_body_and_caption_parsing():
    body = multipart_body(b"\x89PNG\r\n\x1a\nxyz")
    assert b'name="file"' in body and b"Content-Type: image/png" in body and body.endswith(b"--\r\n")
    assert parse_caption(b'{"caption": "a red one", "score": -1.0}') == "a red one"
    streamed = b'{"token": "a"}\n{"token": "red"}\n{"caption": "a red one"}\n'
    assert parse_caption(streamed) == "a red one"
