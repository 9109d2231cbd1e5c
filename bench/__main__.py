"""`python -m bench`: run the benchmark suite, print tables, write JSON and a plot.

Installs bench/requirements.txt into the running environment when it changed,
raises the open-file soft limit to the hard limit, runs the selected benches
(`--only`), prints medians and side-by-side ratios, and writes
bench/results/<time>.json and .png (plus latest.json / latest.png). Servers
are killed on exit, on error and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
BENCHES = ("fanout", "idle", "logs", "spawn", "rest", "async", "multiplex", "live",
           "retention", "logcap", "crossnode", "nodes")
TARGETS = ("fastapi", "quart", "c", "cbatch", "jobserver")


def ensure_requirements() -> None:
    requirements = BENCH / "requirements.txt"
    stamp = BENCH / "build" / f".requirements-{Path(sys.executable).resolve().parent.name}"
    if stamp.exists() and stamp.stat().st_mtime >= requirements.stat().st_mtime:
        return
    print("installing bench/requirements.txt ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)],
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        sys.exit(f"bench: pip install failed:\n{done.stdout}\n{done.stderr}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    info = {"cpu": model, "cores": cores, "kernel": platform.release(),
            "python": platform.python_version(), "machine": platform.machine()}
    info["summary"] = (f"{cores} cores, {model or platform.machine()}, Linux {info['kernel']}, "
                       f"Python {info['python']}")
    return info


def repeat(runs: int, fn: Callable[[], float], say: Callable[[str], None],
           name: str) -> dict[str, Any]:
    """Run `fn` `runs` times: {"runs": [...], "median": m} or {"skipped": why}."""
    from .system import Skip
    from .targets import TargetUnavailable

    values = []
    try:
        for _ in range(runs):
            values.append(fn())
            say(f"  {name}: {values[-1]:,.0f}")
    except (Skip, TargetUnavailable) as exc:
        say(f"  {name}: skipped: {exc}")
        return {"skipped": str(exc)}
    except Exception as exc:  # a broken measurement is reported, the suite goes on
        say(f"  {name}: failed: {exc}")
        return {"skipped": f"failed: {exc}", "runs": values}
    return {"runs": values, "median": statistics.median(values)}


def log_throughput_postgres(lines: int, server_url: str | None) -> float:
    """The log-throughput bench with the server's store on a fresh PostgreSQL database."""
    from .jobserver_benches import log_throughput
    from .postgres import postgres_databases

    with postgres_databases(server_url) as new_database:
        return log_throughput(lines, database_url=new_database())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one run each, N up to 1000, shorter rounds (a smoke run)")
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated benches to run ({', '.join(BENCHES)})")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated fan-out/idle targets ({', '.join(TARGETS)})")
    parser.add_argument("--runs", type=int, help="measured runs per point (default 3)")
    parser.add_argument("--ns", help="fan-out subscriber counts, e.g. 100,1000,5000")
    parser.add_argument("--idle-connections", type=int, default=10_000,
                        help="idle subscribers to hold (capped by the fd limit)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the server with py-spy during one more log-throughput "
                             "(and spawn, and REST) run and print where its time goes")
    parser.add_argument("--database-url", default=None,
                        help="the PostgreSQL server of the `logs` bench's PostgreSQL row "
                             "(it makes and drops databases jobserver_bench_N there; "
                             "default: a throwaway server of its own)")
    parser.add_argument("--no-install", action="store_true",
                        help="skip tsp and wrk rather than apt-get install them")
    args = parser.parse_args(argv)
    for name, allowed in (("only", BENCHES), ("targets", TARGETS)):
        chosen = [x for x in getattr(args, name).split(",") if x]
        bad = [x for x in chosen if x not in allowed]
        if bad:
            parser.error(f"--{name}: unknown {', '.join(bad)}")
        setattr(args, name, chosen)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from . import system
    from .fanout import FanoutSettings, run_fanout
    from .idle import run_idle
    from .jobserver_benches import log_throughput, spawn_rate
    from .jobserver_target import JobserverTarget
    from .targets import CBatchedTarget, CTarget, QuartTarget, Target, UvicornTarget

    def say(text: str) -> None:
        print(text, flush=True)

    runs = args.runs or (1 if args.quick else 3)
    makers: dict[str, Callable[[], Target]] = {
        "fastapi": UvicornTarget, "quart": QuartTarget, "c": CTarget,
        "cbatch": CBatchedTarget, "jobserver": JobserverTarget}
    results: dict[str, Any] = {"machine": machine(), "started": dt.datetime.now(dt.UTC)
                               .isoformat(timespec="seconds"), "args": vars(args)}
    if "fanout" in args.only:
        ns = tuple(int(n) for n in args.ns.split(",")) if args.ns else (
            (100, 1000) if args.quick else (100, 1000, 5000))
        settings = FanoutSettings(ns=ns, runs=runs,
                                  round_seconds=1.5 if args.quick else 2.0,
                                  latency_seconds=4.0 if args.quick else 8.0)
        results["fanout"] = run_fanout([makers[k]() for k in args.targets], settings, say)
    if "idle" in args.only:
        wanted = min(args.idle_connections, 2000) if args.quick else args.idle_connections
        results["idle"] = run_idle([makers[k]() for k in args.targets], wanted, say=say)
    if "logs" in args.only:
        lines = 200_000 if args.quick else 2_000_000
        say(f"log throughput, {lines:,} lines")
        results["logs"] = {
            "seq | wc -l": repeat(runs, lambda: system.seq_wc(lines), say, "seq | wc -l"),
            "jobserver": repeat(runs, lambda: log_throughput(lines), say, "jobserver"),
            "jobserver on PostgreSQL": repeat(runs, lambda: log_throughput_postgres(
                lines, args.database_url), say, "jobserver on PostgreSQL")}
        if args.profile:
            from .profile import print_summary, summary
            raw = RESULTS / "logs-profile.txt"
            say(f"log throughput under py-spy (samples in {raw}):")
            rate = log_throughput(lines, profile=raw)
            found = summary(raw) if raw.exists() else {}
            say(f"  {rate:,.0f} lines/s while sampled")
            print_summary(found, say)
            results["logs_profile"] = {k: [list(r) for r in v] for k, v in found.items()}
    if "spawn" in args.only:
        count = 300 if args.quick else 2000
        say(f"spawn rate, {count:,} jobs of `true`, 2 at once")
        spawn: dict[str, Any] = {
            "xargs -P2": repeat(runs, lambda: system.xargs_spawn(count), say, "xargs -P2")}
        try:
            tsp = system.find_tsp(install=not args.no_install)
            spawn["tsp"] = repeat(runs, lambda: system.tsp_spawn(tsp, count), say, "tsp")
        except system.Skip as exc:
            say(f"  tsp: skipped: {exc}")
            spawn["tsp"] = {"skipped": str(exc)}
        spawn["jobserver"] = repeat(runs, lambda: spawn_rate(count), say, "jobserver")
        if args.profile:
            from .profile import print_summary, summary
            raw = RESULTS / "spawn-profile.txt"
            say(f"spawn rate under py-spy (samples in {raw}):")
            rate = spawn_rate(count, profile=raw)
            found = summary(raw) if raw.exists() else {}
            say(f"  {rate:,.0f} jobs/s while sampled")
            print_summary(found, say)
            results["spawn_profile"] = {k: [list(r) for r in v] for k, v in found.items()}
        results["spawn"] = spawn
    if "rest" in args.only:
        results["rest"] = rest_bench(args, runs, say)
    if "async" in args.only:
        from .async_watch import run_async_watch
        results["async"] = run_async_watch((0, 100) if args.quick else (0, 100, 1000),
                                           200_000 if args.quick else 2_000_000, say=say)
    if "multiplex" in args.only:
        from .multiplex import run_multiplex
        results["multiplex"] = run_multiplex(n=1000, events=300 if args.quick else 1000,
                                             runs=runs, repeat=repeat, say=say)
    if "live" in args.only:
        from .live import run_live
        say("live dialect fan-out: 1,000 subscribers of one chatty job, beside the logs dialect")
        results["live"] = run_live(n=1000, count=5000 if args.quick else 20_000, runs=runs,
                                   say=say)
    if "retention" in args.only:
        from .retention import main as retention
        say("retention: deleting finished jobs while a job writes (bench/retention.py)")
        results["retention"] = retention(["--jobs", "20000" if args.quick else "100000"])
    if "logcap" in args.only:
        from .logcap import main as logcap
        say("logcap: server RSS while a job prints far past a 1 MiB log cap (bench/logcap.py)")
        results["logcap"] = logcap(["--mb", "20" if args.quick else "200"])
    if "crossnode" in args.only:
        from .cross_node import main as cross_node
        say("cross-node delivery latency on PostgreSQL, beside same-node (bench/cross_node.py)")
        results["crossnode"] = cross_node(["--rounds", "1" if args.quick else "3"])
    if "nodes" in args.only:
        from .nodes import run as run_nodes
        results["nodes"] = run_nodes(300 if args.quick else 1000, 2, runs, say)
    return results


def rest_bench(args: argparse.Namespace, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    from .rest import run_rest
    from .system import Skip, find_tool

    try:
        wrk = find_tool("wrk", "wrk", install=not args.no_install)
    except Skip as exc:
        say(f"rest: skipped: {exc}")
        return {"skipped": str(exc)}
    targets = ["starlette", "quart", *(["jobserver"] if "jobserver" in args.targets else [])]
    return run_rest(wrk, targets=targets, runs=runs, seconds=2.0 if args.quick else 5.0,
                    connections=32, profile=RESULTS if args.profile else None, say=say)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    ensure_requirements()
    from .procs import kill_all, raise_nofile_limit
    from .report import plot, render, write_json

    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    soft, hard = raise_nofile_limit()
    print(f"open files: soft limit {soft}, hard {hard}", flush=True)
    began = time.monotonic()
    try:
        results = run(args)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        kill_all()
    results["seconds"] = round(time.monotonic() - began, 1)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    print("\n" + render(results) + "\n")
    for name in (stamp, "latest"):
        write_json(results, RESULTS / f"{name}.json")
        plotted = plot(results, RESULTS / f"{name}.png")
    print(f"raw results: {RESULTS / (stamp + '.json')}" + (
        f", plot: {RESULTS / (stamp + '.png')}" if plotted else ""))
    print(f"took {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
