"""Benchmark tornado_websocket against tornado.websocket, websockets, aiohttp and picows.

``python bench/run.py`` runs every scenario against every server, one server
at a time, and prints a table of medians with the ratio to
``tornado.websocket``. Results go to ``bench/results/<timestamp>.json`` and
``bench/results/latest.json``; ``bench/plot.py`` draws them. See
bench/README.md for what each scenario measures.

Each measurement starts a fresh server process (``bench/servers.py``) and a
fresh load generator process (``bench/loadgen.py``, a picows client). With
two or more CPUs the server is pinned to CPU 0 and the load generator to
CPU 1. While the run lasts, ``/dev/cpu_dma_latency`` is held at 0 (when it
can be opened) so idle CPUs poll instead of halting: on a virtual machine a
halted vCPU takes ~100 us to wake, which would otherwise dominate every
request-response number.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import selectors
import signal
import statistics
import struct
import subprocess
import sys
import time
from typing import IO, Any, Callable, Iterator, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from scenarios import (  # noqa: E402
    BASELINE,
    FLOOR_METRICS,
    INFO_METRICS,
    METRICS,
    NOT_APPLICABLE,
    ONLY_SCENARIOS,
    SCENARIOS,
    SERVER_LABELS,
    SERVERS,
    make_tls_files,
    raise_nofile_limit,
    scaled,
    system_cpu,
)

SERVER_START_TIMEOUT = 30.0
LOADGEN_TIMEOUT = 300.0
RESULTS_DIR = os.path.join(HERE, "results")
PR_SET_PDEATHSIG = 1
#: Other processes using more than this share of one CPU make a measurement "noisy".
NOISE_THRESHOLD = 0.10


# -- child processes ----------------------------------------------------------


#: Nice value for the server and the load generator (set by main(); 0 = unchanged).
CHILD_NICE = 0


def child_setup(cpu: Optional[int]) -> Callable[[], None]:
    """Runs in the child before exec: die with us, stay on ``cpu``, run at CHILD_NICE."""
    nice = CHILD_NICE

    def setup() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError:
                pass

    return setup


def nice_plan(wanted: int) -> tuple[int, str]:
    """The nice value children can get (negative needs root) and a description."""
    if wanted == 0:
        return 0, "nice 0 (--nice 0)"
    current = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, wanted)
        os.setpriority(os.PRIO_PROCESS, 0, current)
    except OSError:
        return 0, f"nice unchanged (cannot set {wanted}: not root)"
    return wanted, f"server and load generator at nice {wanted}"


def child_env(root: str = ROOT, stdlib_zlib: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TORNADO_WEBSOCKET_STDLIB_ZLIB", None)
    if stdlib_zlib:
        env["TORNADO_WEBSOCKET_STDLIB_ZLIB"] = "1"
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


#: Where the wss:// scenarios' certificates are written (a fresh trustme CA per run).
TLS_DIR = os.path.join(RESULTS_DIR, "logs", "tls")
#: Event loop of the servers (set by main() from --loop).
SERVER_LOOP = "asyncio"
#: ``--before TREE``: the "before" server is ours, imported from TREE (an older checkout) in the same run.
BEFORE_TREE: Optional[str] = None


class Server:
    """One server subprocess; ``port`` once it printed ``PORT <n>``."""

    def __init__(
        self, kind: str, cpu: Optional[int], log: IO[bytes], compress: bool = False, tls: bool = False
    ) -> None:
        self.kind = kind
        args = ["--kind", "ours" if kind in ("before", "ours-zlib") else kind, "--loop", SERVER_LOOP]
        if compress:
            args.append("--compress")
        if tls:
            args += ["--tls", TLS_DIR]
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "servers.py"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            env=child_env(BEFORE_TREE if kind == "before" and BEFORE_TREE else ROOT, stdlib_zlib=kind == "ours-zlib"),
            preexec_fn=child_setup(cpu),
        )
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"{self.kind} server exited before listening (see the log)")
                buf += chunk
                if b"\n" in buf:
                    line = buf.split(b"\n", 1)[0].decode()
                    if line.startswith("PORT "):
                        return int(line.split()[1])
                    raise RuntimeError(f"{self.kind} server printed {line!r}")
        raise RuntimeError(f"{self.kind} server did not listen within {SERVER_START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run_loadgen(
    server: Server, scenario: int, quick: bool, cpu: Optional[int], log: IO[bytes], max_connections: Optional[int]
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.join(HERE, "loadgen.py"),
        "--port",
        str(server.port),
        "--server-pid",
        str(server.proc.pid),
        "--scenario",
        str(scenario),
    ]
    if quick:
        cmd.append("--quick")
    if scenario == 6 and server.kind == "ours":
        cmd.append("--floor")
    if SCENARIOS[scenario].get("tls"):
        cmd += ["--tls", TLS_DIR]
    if max_connections is not None and scenario in (5, 6):
        cmd += ["--connections", str(max_connections)]
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=ROOT,
            env=child_env(),
            preexec_fn=child_setup(cpu),
            timeout=LOADGEN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        log.write(exc.stderr or b"")
        return {"ok": False, "error": f"load generator timed out after {LOADGEN_TIMEOUT:.0f} s"}
    log.write(done.stderr)
    for line in done.stdout.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    return {"ok": False, "error": f"load generator exited {done.returncode} without a result (see the log)"}


# -- machine settings ----------------------------------------------------------


def is_noisy(cpu: dict[str, float]) -> bool:
    """Did other processes use the CPUs during this measurement (ignoring /proc/stat tick jitter)?"""
    other = cpu.get("other_cpu_util", 0.0)
    return other > NOISE_THRESHOLD and other * cpu.get("wall_s", 0.0) >= 0.03


def machine_user_util(interval: float) -> float:
    """User CPU used machine-wide over ``interval`` seconds, in CPUs (1.0 = one core busy)."""
    a = system_cpu()
    time.sleep(interval)
    b = system_cpu()
    return ((b["user"] + b["nice"]) - (a["user"] + a["nice"])) / interval


def wait_quiet(max_wait: float) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until other processes leave the CPUs alone; (waited, last load)."""
    t0 = time.monotonic()
    while True:
        load = machine_user_util(0.3)
        waited = time.monotonic() - t0
        if load < NOISE_THRESHOLD or waited >= max_wait:
            return waited, load


@contextlib.contextmanager
def pm_qos(enabled: bool) -> Iterator[str]:
    """Hold /dev/cpu_dma_latency at 0 while the benchmark runs (idle CPUs poll, not halt)."""
    if not enabled:
        yield "off (--no-pm-qos)"
        return
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as exc:
        yield f"unavailable ({exc.strerror})"
        return
    try:
        os.write(fd, struct.pack("i", 0))
        yield "on (/dev/cpu_dma_latency = 0 us)"
    finally:
        os.close(fd)


def cpu_plan(pin: bool) -> tuple[Optional[int], Optional[int], str]:
    """CPUs for (server, load generator) and a description."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = []
    if not pin:
        return None, None, "not pinned (--no-pin)"
    if len(cpus) < 2:
        return None, None, f"not pinned (only {len(cpus)} CPU)"
    return cpus[0], cpus[1], f"server on CPU {cpus[0]}, load generator on CPU {cpus[1]}"


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for name in ("tornado_websocket", "tornado", "websockets", "aiohttp", "picows", "aiofastnet"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:
            out[name] = "?"
    try:
        rev = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, timeout=10, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "tornado_websocket"],
            capture_output=True,
            timeout=10,
            text=True,
        ).stdout.strip()
        out["tornado_websocket_commit"] = rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class Measurer:
    """Runs one measurement: a fresh server, the load generator, and again if the machine was busy."""

    def __init__(
        self,
        args: argparse.Namespace,
        repeat: int,
        log: IO[bytes],
        server_cpu: Optional[int],
        loadgen_cpu: Optional[int],
        max_connections: Optional[int],
    ) -> None:
        self.args = args
        self.repeat = repeat
        self.log = log
        self.server_cpu = server_cpu
        self.loadgen_cpu = loadgen_cpu
        self.max_connections = max_connections
        self.quiet_budget: float = args.quiet_budget
        self.retry_budget: float = args.retry_budget

    def measure_once(self, kind: str, scenario: int, rep: int, attempt: int) -> dict[str, Any]:
        waited, load = wait_quiet(min(self.args.quiet_wait, max(0.0, self.quiet_budget)))
        self.quiet_budget -= waited
        t0 = time.monotonic()
        self.log.write(f"\n=== {kind} scenario {scenario} repetition {rep + 1} attempt {attempt + 1}\n".encode())
        self.log.flush()
        server: Optional[Server] = None
        try:
            compress = bool(SCENARIOS[scenario].get("compress"))
            server = Server(kind, self.server_cpu, self.log, compress, bool(SCENARIOS[scenario].get("tls")))
            result = run_loadgen(server, scenario, self.args.quick, self.loadgen_cpu, self.log, self.max_connections)
        except (RuntimeError, OSError) as exc:
            result = {"ok": False, "error": str(exc)}
        finally:
            if server is not None:
                server.stop()
        self.log.flush()
        result["repetition"] = rep + 1
        result["seconds"] = time.monotonic() - t0
        result["quiet_wait_s"] = waited
        result["load_before"] = load
        if scenario in (5, 6):
            time.sleep(0.7)  # let the kernel tear down the thousands of sockets
        return result

    def measure(self, kind: str, scenario: int, rep: int) -> dict[str, Any]:
        """Measure; while other processes used the CPUs meanwhile, measure again (bounded); keep the quietest."""
        attempts: list[dict[str, Any]] = []
        retries = max(0, self.args.noisy_retries)
        for attempt in range(1 + retries):
            result = self.measure_once(kind, scenario, rep, attempt)
            attempts.append(result)
            noisy = bool(result.get("ok")) and is_noisy(result.get("cpu") or {})
            again = noisy and attempt < retries and self.retry_budget > 0
            line = progress_line(rep, self.repeat, kind, scenario, result)
            print(line + ("  -> measuring again" if again else ""), flush=True)
            if not again:
                break
            self.retry_budget -= result["seconds"]
        good = [a for a in attempts if a.get("ok")]
        if good:
            best = min(good, key=lambda a: (a.get("cpu") or {}).get("other_cpu_util", 0.0))
        else:
            best = attempts[-1]
        best["attempts"] = len(attempts)
        best["other_attempts"] = [
            {k: a.get(k) for k in ("ok", "metrics", "cpu", "error")} for a in attempts if a is not best
        ]
        return best


# -- summary and table ---------------------------------------------------------


def metric_rows() -> list[dict[str, Any]]:
    """Every (metric, server) row the table may have, in order."""
    rows = []
    for key, scenario, label, unit, higher in METRICS:
        rows.append(
            {
                "id": f"s{scenario}.{key}",
                "key": key,
                "scenario": scenario,
                "label": label,
                "unit": unit,
                "higher_is_better": higher,
                "floor": False,
            }
        )
        if scenario == 6:
            for floor_key, base_key, floor_label in FLOOR_METRICS:
                if base_key == key:
                    rows.append(
                        {
                            "id": f"s6.{floor_key}",
                            "key": floor_key,
                            "scenario": 6,
                            "label": label,
                            "unit": unit,
                            "higher_is_better": higher,
                            "floor": True,
                            "floor_label": floor_label,
                        }
                    )
    return rows


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]], servers: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for row in metric_rows():
        per_server: dict[str, Any] = {}
        for server in servers:
            good = [r for r in runs.get(server, {}).get(str(row["scenario"]), []) if r.get("ok")]
            values = [r["metrics"][row["key"]] for r in good if row["key"] in r.get("metrics", {})]
            if not values:
                continue
            entry: dict[str, Any] = {"median": statistics.median(values), "values": values}
            cpus = [r.get("cpu") or {} for r in good]
            for key in ("server_cpu_util", "client_cpu_util", "other_cpu_util", "steal_util"):
                found = [c[key] for c in cpus if key in c]
                if found:
                    entry[key] = statistics.median(found)
            entry["noisy_runs"] = sum(1 for c in cpus if is_noisy(c))
            if row["scenario"] == 6:
                part = ("python" if row["key"].startswith("python_") else "floor") if row["floor"] else "broadcast"
                details = [r["extra"][part] for r in good if part in r.get("extra", {})]
                if details:
                    entry["server_cpu_ms_per_round"] = statistics.median(d["server_cpu_ms_per_round"] for d in details)
                    entry["client_cpu_ms_per_round"] = statistics.median(d["client_cpu_ms_per_round"] for d in details)
                    entry["first_client_us"] = statistics.median(d["first_client_us"] for d in details)
                    entry["method"] = details[-1]["method"]
                    entry["fanout_us"] = statistics.median(d["fanout_us"] for d in details)
            per_server[server] = entry
        base = per_server.get(BASELINE)
        for entry in per_server.values():
            if base and not row["floor"] and base["median"]:
                entry["ratio_vs_tornado"] = entry["median"] / base["median"]
        summary[row["id"]] = per_server
    return summary


def fmt_value(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


BUSY = 0.85


def limited_by(row: dict[str, Any], entry: dict[str, Any]) -> str:
    """Which side ran out of CPU: the server, the load generator, both, or neither (waiting on round trips)."""
    if row["key"] in INFO_METRICS:
        return ""
    if SCENARIOS[row["scenario"]]["kind"] in ("pipeline", "deflate", "churn"):
        server = entry.get("server_cpu_util", 0.0) >= BUSY
        client = entry.get("client_cpu_util", 0.0) >= BUSY
        if server and client:
            return "both"
        if server:
            return "server"
        if client:
            return "LOADGEN"
        return "round trips"
    if row["key"].endswith("last_client_us") and "client_cpu_ms_per_round" in entry:
        # The load generator needs this much CPU per round just to read 5,000 messages.
        loadgen = entry["client_cpu_ms_per_round"] * 1000 >= BUSY * entry["median"]
        server = entry.get("fanout_us", 0.0) >= BUSY * entry["median"]
        if loadgen and server:
            return "both"
        if loadgen:
            return "LOADGEN"
        if server:
            return "server"
        return "neither"
    return ""


def format_table(summary: dict[str, Any], servers: list[str], errors: dict[tuple[str, int], str]) -> str:
    header = [
        "scenario",
        "server",
        "median",
        "unit",
        "vs tornado",
        "min..max",
        "server CPU",
        "loadgen CPU",
        "limited by",
        "other",
    ]
    lines: list[list[str]] = []
    seen_scenarios: set[int] = set()
    na_shown: set[int] = set()
    for row in metric_rows():
        per_server = summary.get(row["id"], {})
        if not per_server and not row["floor"]:
            if row["scenario"] in seen_scenarios or not any(k[1] == row["scenario"] for k in errors):
                continue
        row_has_na = False
        for server in servers:
            entry = per_server.get(server)
            name = SERVER_LABELS[server]
            if row["floor"]:
                if entry is None:
                    continue
                name = f"{name} ({row['floor_label']})"
            if entry is None:
                error = errors.get((server, row["scenario"]))
                reason = NOT_APPLICABLE.get(row["scenario"], {}).get(server)
                if error is None and reason is not None and per_server and row["scenario"] not in na_shown:
                    lines.append([row["label"], name, "n/a", "", "", reason, "", "", "", ""])
                    row_has_na = True
                    continue
                if error is None:
                    continue
                lines.append([row["label"], name, "ERROR", "", "", error[:60], "", "", "", ""])
                continue
            seen_scenarios.add(row["scenario"])
            ratio = entry.get("ratio_vs_tornado")
            values = entry["values"]
            spread = f"{fmt_value(min(values))}..{fmt_value(max(values))}" if len(values) > 1 else ""
            cpu_s = f"{entry['server_cpu_util'] * 100:.0f}%" if "server_cpu_util" in entry else ""
            cpu_c = f"{entry['client_cpu_util'] * 100:.0f}%" if "client_cpu_util" in entry else ""
            if "server_cpu_ms_per_round" in entry:
                cpu_s = f"{entry['server_cpu_ms_per_round']:.1f} ms/rnd"
                cpu_c = f"{entry['client_cpu_ms_per_round']:.1f} ms/rnd"
            other = f"{entry.get('other_cpu_util', 0.0) * 100:.0f}%"
            if entry.get("noisy_runs"):
                other += f" !{entry['noisy_runs']}"
            if row["key"] in INFO_METRICS:  # same runs as the row above: CPU columns would repeat it
                cpu_s = cpu_c = other = ""
            lines.append(
                [
                    row["label"],
                    name,
                    fmt_value(entry["median"]),
                    row["unit"],
                    f"{ratio:.2f}x" if ratio is not None else "",
                    spread,
                    cpu_s,
                    cpu_c,
                    limited_by(row, entry),
                    other,
                ]
            )
        if row_has_na:
            na_shown.add(row["scenario"])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    right = {2, 4, 5, 6, 7, 9}

    def render(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells))

    out = [render(header), "  ".join("-" * w for w in widths)]
    previous = None
    for line in lines:
        if previous is not None and line[0] != previous:
            out.append("")
        out.append(render(line))
        previous = line[0]
    return "\n".join(out)


# -- main ------------------------------------------------------------------------


def parse_list(text: str, allowed: list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"unknown {what}: {', '.join(bad) or '(none)'}; choose from {','.join(allowed)}")
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description="WebSocket server benchmark (see bench/README.md)")
    parser.add_argument(
        "--scenarios",
        default=",".join(str(n) for n in SCENARIOS),
        help=f"comma-separated scenario numbers (1-{max(SCENARIOS)})",
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma-separated, from {','.join(SERVERS)} (and before)"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the servers' event loop")
    parser.add_argument(
        "--before",
        metavar="TREE",
        default=None,
        help="also run our server imported from TREE (an older checkout) as server 'before', side by side",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions per measurement (default 3; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="counts divided by 10, for a smoke run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and load generator to CPUs")
    parser.add_argument("--no-pm-qos", action="store_true", help="do not hold /dev/cpu_dma_latency at 0")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each measurement, wait up to this many seconds for other processes to go idle (default 10)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=60.0,
        help="at most this many seconds of such waiting in the whole run (default 60)",
    )
    parser.add_argument(
        "--noisy-retries",
        type=int,
        default=2,
        help="measure again (fresh server) when other processes used the CPUs meanwhile, up to N times (default 2)",
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=120.0,
        help="at most this many seconds of such re-measuring in the whole run (default 120)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-20,
        help="nice value of the server and load generator (default -20, needs root; 0 to leave it)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="results file (default: bench/results/<timestamp>.json, and latest.json is updated too; "
        "with --output it is not)",
    )
    args = parser.parse_args()

    scenarios = [int(s) for s in parse_list(args.scenarios, [str(n) for n in SCENARIOS], "scenario")]
    global SERVER_LOOP, BEFORE_TREE
    SERVER_LOOP = args.loop
    known = SERVERS + (["before"] if args.before else [])
    servers = parse_list(args.servers, known, "server")
    if args.before:
        BEFORE_TREE = os.path.abspath(args.before)
        SERVER_LABELS["before"] = f"ours before ({os.path.basename(BEFORE_TREE)})"
        if "before" not in servers:
            servers.insert(1, "before")
    if any(SCENARIOS[s].get("tls") for s in scenarios):
        make_tls_files(TLS_DIR)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")

    # Children inherit this soft limit; each raises its own again as well.
    soft, hard = raise_nofile_limit()
    wanted = max((scaled(s, args.quick).get("connections", 0) for s in scenarios), default=0)
    warm = max((scaled(s, args.quick).get("warmup_connections", 0) for s in scenarios), default=0)
    needed = wanted + warm + 200
    max_connections: Optional[int] = None
    if soft < needed:
        max_connections = max(10, soft - warm - 200)
    server_cpu, loadgen_cpu, pin_text = cpu_plan(not args.no_pin)
    global CHILD_NICE
    CHILD_NICE, nice_text = nice_plan(args.nice)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    os.makedirs(os.path.join(RESULTS_DIR, "logs"), exist_ok=True)
    log_path = os.path.join(RESULTS_DIR, "logs", f"{stamp}.log")

    # Turn SIGTERM into an exception so the finally blocks kill the servers.
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {str(n): [] for n in scenarios} for s in servers}
    errors: dict[tuple[str, int], str] = {}
    started = time.monotonic()
    with pm_qos(not args.no_pm_qos) as qos_text, open(log_path, "ab") as log:
        print(f"python {platform.python_version()} on {cpu_model()}, {os.cpu_count()} CPUs; {pin_text}; {nice_text}")
        print(f"PM QoS: {qos_text}; RLIMIT_NOFILE soft {soft} hard {hard} (need ~{needed}); servers on {SERVER_LOOP}")
        if max_connections is not None:
            print(
                f"warning: RLIMIT_NOFILE {soft} (hard {hard}) is below {needed}: scenarios 5 and 6 use "
                f"{max_connections} connections instead of {wanted} (raise the hard limit: ulimit -Hn)",
                file=sys.stderr,
            )
        print(
            f"servers: {', '.join(servers)}; scenarios: {scenarios}; repeat {repeat}{'; quick' if args.quick else ''}"
        )
        print(f"server logs: {os.path.relpath(log_path, ROOT)}\n", flush=True)
        measurer = Measurer(args, repeat, log, server_cpu, loadgen_cpu, max_connections)
        try:
            for rep in range(repeat):
                for server_kind in servers:
                    for scenario in scenarios:
                        if server_kind in ONLY_SCENARIOS and scenario not in ONLY_SCENARIOS[server_kind]:
                            continue
                        reason = NOT_APPLICABLE.get(scenario, {}).get(server_kind)
                        if reason is not None:
                            print(f"[{rep + 1}/{repeat}] {server_kind:<10} scenario {scenario}: n/a ({reason})")
                            continue
                        result = measurer.measure(server_kind, scenario, rep)
                        runs[server_kind][str(scenario)].append(result)
                        if not result.get("ok"):
                            errors[(server_kind, scenario)] = result.get("error", "?")
        except KeyboardInterrupt:
            print("\ninterrupted: the table below has what was measured so far", file=sys.stderr)

    summary = summarize(runs, servers)
    table = format_table(summary, servers, errors)
    elapsed = time.monotonic() - started
    meta = {
        "timestamp": stamp,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "quick": args.quick,
        "repeat": repeat,
        "servers": servers,
        "server_loop": SERVER_LOOP,
        "before_tree": BEFORE_TREE,
        "scenarios": scenarios,
        "seconds": elapsed,
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "pinning": pin_text,
            "nice": nice_text,
            "pm_qos": qos_text,
            "rlimit_nofile": [soft, hard],
        },
        "versions": versions(),
        "baseline": BASELINE,
        "not_applicable": {
            str(n): NOT_APPLICABLE[n] for n in scenarios if any(k in servers for k in NOT_APPLICABLE.get(n, {}))
        },
    }
    document = {
        "meta": meta,
        "scenario_params": {str(n): scaled(n, args.quick, max_connections) for n in scenarios},
        "rows": metric_rows(),
        "server_labels": SERVER_LABELS,
        "summary": summary,
        "runs": runs,
        "table": table,
    }
    output = args.output or os.path.join(RESULTS_DIR, f"{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(document, f, indent=1)
    written = [os.path.relpath(output, ROOT)]
    if args.output is None:
        with open(os.path.join(RESULTS_DIR, "latest.json"), "w") as f:
            json.dump(document, f, indent=1)
        written.append("bench/results/latest.json")

    print()
    print(table)
    print(
        "\nmedians of the repetitions; 'vs tornado' = median / tornado.websocket's median "
        "(scenarios 1-4 and 7: higher is better; 5-6: lower is better)."
    )
    if 7 in scenarios:
        print(
            "scenario 7: each library's own permessage-deflate defaults (window bits, zlib level and memLevel "
            "differ); the 'payload / wire bytes' row is how much each server's echoes shrank (higher = smaller on the "
            "wire); n/a = the library has no permessage-deflate."
        )
    print("server CPU / loadgen CPU: CPU time over wall time of the measured phase (100% = one core busy);")
    print("for scenario 6 they are CPU milliseconds per broadcast round.")
    print(
        f"limited by: which side was >= {BUSY * 100:.0f}% busy; 'round trips': neither (they wait on each other). "
        "Scenario 6: whether the server's fan-out or the load generator's own CPU per round accounts for the time "
        "until the last client has the message ('neither': waiting, e.g. on a busy machine)."
    )
    print(
        f"other: CPU (user + system) of other processes on the machine meanwhile (100% = one core); "
        f"'!N' = N runs above {NOISE_THRESHOLD * 100:.0f}% (noisy)."
    )
    print(f"\nwrote {' and '.join(written)} in {elapsed:.0f} s")
    return 0 if not errors else 1


def progress_line(rep: int, repeat: int, server: str, scenario: int, result: dict[str, Any]) -> str:
    head = f"[{rep + 1}/{repeat}] {server:<10} scenario {scenario}: "
    if not result.get("ok"):
        return head + "ERROR " + result.get("error", "?")
    parts = [f"{key}={fmt_value(value)}" for key, value in result["metrics"].items() if key != "rtt_us"]
    cpu = result.get("cpu") or {}
    if "server_cpu_util" in cpu:
        parts.append(
            f"(server CPU {cpu['server_cpu_util'] * 100:.0f}%, loadgen CPU {cpu['client_cpu_util'] * 100:.0f}%)"
        )
    if is_noisy(cpu):
        parts.append(f"NOISY: other processes used {cpu['other_cpu_util'] * 100:.0f}% of a CPU")
    if result.get("load_before", 0.0) > NOISE_THRESHOLD:
        parts.append(
            f"(machine busy before: {result['load_before'] * 100:.0f}% after {result['quiet_wait_s']:.0f} s wait)"
        )
    return head + " ".join(parts) + f"  [{result['seconds']:.1f} s]"


if __name__ == "__main__":
    sys.exit(main())
