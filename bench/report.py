"""Turn raw benchmark results into the markdown table, the plot and the summary line.

Results are `{"meta": {...}, "systems": [{"name", "kind", "config", "levels": [...], "error"}]}`
where each level is what bench/client.py (or bench/bare.py) wrote for one concurrency.

    python -m bench.report bench/results/latest.json   # re-render from saved results
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

MMSERVE = "mmserve"
BARE = "bare model"
SUMMARY_CONCURRENCY = 32


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


def summarize(results: dict[str, Any], concurrency: int = SUMMARY_CONCURRENCY) -> dict[str, Any]:
    """X = mmserve throughput / best peer's at `concurrency`; Y = mmserve / bare model at the
    same concurrency (a batch of that size). Peers are every system but mmserve and the bare
    model; a peer with errors at that level does not count as best."""
    stats = stats_by_system(results)
    mine = stats.get(MMSERVE, {}).get(concurrency)
    bare = stats.get(BARE, {}).get(concurrency)
    peers = {
        name: by_c[concurrency]
        for name, by_c in stats.items()
        if name not in (MMSERVE, BARE) and concurrency in by_c and by_c[concurrency]["ok"] > 0
    }
    clean = {n: s for n, s in peers.items() if s["errors"] == 0} or peers
    best = max(clean, key=lambda n: clean[n]["throughput"]) if clean else None
    nan = math.nan
    ok = mine is not None and mine["ok"] > 0
    x = mine["throughput"] / clean[best]["throughput"] if ok and best else nan
    y = mine["throughput"] / bare["throughput"] if ok and bare else nan
    return {
        "concurrency": concurrency,
        "best_peer": best,
        "ratio_best_peer": x,
        "ratio_bare": y,
        "mmserve_p99_ms": mine["p99_ms"] if ok else nan,
        "best_peer_p99_ms": clean[best]["p99_ms"] if best else nan,
        "p99_no_worse": bool(ok and best and mine["p99_ms"] <= clean[best]["p99_ms"]),
    }


def summary_line(summary: dict[str, Any]) -> str:
    return (
        f"summary: ratio best-peer {summary['ratio_best_peer']:.2f} at c={summary['concurrency']}; "
        f"ratio bare {summary['ratio_bare']:.2f}"
    )


def caption_agreement(results: dict[str, Any]) -> dict[str, float]:
    """Per system, the share of inputs whose caption equals the bare model's (same work check)."""
    reference: dict[str, str] = {}
    for s in results["systems"]:
        if s["name"] == BARE:
            for lv in s.get("levels") or []:
                for k, v in lv["captions"].items():
                    reference.setdefault(k, v)
    out = {}
    for s in results["systems"]:
        seen: dict[str, str] = {}
        for lv in s.get("levels") or []:
            for k, v in lv["captions"].items():
                seen.setdefault(k, v)
        shared = [k for k in seen if k in reference]
        out[s["name"]] = sum(seen[k] == reference[k] for k in shared) / len(shared) if shared else math.nan
    return out


def _fmt(value: float, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any], plot_name: str | None = None) -> str:
    meta = results.get("meta", {})
    stats = stats_by_system(results)
    summary = summarize(results)
    agreement = caption_agreement(results)
    levels = sorted({c for by_c in stats.values() for c in by_c})
    lines = [
        "# mmserve serving benchmark",
        "",
        f"Run {meta.get('started', '?')} ({'BENCH_QUICK reduced run' if meta.get('quick') else 'full run'}), "
        f"{meta.get('duration_s', 0):.0f} s. {meta.get('machine', '')}",
        "",
        f"Model: captioning weights `{meta.get('weights', '?')}` (sha256 {meta.get('weights_sha256', '?')[:12]}), "
        f"greedy decoding, max_length {meta.get('max_length', '?')}, on CPU. Inputs: {meta.get('inputs', '?')} "
        f"digit-scene PNGs (1-4 digits, caption lengths {meta.get('caption_lengths', '?')} words), "
        f"request i sends input i mod {meta.get('inputs', '?')}. Load: a separate closed-loop client process "
        f"(asyncio + {meta.get('http', 'httpx')}), c connections each sending the next request when the last answer arrived; "
        f"{meta.get('requests_note', '')}.",
        "",
        "| system | c | throughput (req/s) | p50 (ms) | p99 (ms) | ok | errors | server CPU ms/req | client CPU ms/req | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results["systems"]:
        name = s["name"]
        if s.get("error") and not stats.get(name):
            lines.append(f"| {name} | — | failed: {s['error'][:120]} | | | | | | | |")
            continue
        for c in levels:
            st = stats[name].get(c)
            if st is None:
                continue
            lines.append(
                f"| {name} | {c} | {_fmt(st['throughput'])} | {_fmt(st['p50_ms'])} | {_fmt(st['p99_ms'])} "
                f"| {st['ok']} | {st['errors']} | {_fmt(st['server_cpu_ms'], 2)} | {_fmt(st['client_cpu_ms'], 2)} "
                f"| {_fmt(st['other_cores'], 2)} |"
            )
    lines += [
        "",
        "Server CPU ms/req: CPU time of the server and every process it started (HTTP processes, workers, Ray's actors) per "
        "completed request over the timed part (bare model: its loop's). Client CPU ms/req: the load "
        "generator's. Both share the same cores, so a client or server busy on per-request Python work "
        "takes CPU from the model. Other load: cores busy with processes outside the benchmark during "
        "the level (from /proc/stat); well above 0 means that row was measured on a shared, busy machine.",
    ]
    lines += ["", "Throughput (req/s) by concurrency:", ""]
    lines.append("| system | " + " | ".join(f"c={c}" for c in levels) + " |")
    lines.append("|---|" + "---:|" * len(levels))
    for s in results["systems"]:
        by_c = stats.get(s["name"], {})
        lines.append(f"| {s['name']} | " + " | ".join(_fmt(by_c[c]["throughput"]) if c in by_c else "—" for c in levels) + " |")
    lines += ["", "Configuration (each peer's best fair setting, and the same work per request):", ""]
    lines += ["| system | configuration | captions equal to the bare model's |", "|---|---|---:|"]
    for s in results["systems"]:
        share = agreement.get(s["name"], math.nan)
        lines.append(f"| {s['name']} | {s.get('config', '')} | {_fmt(share * 100, 0)}% |")
    c = summary["concurrency"]
    lines += [
        "",
        f"At c={c}: best peer **{summary['best_peer']}**; mmserve / best peer = **{_fmt(summary['ratio_best_peer'], 2)}** "
        f"(goal ≥ 2.0), p99 {_fmt(summary['mmserve_p99_ms'])} ms vs {_fmt(summary['best_peer_p99_ms'])} ms "
        f"({'no worse' if summary['p99_no_worse'] else 'WORSE'}); mmserve / bare model (batch {c}) = "
        f"**{_fmt(summary['ratio_bare'], 2)}** (goal ≥ 0.9).",
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
    for name, by_c in stats.items():
        if not by_c:
            continue
        cs = sorted(by_c)
        style = {"linestyle": "--", "color": "black"} if name == BARE else {"linewidth": 2.5} if name == MMSERVE else {}
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
    fig.suptitle(f"captioning, greedy, CPU — {'quick' if meta.get('quick') else 'full'} run {meta.get('started', '')}")
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
