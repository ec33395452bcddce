"""Soak: measure capacity, then offer twice that for minutes and check nothing is lost.

One embedded server (`python -m mmserve.server serve`, captioning and music, a fresh data
dir) in its own process group. Phases:

1. warm-up, then **capacity**: a closed loop of `--concurrency` workers for `--capacity-s`
   seconds; capacity = answers per second (half the requests captioning, half music);
2. **overload**: an open loop sending at `--factor` x capacity for `--duration-s` seconds, each
   request on a timer whatever the server does (a closed loop would slow down with it), then
   a drain until every request has its answer or its client timeout.

Every request ends in exactly one class: `ok` (200), `shed` (503/429; counted separately when
the answer lacks Retry-After), `error` (another status) or `lost` (no answer: timeout or a
dropped connection). The server's RSS, open file descriptors and threads are read from
/proc at the start of overload (after capacity, with the client's connections closed) and at
the end (after the drain, connections closed, a few idle seconds).

    python -m bench.soak --duration-s 300 --out bench/results/soak-2026-11-26   # make soak
    python -m bench.soak --capacity-s 5 --duration-s 15 --out /tmp/soak             # the CI size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import REPO, free_port

BOUNDARY = "mmserve-soak-51c0"
# A chorale primer (C major, rising); music continues it for MUSIC_STEPS time steps.
PRIMER = [[60, 64, 67, 72], [62, 65, 69, 74], [64, 67, 72, 76], [65, 69, 72, 77]]
MUSIC_STEPS = 8
SHED = (429, 503)


@dataclass(frozen=True)
class Route:
    name: str
    path: str  # with its query string
    body: bytes  # a pre-built multipart body


def multipart(data: bytes, content_type: str, filename: str) -> bytes:
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def routes(scenes: int = 16) -> list[Route]:
    """Alternating captioning scenes (1-4 digits) and one music continuation."""
    from mmserve.plugins.captioning.data import make_example

    music = Route("music", f"/v1/music?length={MUSIC_STEPS}",
                  multipart(json.dumps(PRIMER).encode(), "application/json", "primer.json"))  # fmt: skip
    out: list[Route] = []
    for i in range(scenes):
        out.append(Route("captioning", "/v1/captioning", multipart(make_example(i).png, "image/png", "scene.png")))
        out.append(music)
    return out


# ----- the server process ---------------------------------------------------------------------


@dataclass
class Resources:
    rss_mb: float
    fds: int
    threads: int


def resources(pid: int) -> Resources:
    """RSS, open file descriptors and threads of one process, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in status if ":" in line}
    return Resources(
        rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(fields["Threads"]),
    )


def start_server(data_dir: Path, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    full_env = {**os.environ, "MMSERVE_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "MMSERVE_PLUGINS": "captioning,music", **env}  # fmt: skip
    full_env.pop("MLFLOW_TRACKING_URI", None)
    argv = [sys.executable, "-m", "mmserve.server", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def stop_server(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_ready(proc: subprocess.Popen, base: str, all_routes: list[Route], timeout_s: float) -> None:
    """Ready = one request of each route answers 200."""
    deadline = time.monotonic() + timeout_s
    pending = {r.name: r for r in all_routes}
    async with aiohttp.ClientSession() as session:
        while pending:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"routes {sorted(pending)} not ready after {timeout_s:.0f} s")
            for name, route in list(pending.items()):
                try:
                    status, _, _ = await post(session, base, route, 30.0)
                    if status == 200:
                        del pending[name]
                except (aiohttp.ClientError, TimeoutError):
                    pass
            await asyncio.sleep(0.5)


# ----- the client -----------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, base: str, route: Route, timeout_s: float) -> tuple[int, bool, bytes]:
    """(status, has Retry-After, body) of one request."""
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(base + route.path, data=route.body, headers=headers, timeout=timeout) as response:
        body = await response.read()
        return response.status, "Retry-After" in response.headers, body


@dataclass
class Tally:
    """Outcomes of one phase, overall and per route."""

    sent: int = 0
    ok: int = 0
    shed: int = 0
    shed_without_retry_after: int = 0
    errors: int = 0
    lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)  # of ok answers
    error_samples: list[str] = field(default_factory=list)
    per_route: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, route: str, outcome: str, status: int | None, latency_s: float, detail: str = "") -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        key = str(status) if status is not None else "none"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        counts = self.per_route.setdefault(route, {"sent": 0, "ok": 0, "shed": 0, "errors": 0, "lost": 0})
        counts["sent"] += 1
        counts["shed" if outcome == "shed_without_retry_after" else outcome] += 1
        if outcome == "ok":
            self.latencies_s.append(latency_s)
        elif outcome in ("errors", "lost") and len(self.error_samples) < 5:
            self.error_samples.append(detail[:300])

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_s"}
        lat = sorted(self.latencies_s)
        out["p50_s"] = percentile(lat, 0.50)
        out["p99_s"] = percentile(lat, 0.99)
        out["max_s"] = lat[-1] if lat else float("nan")
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


async def one(session: aiohttp.ClientSession, base: str, route: Route, timeout_s: float, tally: Tally) -> None:
    tally.sent += 1
    start = time.perf_counter()
    try:
        status, retry_after, body = await post(session, base, route, timeout_s)
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.record(route.name, "lost", None, 0.0, f"{type(exc).__name__}: {exc}")
        return
    elapsed = time.perf_counter() - start
    if status == 200:
        tally.record(route.name, "ok", status, elapsed)
    elif status in SHED:
        tally.record(route.name, "shed" if retry_after else "shed_without_retry_after", status, elapsed)
    else:
        tally.record(route.name, "errors", status, elapsed, f"HTTP {status}: {body[:200].decode(errors='replace')}")


def new_session(limit: int) -> aiohttp.ClientSession:
    # limit 0: no client-side pool wait, so a request's latency (and its timeout) is the server's.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False))


async def closed_loop(base: str, all_routes: list[Route], concurrency: int, seconds: float,
                      timeout_s: float) -> tuple[Tally, float]:  # fmt: skip
    """`concurrency` workers, each sending its next request when the last one is answered."""
    tally = Tally()
    counter = 0
    async with new_session(concurrency) as session:
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            nonlocal counter
            while time.perf_counter() < stop_at:
                route = all_routes[counter % len(all_routes)]
                counter += 1
                await one(session, base, route, timeout_s, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return tally, wall


async def open_loop(base: str, all_routes: list[Route], rate: float, seconds: float, timeout_s: float,
                    max_connections: int) -> tuple[Tally, float, float]:  # fmt: skip
    """Send at `rate` per second for `seconds` (each request on its own timer), then wait for
    every answer. Returns the tally, the send window and the drain time."""
    tally = Tally()
    tasks: list[asyncio.Task] = []
    async with new_session(max_connections) as session:
        start = time.perf_counter()
        total = int(rate * seconds)
        for k in range(total):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            route = all_routes[k % len(all_routes)]
            tasks.append(asyncio.create_task(one(session, base, route, timeout_s, tally)))
        sent_window = time.perf_counter() - start
        drain_start = time.perf_counter()
        await asyncio.gather(*tasks)
        drain = time.perf_counter() - drain_start
    return tally, sent_window, drain


# ----- the run --------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    all_routes = routes()
    data_dir = Path(tempfile.mkdtemp(prefix="mmserve-soak-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {}
    for name in ("captioning", "music"):
        env[f"MMSERVE_TASKS__{name.upper()}__MAX_QUEUE"] = str(args.max_queue)
    env["MMSERVE_REQUEST_TIMEOUT_S"] = str(args.request_timeout_s)
    proc = start_server(data_dir, port, env, data_dir / "server.log")
    result: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"server_env": env},
        "load_average_start": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    try:
        await wait_ready(proc, base, all_routes, args.start_timeout_s)
        await closed_loop(base, all_routes, args.concurrency, args.warmup_s, args.client_timeout_s)
        capacity_tally, wall = await closed_loop(
            base, all_routes, args.concurrency, args.capacity_s, args.client_timeout_s
        )
        capacity = capacity_tally.ok / wall
        result["capacity"] = {"rps": capacity, "wall_s": wall, **capacity_tally.summary()}
        progress(f"capacity {capacity:.1f} req/s at c={args.concurrency} ({capacity_tally.ok} in {wall:.1f} s)")
        await asyncio.sleep(args.idle_s)
        before = resources(proc.pid)
        before_metrics = await scrape(base)
        rate = args.factor * capacity
        progress(f"overload: {rate:.1f} req/s for {args.duration_s:.0f} s")
        overflows = listen_overflows()
        sampler = asyncio.create_task(sample(proc.pid, args.sample_every_s))
        client_lag = asyncio.create_task(loop_lag())
        tally, window, drain = await open_loop(
            base, all_routes, rate, args.duration_s, args.client_timeout_s, args.max_connections
        )
        sampler.cancel()
        samples = await _samples(sampler)
        client_lag.cancel()
        result["client_loop_lag_s"] = await _samples(client_lag)
        await asyncio.sleep(args.idle_s)
        after = resources(proc.pid)
        result["server_view"] = await server_view(base, before_metrics)
        result["server_view"]["listen_overflows"] = listen_overflows() - overflows
        result["overload"] = {"rate_rps": rate, "send_window_s": window, "drain_s": drain, **tally.summary(),
                              "answered_rps": tally.ok / (window + drain)}  # fmt: skip
        result["resources"] = {"start": asdict(before), "end": asdict(after),
                               "rss_growth": after.rss_mb / before.rss_mb - 1,
                               "peak_rss_mb": max([s["rss_mb"] for s in samples] + [after.rss_mb]),
                               "samples": samples}  # fmt: skip
        result["load_average_end"] = os.getloadavg()
        result["server_alive"] = proc.poll() is None
    finally:
        stop_server(proc)
    return result


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all
    sockets on the machine): dropped connects are retried by the client after 1, 3, 7 ... s."""
    try:
        lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
        return int(dict(zip(lines[0], lines[1]))["ListenOverflows"])
    except (OSError, KeyError, IndexError, ValueError):
        return 0


async def scrape(base: str) -> dict[str, float]:
    """The server's own request counters and latency histogram (Prometheus text), summed over tasks."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("mmserve_requests_total{") or line.startswith("mmserve_request_latency_seconds_bucket{"):
            name, value = line.rsplit(" ", 1)
            labels = dict(part.split("=", 1) for part in name[name.index("{") + 1 : -1].split(","))
            key = f"status {labels['status'].strip(chr(34))}" if "status" in labels else f"le {labels['le'].strip(chr(34))}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


async def server_view(base: str, before: dict[str, float]) -> dict[str, Any]:
    """What the server itself saw during overload: answers by status, and how many it
    answered within 10 s / 30 s (its latency histogram, from reading the request to answering)."""
    after = await scrape(base)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    statuses = {k.split()[1]: int(v) for k, v in delta.items() if k.startswith("status") and v}
    answered = sum(statuses.values())
    return {"statuses": statuses, "answered": answered,
            "within_10_s": int(delta.get("le 10.0", 0)), "within_30_s": int(delta.get("le 30.0", 0))}  # fmt: skip


async def sample(pid: int, every_s: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        while True:
            out.append({"t_s": round(time.perf_counter() - start, 1), **asdict(resources(pid)),
                        "load1": os.getloadavg()[0]})  # fmt: skip
            await asyncio.sleep(every_s)
    except asyncio.CancelledError:
        return out


async def loop_lag(every_s: float = 0.1) -> dict[str, float]:
    """How late this client's own event loop runs a timer: when it is late by seconds, the
    client (sharing the CPUs) sends and reads late too, and its latencies are not the server's."""
    lags: list[float] = []
    try:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(every_s)
            lags.append(time.perf_counter() - start - every_s)
    except asyncio.CancelledError:
        lags.sort()
        return {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "max": lags[-1] if lags else 0.0}


async def _samples(task: asyncio.Task) -> list[dict[str, Any]]:
    try:
        return await task
    except asyncio.CancelledError:
        return []


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def verdict(result: dict[str, Any], fd_slack: int = 4) -> list[str]:
    """What failed, in words (empty: the soak passed)."""
    over, res = result["overload"], result["resources"]
    problems = []
    if over["lost"]:
        problems.append(f"{over['lost']} accepted requests got no answer: {over['error_samples'][:2]}")
    if over["errors"]:
        problems.append(f"{over['errors']} answers were errors other than 503/429: {over['error_samples'][:2]}")
    if over["shed_without_retry_after"]:
        problems.append(f"{over['shed_without_retry_after']} shed answers lack Retry-After")
    if not over["shed"]:
        problems.append("nothing was shed: the offered load did not exceed capacity")
    if res["rss_growth"] >= 0.10:
        problems.append(f"RSS grew {100 * res['rss_growth']:.1f} % (limit 10 %)")
    if res["end"]["fds"] > res["start"]["fds"] + fd_slack:
        problems.append(f"file descriptors {res['start']['fds']} -> {res['end']['fds']}")
    if res["end"]["threads"] > res["start"]["threads"]:
        problems.append(f"threads {res['start']['threads']} -> {res['end']['threads']}")
    if not result["server_alive"]:
        problems.append("the server exited")
    return problems


def markdown(result: dict[str, Any]) -> str:
    cap, over, res = result["capacity"], result["overload"], result["resources"]
    view, lag = result["server_view"], result["client_loop_lag_s"]
    s = result["settings"]
    la0, la1 = result["load_average_start"], result["load_average_end"]
    problems = verdict(result)
    rows = [
        "| figure | value |", "|---|---|",
        f"| capacity (closed loop, c={s['concurrency']}, {cap['wall_s']:.0f} s) | {cap['rps']:.1f} req/s |",
        f"| offered load ({s['factor']:g} x capacity, {s['duration_s']:.0f} s) | {over['rate_rps']:.1f} req/s, "
        f"{over['sent']} requests |",
        f"| answered 200 | {over['ok']} ({over['answered_rps']:.1f} req/s) |",
        f"| shed 503/429 with Retry-After | {over['shed']} |",
        f"| shed without Retry-After | {over['shed_without_retry_after']} |",
        f"| other errors | {over['errors']} |",
        f"| lost (no answer) | {over['lost']} |",
        f"| p50 / p99 / max of accepted | {over['p50_s']:.2f} / {over['p99_s']:.2f} / {over['max_s']:.2f} s |",
        f"| server's own count: answered / within 10 s / within 30 s | {view['answered']} / {view['within_10_s']} / "
        f"{view['within_30_s']} (statuses {view['statuses']}) |",
        f"| kernel listen-queue overflows meanwhile | {view.get('listen_overflows', 0)} |",
        f"| client event-loop lag p50 / p99 / max | {lag['p50']:.2f} / {lag['p99']:.2f} / {lag['max']:.2f} s |",
        f"| RSS start -> end (peak) | {res['start']['rss_mb']:.0f} -> {res['end']['rss_mb']:.0f} MB "
        f"({100 * res['rss_growth']:+.1f} %; peak {res['peak_rss_mb']:.0f} MB) |",
        f"| open fds start -> end | {res['start']['fds']} -> {res['end']['fds']} |",
        f"| threads start -> end | {res['start']['threads']} -> {res['end']['threads']} |",
        f"| load average (1/5/15 min) at start | {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f} |",
        f"| load average (1/5/15 min) at end | {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} |",
    ]  # fmt: skip
    per_route = ["| route | sent | ok | shed | errors | lost |", "|---|---|---|---|---|---|"]
    for name, c in sorted(over["per_route"].items()):
        per_route.append(f"| {name} | {c['sent']} | {c['ok']} | {c['shed']} | {c['errors']} | {c['lost']} |")
    return "\n".join([
        "# Soak: twice capacity", "",
        f"Embedded server, captioning and music (length {MUSIC_STEPS}) alternating; per-task max_queue "
        f"{s['max_queue']}, request timeout {s['request_timeout_s']:g} s; client: open loop, "
        + (f"a keep-alive pool of {s['max_connections']} connections" if s["max_connections"]
           else "a new connection whenever every open one is busy")
        + f", {s['client_timeout_s']:g} s client timeout; {result['cpus']} CPUs shared with "
        "other work (see the load average). Command: `make soak` "
        f"(`python -m bench.soak --duration-s {s['duration_s']:g} --max-connections {s['max_connections']}`).", "",
        *rows, "", *per_route, "",
        "Verdict: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)), "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=128, help="closed-loop workers measuring capacity (enough to fill every decode batch)")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--capacity-s", type=float, default=30.0)
    parser.add_argument("--duration-s", type=float, default=300.0, help="overload seconds")
    parser.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument("--max-queue", type=int, default=64, help="each task's max_queue on the server")
    parser.add_argument("--request-timeout-s", type=float, default=60.0, help="the server's request timeout")
    parser.add_argument("--client-timeout-s", type=float, default=120.0, help="beyond it a request is lost")
    parser.add_argument("--max-connections", type=int, default=512,
                        help="client keep-alive connection pool (0: unbounded, a new connection per busy request)")
    parser.add_argument("--idle-s", type=float, default=3.0, help="pause before reading resources")
    parser.add_argument("--sample-every-s", type=float, default=5.0)
    parser.add_argument("--start-timeout-s", type=float, default=180.0)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    result = asyncio.run(soak(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0 if not verdict(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
