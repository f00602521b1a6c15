"""Scenario 11, "channels across processes": tornado_websocket's channels against python-socketio.

``python bench/channels/run.py`` starts, for each library in turn and each
repetition, a fresh ``redis-server`` (no persistence) on a free port, two
server processes of that library sharing it (``servers.py``), two
subscriber processes of the load generator (``loadgen.py subscribe``, one
per server, each holding half of the subscribers of the one channel), then
one publisher process (``loadgen.py publish``, connected to the first
server) that publishes at each of ``--rates`` messages per second for
``--seconds`` (after ``--warmup`` seconds whose messages are not timed).
Measured from the first publish to the last delivery (or the drain limit):

* deliveries per second (all subscribers together) and how many of the
  expected deliveries arrived;
* publish-to-delivery latency p50 / p99 over the sampled subscribers (every
  delivery they got, after the first ``--warmup`` messages);
* messages missing, repeated or out of order at the sampled subscribers;
* CPU used by each server, Redis and the load generator, so a load
  generator that became the bottleneck shows; the servers' CPU per 1,000
  deliveries; and how long the servers waited, runnable, for a CPU
  (``/proc/<pid>/schedstat``), which shows a machine too busy to measure on.

It prints a table (medians over the repetitions, ratios to python-socketio)
and writes everything to ``bench/results/channels-<timestamp>.json``. Every
child is killed at the end of its measurement (and if this process dies);
every wait has a timeout.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from scenarios import proc_cpu_seconds, raise_nofile_limit, system_cpu  # type: ignore[import-not-found]  # noqa: E402

sys.path.insert(0, HERE)
from loadgen import bucket_of, bucket_value  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_run", os.path.join(BENCH, "run.py"))
assert _spec is not None and _spec.loader is not None
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)  # the main benchmark's child setup and PM QoS, reused

KINDS = ("ours", "socketio")
LABELS = {"ours": "tornado_websocket channels", "socketio": "python-socketio (AsyncRedisManager)"}
START_TIMEOUT = 30.0
RESULT_TIMEOUT = 120.0  # a load generator process reports within this after its work is done
RESULTS_DIR = os.path.join(BENCH, "results")


class Child:
    """A child process whose stdout we read line by line (bounded), killed by :meth:`kill`."""

    def __init__(self, name: str, argv: list[str], log: IO[bytes], stdin: bool = False) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=bench_run.child_env(),
            preexec_fn=bench_run.child_setup(None),
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix``; raise after ``timeout`` s or if the child exits."""
        import selectors

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"{self.name}: no {prefix!r} within {timeout:.0f} s")
                if not sel.select(remaining):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.name} exited ({self.proc.wait(5)}) before {prefix!r}")
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(log: IO[bytes], workdir: str) -> tuple[Child, str]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    child = Child("redis", argv, log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return child, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if time.monotonic() > deadline or child.proc.poll() is not None:
            child.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)  # polls readiness, bounded by the deadline


def runqueue_wait(pid: int) -> float:
    """Seconds process ``pid`` (its main thread) spent runnable but waiting for a CPU (/proc/<pid>/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def percentile(hist: dict[int, int], q: float, expected: Optional[int] = None) -> Optional[float]:
    """The ``q`` quantile of the histogram, in seconds; with ``expected`` counts, the missing ones are
    later than everything (``math.inf`` when the quantile falls among them); None for an empty histogram."""
    got = sum(hist.values())
    total = max(expected or 0, got)
    if not total:
        return None
    rank = q * total
    if rank > got:
        return math.inf
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return bucket_value(bucket)
    return bucket_value(max(hist))


def bucket_value_ms(hist: dict[int, int], q: float, expected: int) -> Optional[float]:
    value = percentile(hist, q, expected)
    return None if value is None else value * 1e3


def median_or_none(values: list[Optional[float]]) -> Optional[float]:
    """The median of the values that are not None (None if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure(kind: str, rate: float, args: argparse.Namespace, log: IO[bytes]) -> dict[str, Any]:
    """One measurement with fresh processes; the result dict (raises on failures)."""
    children: list[Child] = []
    workdir = tempfile.mkdtemp(prefix="bench11-")
    py = sys.executable
    try:
        redis, url = start_redis(log, workdir)
        children.append(redis)
        servers = []
        for i in range(2):
            server = Child(
                f"{kind}-server-{i}", [py, os.path.join(HERE, "servers.py"), "--kind", kind, "--redis", url], log
            )
            children.append(server)
            servers.append((server, int(server.expect("PORT ", START_TIMEOUT))))
        warmup = round(rate * args.warmup)
        total = round(rate * args.seconds) + warmup
        half = args.subscribers // 2
        subs = []
        for i, (_server, port) in enumerate(servers):
            count = half if i == 0 else args.subscribers - half
            argv = [py, os.path.join(HERE, "loadgen.py"), "subscribe", "--kind", kind, "--port", str(port)]
            argv += ["--count", str(count), "--sample", str(args.sample // 2), "--expect", str(total)]
            argv += ["--warmup", str(warmup)]
            sub = Child(f"{kind}-subscribers-{i}", argv, log, stdin=True)
            children.append(sub)
            subs.append(sub)
        for sub in subs:
            sub.expect("READY", START_TIMEOUT * 3)
        time.sleep(1.0)  # let the subscribe storm settle (presence, Redis) before measuring
        cpu0 = {c.name: proc_cpu_seconds(c.pid) for c in children}
        wait0 = {c.name: runqueue_wait(c.pid) for c in children}
        sys0 = system_cpu()
        wall0 = time.monotonic()
        seconds = total / rate + args.drain
        for sub in subs:
            sub.tell(f"GO {seconds:.3f}")
        argv = [py, os.path.join(HERE, "loadgen.py"), "publish", "--kind", kind, "--port", str(servers[0][1])]
        argv += ["--count", str(total), "--rate", str(rate), "--linger", str(seconds + RESULT_TIMEOUT)]
        publisher = Child(f"{kind}-publisher", argv, log, stdin=True)
        children.append(publisher)
        pub = json.loads(publisher.expect("RESULT ", seconds + RESULT_TIMEOUT))
        results = [json.loads(sub.expect("RESULT ", seconds + RESULT_TIMEOUT)) for sub in subs]
        publisher.tell("STOP")
        wall = time.monotonic() - wall0
        cpu = {c.name: proc_cpu_seconds(c.pid) - cpu0[c.name] for c in children[:3] if c.proc.poll() is None}
        waited = {c.name: runqueue_wait(c.pid) - wait0[c.name] for c in children[:3] if c.proc.poll() is None}
        sys1 = system_cpu()
    finally:
        for child in reversed(children):
            child.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    hist: dict[int, int] = {}
    for r in results:
        for bucket, n in r["hist"].items():
            hist[int(bucket)] = hist.get(int(bucket), 0) + n
    deliveries = sum(r["deliveries"] for r in results)
    expected = sum(r["expected"] for r in results)
    timed_expected = sum(r["sampled_connections"] for r in results) * (total - warmup)
    last = max(r["last_arrival"] for r in results)
    span = max(last - pub["t_start"], 1e-9)
    busy = (sys1["user"] + sys1["nice"] + sys1["system"]) - (sys0["user"] + sys0["nice"] + sys0["system"])
    loadgen_cpu = sum(r["cpu_s"] for r in results) + pub["cpu_s"]
    ours_cpu = sum(cpu.values()) + loadgen_cpu
    return {
        "rate": rate,
        "deliveries": deliveries,
        "expected": expected,
        "delivered_share": deliveries / expected if expected else 0.0,
        "deliveries_per_s": deliveries / span,
        "span_s": span,
        "wall_s": wall,
        # Over every timed (post-warm-up) message the sampled subscribers should have had: one that never
        # came (within the drain) counts as later than all, so a quantile among them is inf ("not delivered").
        "p50_ms": bucket_value_ms(hist, 0.50, timed_expected),
        "p99_ms": bucket_value_ms(hist, 0.99, timed_expected),
        "timed_expected": timed_expected,
        "timed_delivered": sum(hist.values()),
        "latency_samples": sum(hist.values()),
        "sampled_missing": sum(r["sampled_missing"] for r in results),
        "sampled_repeats": sum(r["sampled_repeats"] for r in results),
        "sampled_reordered": sum(r["sampled_reordered"] for r in results),
        "timed_out": any(r["timed_out"] for r in results),
        "publish_rate": pub["rate_achieved"],
        "published": pub["sent"],
        "cpu_s": {**cpu, "loadgen-subscribers": [r["cpu_s"] for r in results], "loadgen-publisher": pub["cpu_s"]},
        "server_cpu_ms_per_1000": sum(v for k, v in cpu.items() if "server" in k) / max(deliveries, 1) * 1e6,
        "runqueue_wait_s": waited,
        "cpu_util": {
            "servers": sum(v for k, v in cpu.items() if "server" in k) / wall,
            "redis": cpu.get("redis", 0.0) / wall,
            "loadgen_max_process": max([r["cpu_s"] / max(r["wall_s"], 1e-9) for r in results]),
            "other": max(0.0, busy - ours_cpu) / wall,
        },
        "errors": [e for r in results for e in r["errors"]] + pub["errors"],
        "bucket_of_1ms": bucket_of(1e-3),
    }


def measure_recovery(args: argparse.Namespace, log: IO[bytes]) -> dict[str, Any]:
    """Ours only: ``--subscribers`` clients (half on each server) disconnect, ``--recovery-missed`` messages are
    published, and all reconnect with ``since``; how long until every one has them all."""
    children: list[Child] = []
    workdir = tempfile.mkdtemp(prefix="bench11-")
    py = sys.executable
    missed = args.recovery_missed
    try:
        redis, url = start_redis(log, workdir)
        children.append(redis)
        ports = []
        for i in range(2):
            server = Child(
                f"ours-server-{i}", [py, os.path.join(HERE, "servers.py"), "--kind", "ours", "--redis", url], log
            )
            children.append(server)
            ports.append(int(server.expect("PORT ", START_TIMEOUT)))
        half = args.subscribers // 2
        groups = []
        for i, port in enumerate(ports):
            count = half if i == 0 else args.subscribers - half
            argv = [py, os.path.join(HERE, "loadgen.py"), "recover", "--kind", "ours", "--port", str(port)]
            group = Child(f"ours-recover-{i}", argv + ["--count", str(count)], log, stdin=True)
            children.append(group)
            groups.append(group)
        for group in groups:
            group.expect("CLOSED", START_TIMEOUT * 3)
        argv = [py, os.path.join(HERE, "loadgen.py"), "publish", "--kind", "ours", "--port", str(ports[0])]
        publisher = Child("ours-publisher", argv + ["--count", str(missed), "--rate", "10000"], log, stdin=True)
        children.append(publisher)
        pub = json.loads(publisher.expect("RESULT ", RESULT_TIMEOUT))
        if not pub["acked"]:
            raise RuntimeError(f"the publisher's last message was not acknowledged: {pub}")
        for group in groups:
            group.tell(f"GO {missed}")
        results = [json.loads(group.expect("RESULT ", RESULT_TIMEOUT)) for group in groups]
        publisher.tell("STOP")
    finally:
        for child in reversed(children):
            child.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "clients": sum(r["connections"] for r in results),
        "missed": missed,
        "seconds": max(r["seconds"] for r in results),
        "complete": sum(r["complete"] for r in results),
        "recovered": sum(r["recovered"] for r in results),
        "subscribe_retries": sum(r["subscribe_retries"] for r in results),
        "deliveries": sum(r["deliveries"] for r in results),
        "timed_out": any(r["timed_out"] for r in results),
        "errors": [e for r in results for e in r["errors"]],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for name in ("tornado_websocket", "tornado", "python-socketio", "python-engineio", "redis", "uvloop"):
        try:
            out[name] = version(name)
        except Exception:
            out[name] = "?"
    out["redis-server"] = subprocess.run(
        [shutil.which("redis-server") or "redis-server", "--version"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    out["tornado_websocket_commit"] = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return out


def fmt(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    if x == math.inf:
        return "not delivered"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def table(summary: dict[str, dict[str, Any]], rate: float, args: argparse.Namespace) -> str:
    rows = [
        ("deliveries/s", "deliveries_per_s", True),
        ("delivered (share of expected)", "delivered_share", True),
        ("latency p50 (ms)", "p50_ms", False),
        ("latency p99 (ms)", "p99_ms", False),
        ("server CPU per 1,000 deliveries (ms)", "server_cpu_ms_per_1000", False),
        ("server CPU (cores, 2 processes)", "cpu_servers", None),
        ("servers' wait for a CPU (share of wall)", "server_wait", None),
        ("busiest load generator process (cores)", "cpu_loadgen", None),
    ]
    kinds = [k for k in KINDS if k in summary]
    head = ["metric"] + [LABELS[k] for k in kinds] + (["ratio"] if len(kinds) == 2 else [])
    lines = [
        f"Scenario 11: {args.subscribers} subscribers on one channel over 2 processes + Redis, "
        f"{rate:g} msg/s published for {args.seconds:g} s (+{args.warmup:g} s warm-up), medians of {args.repeat}",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, key, higher in rows:
        cells = [label] + [fmt(summary[k][key]) for k in kinds]
        if len(kinds) == 2:
            a, b = summary["ours"][key], summary["socketio"][key]
            if higher is None or not b or not a or math.isinf(a) or math.isinf(b):
                cells.append("")
            else:
                cells.append(f"{a / b:.1f}x" if higher else f"{b / a:.1f}x lower")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rates", default="20,100", help="messages per second published, one table each")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of measured publishing")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of publishing before (not timed)")
    parser.add_argument("--sample", type=int, default=100, help="subscribers that time every delivery")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds allowed after the last publish")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--recovery-missed",
        type=int,
        default=100,
        help="messages each client misses in the recovery measurement (0: skip)",
    )
    parser.add_argument("--nice", type=int, default=-20, help="nice value of every child (default -20 as root)")
    parser.add_argument("--output")
    args = parser.parse_args()
    raise_nofile_limit()
    child_nice, nice = bench_run.nice_plan(args.nice)
    bench_run.CHILD_NICE = child_nice  # type: ignore[attr-defined]  # read by child_setup
    kinds = [k for k in args.kinds.split(",") if k]
    os.makedirs(os.path.join(RESULTS_DIR, "logs"), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    rates = [float(r) for r in args.rates.split(",") if r]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {f"{r:g}": {k: [] for k in kinds} for r in rates}
    with open(os.path.join(RESULTS_DIR, "logs", f"channels-{stamp}.log"), "ab") as log, bench_run.pm_qos(True) as qos:
        for rep in range(args.repeat):
            for rate in rates:
                for kind in kinds:  # interleaved: repetition 1 of each, then 2, ...
                    result = measure(kind, rate, args, log)
                    runs[f"{rate:g}"][kind].append(result)
                    print(
                        f"[{rep + 1}/{args.repeat}] {rate:g}/s {kind:9} {result['deliveries_per_s']:>10,.0f} "
                        f"deliveries/s ({result['delivered_share']:.1%} delivered) p50 {fmt(result['p50_ms'])} ms "
                        f"p99 {fmt(result['p99_ms'])} ms missing {result['sampled_missing']} "
                        f"repeated {result['sampled_repeats']} reordered {result['sampled_reordered']} "
                        f"cpu servers {result['cpu_util']['servers']:.2f} "
                        f"loadgen {result['cpu_util']['loadgen_max_process']:.2f} "
                        f"other {result['cpu_util']['other']:.2f} "
                        f"cpu/1000 {result['server_cpu_ms_per_1000']:.1f} ms",
                        flush=True,
                    )
        recoveries = []
        if args.recovery_missed and "ours" in kinds:
            for rep in range(args.repeat):
                recovery = measure_recovery(args, log)
                recoveries.append(recovery)
                print(
                    f"[{rep + 1}/{args.repeat}] recovery: {recovery['clients']} clients back, "
                    f"{recovery['missed']} missed each, in {recovery['seconds']:.2f} s "
                    f"({recovery['complete']} complete, {recovery['recovered']} recovered, "
                    f"{recovery['subscribe_retries']} subscribes refused as unavailable and retried)",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    tables = []
    for rate in rates:
        per_kind = summary[f"{rate:g}"] = {}
        for kind, results in runs[f"{rate:g}"].items():
            per_kind[kind] = {
                key: median_or_none([r[key] for r in results])
                for key in ("deliveries_per_s", "delivered_share", "p50_ms", "p99_ms", "server_cpu_ms_per_1000")
            }
            per_kind[kind]["server_wait"] = statistics.median(
                sum(v for k, v in r["runqueue_wait_s"].items() if "server" in k) / 2 / r["wall_s"] for r in results
            )
            per_kind[kind]["cpu_servers"] = statistics.median(r["cpu_util"]["servers"] for r in results)
            per_kind[kind]["cpu_loadgen"] = statistics.median(r["cpu_util"]["loadgen_max_process"] for r in results)
            per_kind[kind]["other_cpu"] = statistics.median(r["cpu_util"]["other"] for r in results)
        tables.append(table(per_kind, rate, args))
    if recoveries:
        summary["recovery"] = {
            "seconds": statistics.median(r["seconds"] for r in recoveries),
            "complete": min(r["complete"] for r in recoveries),
            "recovered": min(r["recovered"] for r in recoveries),
            "subscribe_retries": statistics.median(r["subscribe_retries"] for r in recoveries),
        }
        tables.append(
            f"Recovery (ours): {args.subscribers} clients disconnected, {args.recovery_missed} messages published, "
            f"all back with since: every one complete in {summary['recovery']['seconds']:.2f} s "
            f"(median of {len(recoveries)}; fewest complete {summary['recovery']['complete']}, "
            f"fewest recovered:true {summary['recovery']['recovered']}; "
            f"{summary['recovery']['subscribe_retries']:g} subscribes refused as unavailable and retried)"
        )
    text = "\n\n".join(tables)
    print(text)
    out = args.output or os.path.join(RESULTS_DIR, f"channels-{stamp}.json")
    meta = {
        "command": sys.argv,
        "when": stamp,
        "cpus": os.cpu_count(),
        "pm_qos": qos,
        "nice": nice,
        "versions": versions(),
    }
    with open(out, "w") as f:
        document = {"meta": meta, "params": vars(args), "summary": summary, "runs": runs, "table": text}
        json.dump({**document, "recoveries": recoveries}, f, indent=1)
    print(f"results: {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
