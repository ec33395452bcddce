"""Turn raw benchmark results into the markdown table, the plot and the summary line.

Results are `{"meta": {...}, "systems": [{"name", "kind", "workload", "role", "config", "levels": [...],
"error"}]}` where each level is what bench/client.py (or bench/bare.py) wrote for one concurrency.
`workload` is "captioning" (the default when absent) or "long-decode"; `role` (see ROLES) says
what a system is compared as, and is inferred from the name when absent (older results).

    python -m bench.report bench/results/latest.json   # re-render from saved results
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bench.common import FORECAST_TOLERANCE

MMSERVE = "mmserve"
BARE = "bare model"
MMSERVE_RAY = "mmserve-ray"
NOOP_RAY = "no-op-ray"
CAPTIONING, LONG_DECODE = "captioning", "long-decode"
SUMMARY_CONCURRENCY = 32
RAY_CONCURRENCY = 16  # W: mmserve on Ray / the no-op Ray app
# mmserve: the system under test (one per workload); bare: the captioning limit Y divides by;
# limit: the long-decode limit (bare continuous batching); peer: competitors (X, Z); ray:
# mmserve on the Ray backend; floor: no-op servers (no model), for W and the latency per hop;
# variant: an experimental layout of mmserve itself (e.g. HTTP front processes), reported only.
ROLES = ("mmserve", "bare", "limit", "peer", "ray", "floor", "variant")
# c=1 latency per hop: (label, system, baseline system), p50 of the system minus the baseline's.
HOPS = (
    ("HTTP floor (client + uvicorn, no model)", "no-op-fastapi", None),
    ("Ray proxy instead of uvicorn", "no-op-ray", "no-op-fastapi"),
    ("+ a deployment-handle hop (ingress -> replica)", "no-op-ray-2hop", "no-op-ray"),
    ("mmserve embedded: parsing, engine, model", "mmserve", "no-op-fastapi"),
    ("mmserve on Ray instead of embedded", "mmserve-ray", "mmserve"),
    ("mmserve on Ray over the no-op 2-hop Ray app", "mmserve-ray", "no-op-ray-2hop"),
)


def role(system: dict[str, Any]) -> str:
    if system.get("role"):
        return system["role"]
    return {MMSERVE: "mmserve", BARE: "bare"}.get(system["name"], "peer")


def workload(system: dict[str, Any]) -> str:
    return system.get("workload") or CAPTIONING


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's
    default method); NaN for no values."""
    assert 0 <= q <= 100, f"percentile must be in [0, 100], got {q}"
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def level_stats(level: dict[str, Any]) -> dict[str, float]:
    """Throughput (req/s) and p50/p99 latency (ms) of one concurrency level."""
    latencies = level["latencies_s"]
    return {
        "concurrency": level["concurrency"],
        "throughput": level["ok"] / level["wall_s"] if level["wall_s"] > 0 else math.nan,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "ok": level["ok"],
        "errors": level["errors"],
        # CPU milliseconds per completed request: the server and its processes (bare: the loop)
        # and the load generator's; on a small machine they share the same cores.
        "server_cpu_ms": 1000 * level.get("server_cpu_s", math.nan) / level["ok"] if level["ok"] else math.nan,
        "client_cpu_ms": 1000 * level.get("client_cpu_s", math.nan) / level["ok"] if level["ok"] else math.nan,
        # Cores busy with anything else on the machine meanwhile (other users' jobs): noise.
        "other_cores": (
            (level.get("machine_cpu_s", math.nan) - level.get("server_cpu_s", 0.0) - level.get("client_cpu_s", 0.0))
            / level["wall_s"]
            if level["wall_s"] > 0
            else math.nan
        ),
    }


def stats_by_system(results: dict[str, Any]) -> dict[str, dict[int, dict[str, float]]]:
    return {
        s["name"]: {lv["concurrency"]: level_stats(lv) for lv in s.get("levels") or []} for s in results["systems"]
    }


def _named(results: dict[str, Any], wanted_role: str, wanted_workload: str) -> list[str]:
    return [s["name"] for s in results["systems"] if role(s) == wanted_role and workload(s) == wanted_workload]


def _best(stats: dict[str, dict[int, dict[str, float]]], names: list[str], concurrency: int) -> str | None:
    """The highest-throughput system of `names` at `concurrency`; one with errors at that level
    does not count as best (unless all have errors)."""
    ran = {n: stats[n][concurrency] for n in names if concurrency in stats.get(n, {}) and stats[n][concurrency]["ok"] > 0}
    clean = {n: s for n, s in ran.items() if s["errors"] == 0} or ran
    return max(clean, key=lambda n: clean[n]["throughput"]) if clean else None


def _ratio(stats: dict[str, dict[int, dict[str, float]]], top: str | None, bottom: str | None, c: int) -> float:
    a, b = stats.get(top or "", {}).get(c), stats.get(bottom or "", {}).get(c)
    if not a or not b or a["ok"] == 0 or not b["throughput"] > 0:
        return math.nan
    return a["throughput"] / b["throughput"]


def summarize(results: dict[str, Any], concurrency: int = SUMMARY_CONCURRENCY) -> dict[str, Any]:
    """Captioning at `concurrency`: X = mmserve throughput / the best peer's, Y = mmserve / bare
    model (a batch of that size). Long-decode at `concurrency`: Z = mmserve / its best peer,
    and mmserve / the limit (bare continuous batching). W = mmserve on Ray / the no-op Ray app
    at RAY_CONCURRENCY. Peers are the systems of role "peer" of the workload."""
    stats = stats_by_system(results)
    nan = math.nan
    mine = (_named(results, "mmserve", CAPTIONING) or [MMSERVE])[0]
    bare = (_named(results, "bare", CAPTIONING) or [BARE])[0]
    best = _best(stats, _named(results, "peer", CAPTIONING), concurrency)
    m, b = stats.get(mine, {}).get(concurrency), stats.get(best or "", {}).get(concurrency)
    ok = m is not None and m["ok"] > 0
    long_mine = (_named(results, "mmserve", LONG_DECODE) or [None])[0]
    long_peers = _named(results, "peer", LONG_DECODE)
    long_best = _best(stats, long_peers, concurrency)
    served = [n for n in long_peers if not any(s["name"] == n and s.get("kind") == "bare" for s in results["systems"])]
    long_served = _best(stats, served, concurrency)
    limit = (_named(results, "limit", LONG_DECODE) or [None])[0]
    return {
        "concurrency": concurrency,
        "best_peer": best,
        "ratio_best_peer": _ratio(stats, mine, best, concurrency),
        "ratio_bare": _ratio(stats, mine, bare, concurrency),
        "mmserve_p99_ms": m["p99_ms"] if ok else nan,
        "best_peer_p99_ms": b["p99_ms"] if b else nan,
        "p99_no_worse": bool(ok and b and m["p99_ms"] <= b["p99_ms"]),
        "long_best_peer": long_best,
        "ratio_long_best_peer": _ratio(stats, long_mine, long_best, concurrency),
        "long_best_served_peer": long_served,
        "ratio_long_best_served_peer": _ratio(stats, long_mine, long_served, concurrency),
        "ratio_long_limit": _ratio(stats, long_mine, limit, concurrency),
        "ray_concurrency": RAY_CONCURRENCY,
        "ratio_ray_noop": _ratio(stats, MMSERVE_RAY, NOOP_RAY, RAY_CONCURRENCY),
        "ratio_ray_embedded": _ratio(stats, MMSERVE_RAY, mine, RAY_CONCURRENCY),
    }


def summary_line(summary: dict[str, Any]) -> str:
    return (
        f"summary: ratio best-peer {summary['ratio_best_peer']:.2f} at c={summary['concurrency']}; "
        f"ratio bare {summary['ratio_bare']:.2f}; "
        f"long-decode best-peer {summary.get('ratio_long_best_peer', math.nan):.2f}; "
        f"ray/no-op-ray {summary.get('ratio_ray_noop', math.nan):.2f}"
    )


def hop_latencies(results: dict[str, Any], concurrency: int = 1) -> list[tuple[str, float, float]]:
    """(hop, p50 ms of its system, p50 ms it adds over its baseline) at `concurrency`, for the
    HOPS whose systems ran."""
    stats = stats_by_system(results)
    out = []
    for label, name, base in HOPS:
        st = stats.get(name, {}).get(concurrency)
        if st is None or (base and concurrency not in stats.get(base, {})):
            continue
        added = st["p50_ms"] - stats[base][concurrency]["p50_ms"] if base else st["p50_ms"]
        out.append((label, st["p50_ms"], added))
    return out


def replica_scaling(results: dict[str, Any]) -> list[tuple[str, int, float]]:
    """(system, c, req/s) of the Ray-backend systems (one row per replica count and level)."""
    stats = stats_by_system(results)
    return [
        (s["name"], c, stats[s["name"]][c]["throughput"])
        for s in results["systems"]
        if role(s) == "ray"
        for c in sorted(stats.get(s["name"], {}))
    ]


def same_answer(answer: str, reference: str, tolerance: float = FORECAST_TOLERANCE) -> bool:
    """Captions: equal strings. Forecasts (JSON arrays of numbers): the same number of values,
    each within `tolerance` of the reference's (batched float rounding moves them by ~1e-5)."""
    if answer == reference:
        return True
    if not (answer.startswith("[") and reference.startswith("[")):
        return False
    try:
        a, b = json.loads(answer), json.loads(reference)
    except json.JSONDecodeError:
        return False
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tolerance for x, y in zip(a, b))


def caption_agreement(results: dict[str, Any]) -> dict[str, float]:
    """Per system, the share of inputs whose answer equals its workload's bare model's (same
    work check): the captioning bare model, or the first bare loop of the long-decode workload
    (forecasts: see same_answer)."""
    reference: dict[str, dict[str, str]] = {}
    for s in results["systems"]:
        w = workload(s)
        is_reference = s["name"] == BARE if w == CAPTIONING else s.get("kind") == "bare"
        if is_reference and s.get("levels") and w not in reference:
            reference[w] = {}
            for lv in s["levels"]:
                for k, v in lv["captions"].items():
                    reference[w].setdefault(k, v)
    out = {}
    for s in results["systems"]:
        ref = reference.get(workload(s), {})
        seen: dict[str, str] = {}
        for lv in s.get("levels") or []:
            for k, v in lv["captions"].items():
                seen.setdefault(k, v)
        shared = [k for k in seen if k in ref]
        out[s["name"]] = sum(same_answer(seen[k], ref[k]) for k in shared) / len(shared) if shared else math.nan
    return out


def _fmt(value: float, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _system_rows(results: dict[str, Any], stats: dict[str, dict[int, dict[str, float]]], names: list[str]) -> list[str]:
    lines = []
    for s in results["systems"]:
        name = s["name"]
        if name not in names:
            continue
        if s.get("error") and not stats.get(name):
            lines.append(f"| {name} | — | failed: {s['error'][:120]} | | | | | | | |")
            continue
        for c in sorted(stats[name]):
            st = stats[name][c]
            lines.append(
                f"| {name} | {c} | {_fmt(st['throughput'])} | {_fmt(st['p50_ms'])} | {_fmt(st['p99_ms'])} "
                f"| {st['ok']} | {st['errors']} | {_fmt(st['server_cpu_ms'], 2)} | {_fmt(st['client_cpu_ms'], 2)} "
                f"| {_fmt(st['other_cores'], 2)} |"
            )
    return lines


def markdown(results: dict[str, Any], plot_name: str | None = None) -> str:
    meta = results.get("meta", {})
    stats = stats_by_system(results)
    summary = summarize(results)
    agreement = caption_agreement(results)
    header = [
        "| system | c | throughput (req/s) | p50 (ms) | p99 (ms) | ok | errors | server CPU ms/req | client CPU ms/req | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    by_workload = {w: [s["name"] for s in results["systems"] if workload(s) == w] for w in (CAPTIONING, LONG_DECODE)}
    lines = [
        "# mmserve serving benchmark",
        "",
        f"Run {meta.get('started', '?')} ({'BENCH_QUICK reduced run' if meta.get('quick') else 'full run'}), "
        f"{meta.get('duration_s', 0):.0f} s. {meta.get('machine', '')}",
        "",
        "## Captioning",
        "",
        f"Model: captioning weights `{meta.get('weights', '?')}` (sha256 {meta.get('weights_sha256', '?')[:12]}), "
        f"greedy decoding, max_length {meta.get('max_length', '?')}, on CPU. Inputs: {meta.get('inputs', '?')} "
        f"digit-scene PNGs (1-4 digits, caption lengths {meta.get('caption_lengths', '?')} words), "
        f"request i sends input i mod {meta.get('inputs', '?')}. Load: a separate closed-loop client process "
        f"(asyncio + {meta.get('http', 'httpx')}), c connections each sending the next request when the last answer arrived; "
        f"{meta.get('requests_note', '')}.",
        "",
        *header,
        *_system_rows(results, stats, by_workload[CAPTIONING]),
    ]
    if by_workload[LONG_DECODE]:
        lines += ["", "## Long-decode", "", f"Workload: {meta.get('long_decode', 'forecast example')}; same client.", "",
                  *header, *_system_rows(results, stats, by_workload[LONG_DECODE])]  # fmt: skip
    lines += [
        "",
        "Server CPU ms/req: CPU time of the server and every process it started (HTTP processes, workers, Ray's actors) per "
        "completed request over the timed part (bare model: its loop's). Client CPU ms/req: the load "
        "generator's. Both share the same cores, so a client or server busy on per-request Python work "
        "takes CPU from the model. Other load: cores busy with processes outside the benchmark during "
        "the level (from /proc/stat); well above 0 means that row was measured on a shared, busy machine.",
    ]
    levels = sorted({c for by_c in stats.values() for c in by_c})
    lines += ["", "Throughput (req/s) by concurrency:", ""]
    lines.append("| system | " + " | ".join(f"c={c}" for c in levels) + " |")
    lines.append("|---|" + "---:|" * len(levels))
    for s in results["systems"]:
        by_c = stats.get(s["name"], {})
        lines.append(f"| {s['name']} | " + " | ".join(_fmt(by_c[c]["throughput"]) if c in by_c else "—" for c in levels) + " |")
    hops = hop_latencies(results)
    if hops:
        lines += ["", "Latency each hop adds at c=1 (p50; a difference of two rows above, so noisy):", "",
                  "| hop | p50 of the system (ms) | added (ms) |", "|---|---:|---:|"]  # fmt: skip
        lines += [f"| {label} | {_fmt(p50, 2)} | {_fmt(added, 2)} |" for label, p50, added in hops]
    scaling = replica_scaling(results)
    if scaling:
        lines += ["", "Ray backend throughput by replica count (2 cores: each replica has one torch thread):", "",
                  "| system | c | req/s |", "|---|---:|---:|"]  # fmt: skip
        lines += [f"| {name} | {c} | {_fmt(tput)} |" for name, c, tput in scaling]
    lines += ["", "Configuration (each peer's best fair setting, and the same work per request):", ""]
    lines += ["| system | configuration | answers equal to the bare model's |", "|---|---|---:|"]
    for s in results["systems"]:
        share = agreement.get(s["name"], math.nan)
        lines.append(f"| {s['name']} | {s.get('config', '')} | {_fmt(share * 100, 0)}% |")
    c = summary["concurrency"]
    rc = summary["ray_concurrency"]
    lines += [
        "",
        f"At c={c}: best peer **{summary['best_peer']}**; mmserve / best peer = **{_fmt(summary['ratio_best_peer'], 2)}** "
        f"(goal ≥ 1.5), p99 {_fmt(summary['mmserve_p99_ms'])} ms vs {_fmt(summary['best_peer_p99_ms'])} ms "
        f"({'no worse' if summary['p99_no_worse'] else 'WORSE'}); mmserve / bare model (batch {c}) = "
        f"**{_fmt(summary['ratio_bare'], 2)}** (goal ≥ 0.9).",
        f"Long-decode at c={c}: best peer **{summary['long_best_peer']}**; mmserve / best peer = "
        f"**{_fmt(summary['ratio_long_best_peer'], 2)}** (goal ≥ 2.0); mmserve / best served peer "
        f"({summary['long_best_served_peer']}) = {_fmt(summary['ratio_long_best_served_peer'], 2)}; mmserve / the limit "
        f"(bare continuous batching) = {_fmt(summary['ratio_long_limit'], 2)}.",
        f"Ray at c={rc}: mmserve on Ray / no-op Ray app = **{_fmt(summary['ratio_ray_noop'], 2)}** (goal ≥ 0.9); "
        f"mmserve on Ray / mmserve embedded = {_fmt(summary['ratio_ray_embedded'], 2)}.",
    ]
    if plot_name:
        lines += ["", f"![throughput and p99 latency by concurrency]({plot_name})"]
    lines += ["", "```", summary_line(summary), "```", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = stats_by_system(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    long = {s["name"] for s in results["systems"] if workload(s) == LONG_DECODE}
    for name, by_c in stats.items():
        if not by_c:
            continue
        cs = sorted(by_c)
        style = {"linestyle": "--", "color": "black"} if name == BARE else {"linewidth": 2.5} if name == MMSERVE else {}
        if name in long:
            style = {**style, "linestyle": ":"}
        left.plot(cs, [by_c[c]["throughput"] for c in cs], marker="o", label=name, **style)
        right.plot(cs, [by_c[c]["p99_ms"] for c in cs], marker="o", label=name, **style)
    for ax, title, unit in ((left, "Throughput", "requests / s"), (right, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (bare model: batch size)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    meta = results.get("meta", {})
    fig.suptitle(f"captioning (and long-decode, dotted), greedy, CPU — {'quick' if meta.get('quick') else 'full'} run {meta.get('started', '')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict[str, Any], out_dir: Path, stem: str = "latest") -> tuple[Path, Path, str]:
    """Write <stem>.md, <stem>.png and <stem>.json; return their paths and the summary line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(results, out_dir / f"{stem}.png")
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results, png.name))
    compact = json.loads(json.dumps(results))
    for s in compact["systems"]:
        for lv in s.get("levels") or []:
            lv["latencies_s"] = [round(v, 5) for v in lv["latencies_s"]]
    (out_dir / f"{stem}.json").write_text(json.dumps(compact))
    return md, png, summary_line(summarize(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--stem", default="latest")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    md, png, line = write(results, args.out_dir or args.results.parent, args.stem)
    print(md.read_text())
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
