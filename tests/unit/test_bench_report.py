"""The benchmark's arithmetic and formatting: percentiles, ratios, the summary line, the table.

Fast and server-free: results are synthetic, shaped like bench/client.py's output.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from bench import report
from bench.client import JSON_HEADERS, multipart_body, parse_caption, request_body

SUMMARY = re.compile(
    r"^summary: ratio best-peer (\d+\.\d{2}|nan) at c=32; ratio bare (\d+\.\d{2}|nan); "
    r"long-decode best-peer (\d+\.\d{2}|nan); ray/no-op-ray (\d+\.\d{2}|nan)$"
)


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


def _long(name: str, role: str, levels: list[dict], kind: str = "server") -> dict:
    return {"name": name, "kind": kind, "workload": report.LONG_DECODE, "role": role, "config": "c",
            "levels": levels, "error": None}  # fmt: skip


def _with_ray_and_long(results: dict) -> dict:
    """Add the Ray, no-op and long-decode systems, with roles as bench/run.py writes them."""
    results["systems"] += [
        {"name": "mmserve-ray", "role": "ray", "levels": [_level(1, 50, 20), _level(16, 180, 90)], "error": None},
        {"name": "mmserve-ray-2", "role": "ray", "levels": [_level(16, 200, 80)], "error": None},
        {"name": "no-op-ray", "role": "floor", "levels": [_level(1, 300, 3), _level(16, 200, 80)], "error": None},
        {"name": "no-op-ray-2hop", "role": "floor", "levels": [_level(1, 200, 5)], "error": None},
        {"name": "no-op-fastapi", "role": "floor", "levels": [_level(1, 900, 1), _level(16, 5000, 3)], "error": None},
        _long("long: bare static", "peer", [_level(32, 120, 250)], kind="bare"),
        _long("long: bare continuous", "limit", [_level(32, 400, 80)], kind="bare"),
        _long("long: mmserve", "mmserve", [_level(32, 300, 100)]),
        _long("long: litserve-batched", "peer", [_level(32, 100, 300)]),
        _long("long: litserve-cb", "peer", [_level(32, 150, 200)]),
    ]
    return results


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
    assert line == "summary: ratio best-peer 2.25 at c=32; ratio bare 0.90; long-decode best-peer nan; ray/no-op-ray nan"
    assert SUMMARY.match(line)


def test_summary_long_decode_and_ray_ratios():
    results = _with_ray_and_long(
        _results(bare=[_level(32, 500, 60)], mmserve=[_level(1, 100, 8), _level(16, 300, 50), _level(32, 450, 70)],
                 litserve_batched=[_level(32, 150, 200)])  # fmt: skip
    )
    summary = report.summarize(results)
    # Ray, no-op and long-decode systems are not captioning peers: X is still against litserve
    assert summary["best_peer"] == "litserve-batched"
    assert summary["ratio_best_peer"] == pytest.approx(450 / 150)
    # Z: mmserve / the best long-decode peer; bare static counts as a peer, the limit does not
    assert summary["long_best_peer"] == "long: litserve-cb"
    assert summary["ratio_long_best_peer"] == pytest.approx(300 / 150)
    assert summary["long_best_served_peer"] == "long: litserve-cb"
    assert summary["ratio_long_limit"] == pytest.approx(300 / 400)
    # W at c=16: mmserve on Ray / the no-op Ray app
    assert summary["ratio_ray_noop"] == pytest.approx(180 / 200)
    assert summary["ratio_ray_embedded"] == pytest.approx(180 / 300)
    line = report.summary_line(summary)
    assert line == "summary: ratio best-peer 3.00 at c=32; ratio bare 0.90; long-decode best-peer 2.00; ray/no-op-ray 0.90"
    assert SUMMARY.match(line)


def test_bare_static_is_the_long_decode_best_peer_when_fastest():
    results = _with_ray_and_long(_results(bare=[_level(32, 500, 60)], mmserve=[_level(32, 450, 70)]))
    for s in results["systems"]:
        if s["name"] == "long: bare static":
            s["levels"] = [_level(32, 600, 50)]
    summary = report.summarize(results)
    assert summary["long_best_peer"] == "long: bare static"
    assert summary["ratio_long_best_peer"] == pytest.approx(300 / 600)
    assert summary["long_best_served_peer"] == "long: litserve-cb"  # the best peer that serves HTTP


def test_hop_latencies_are_differences_of_c1_medians():
    results = _with_ray_and_long(_results(mmserve=[_level(1, 100, 8)]))
    hops = {label: (p50, added) for label, p50, added in report.hop_latencies(results)}
    p50 = {n: report.stats_by_system(results)[n][1]["p50_ms"] for n in ("no-op-fastapi", "no-op-ray", "mmserve-ray")}
    assert hops["HTTP floor (client + uvicorn, no model)"] == (p50["no-op-fastapi"], p50["no-op-fastapi"])
    assert hops["Ray proxy instead of uvicorn"][1] == pytest.approx(p50["no-op-ray"] - p50["no-op-fastapi"])
    assert hops["mmserve on Ray instead of embedded"][1] > 0  # 20 ms vs 8 ms medians
    # a hop whose baseline did not run at c=1 is left out, not a crash
    results["systems"] = [s for s in results["systems"] if s["name"] != "no-op-fastapi"]
    labels = [label for label, _, _ in report.hop_latencies(results)]
    assert "Ray proxy instead of uvicorn" not in labels and "mmserve on Ray instead of embedded" in labels


def test_replica_scaling_lists_ray_systems_by_level():
    results = _with_ray_and_long(_results(mmserve=[_level(16, 300, 50)]))
    rows = report.replica_scaling(results)
    assert [(n, c) for n, c, _ in rows] == [("mmserve-ray", 1), ("mmserve-ray", 16), ("mmserve-ray-2", 16)]
    assert rows[2][2] == pytest.approx(200)


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
    assert line == "summary: ratio best-peer nan at c=32; ratio bare nan; long-decode best-peer nan; ray/no-op-ray nan"
    assert SUMMARY.match(line)


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
    assert "## Long-decode" not in text  # no long-decode systems ran
    assert [line for line in text.splitlines() if line.startswith("summary:")][-1] == report.summary_line(
        report.summarize(results)
    )


def test_markdown_has_long_decode_hops_and_replicas_sections():
    results = _with_ray_and_long(
        _results(bare=[_level(c, 100 * c, 10) for c in (1, 16, 32)], mmserve=[_level(c, 90 * c, 12) for c in (1, 16, 32)])
    )
    text = report.markdown(results)
    captioning, long = text.split("## Long-decode")
    assert re.search(r"^\| mmserve-ray \| 16 \| ", captioning, re.M)
    assert re.search(r"^\| long: mmserve \| 32 \| ", long, re.M) and "| long: mmserve |" not in captioning
    assert "Latency each hop adds at c=1" in text and "| Ray proxy instead of uvicorn |" in text
    assert "| mmserve-ray-2 | 16 | 200.0 |" in text
    assert text.rstrip().splitlines()[-2] == report.summary_line(report.summarize(results))


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
    # long-decode: a forecast is kept as its JSON array (6 decimals), streamed or not
    forecast = b'{"forecast": [1.25, -0.1234567], "score": -3.2, "horizon": 2}'
    assert parse_caption(forecast) == "[1.25, -0.123457]"
    assert parse_caption(b'{"token": 1.25}\n{"token": -0.1234567}\n' + forecast) == "[1.25, -0.123457]"
    assert request_body(b'{"data": "WzFd"}', report.LONG_DECODE) == (b'{"data": "WzFd"}', JSON_HEADERS)
    body, headers = request_body(b"\x89PNG", report.CAPTIONING)
    assert b"image/png" in body and headers["content-type"].startswith("multipart/form-data")


def test_long_decode_lengths_are_heavy_tailed_and_bounded():
    from bench.common import LONG_MAX, LONG_MIN, long_decode_lengths

    lengths = long_decode_lengths(64)
    assert len(lengths) == 64 and min(lengths) == LONG_MIN and max(lengths) == LONG_MAX
    ordered = sorted(lengths)
    median, mean = ordered[32], sum(lengths) / 64
    assert median < 25 and mean > 1.5 * median  # a long tail: the mean sits well above the median
    assert long_decode_lengths(64) == lengths  # the same set for every system


def test_long_decode_requests_carry_their_series_and_drawn_horizons(tmp_path):
    from bench.common import (
        LONG_HISTORY,
        inputs_workload,
        long_decode_lengths,
        read_inputs,
        unpack_request,
        write_requests,
    )

    write_requests(tmp_path, 16)
    bodies = read_inputs(tmp_path)
    unpacked = [unpack_request(b) for b in bodies]
    assert [horizon for _, horizon in unpacked] == long_decode_lengths(16)
    series = [json.loads(data) for data, _ in unpacked]
    assert all(len(s) == LONG_HISTORY and all(isinstance(v, float) for v in s) for s in series)
    assert len({tuple(s) for s in series}) == 16  # 16 different series
    assert json.loads(bodies[0])["content_type"] == "application/json"
    assert unpack_request(json.loads(bodies[0])) == unpacked[0]  # LitServe hands the parsed body
    assert inputs_workload(tmp_path) == report.LONG_DECODE and read_inputs(tmp_path) == bodies


def test_forecast_answers_agree_within_the_tolerance_and_length():
    assert report.same_answer("[1.0, 2.0]", "[1.0, 2.0]") and report.same_answer("a red one", "a red one")
    assert report.same_answer("[1.0, 2.0004]", "[1.0, 2.0]")  # float rounding of batched matmuls
    assert not report.same_answer("[1.0, 2.01]", "[1.0, 2.0]")
    assert not report.same_answer("[1.0]", "[1.0, 2.0]")  # stopped at the wrong horizon
    assert not report.same_answer("[1.0, 2.0]", "a red one") and not report.same_answer("[1.0,", "[1.0]")
    results = {"systems": [
        {"name": "long: bare static", "kind": "bare", "workload": report.LONG_DECODE,
         "levels": [{"captions": {"0": "[1.0, 2.0]", "1": "[3.0]"}}]},
        {"name": "long: mmserve", "kind": "server", "workload": report.LONG_DECODE,
         "levels": [{"captions": {"0": "[1.0000004, 2.0]", "1": "[3.5]"}}]},
    ]}  # fmt: skip
    assert report.caption_agreement(results)["long: mmserve"] == 0.5


def test_static_batch_stops_each_forecast_at_its_own_horizon(tmp_path):
    from bench.bare import prepare
    from bench.common import LONG_DECODE, answer_text, caption_batch, load, max_length, read_inputs, write_requests

    write_requests(tmp_path, 4)
    task, model = load("", LONG_DECODE)
    prepared = [prepare(task, model, body, max_length(LONG_DECODE), LONG_DECODE) for body in read_inputs(tmp_path)]
    inputs, horizons = [x for x, _ in prepared], [n for _, n in prepared]
    assert len(set(horizons)) > 1, f"the test needs different horizons, got {horizons}"
    together = caption_batch(task, model, inputs, max_length(LONG_DECODE), LONG_DECODE, horizons)
    assert [len(f) for f in together] == horizons
    for x, n, forecast in zip(inputs, horizons, together):  # alone, decoded to its own horizon
        alone = caption_batch(task, model, [x], max_length(LONG_DECODE), LONG_DECODE, [n])[0]
        assert report.same_answer(answer_text(forecast), answer_text(alone))
