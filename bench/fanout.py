"""Fan-out benchmark: messages/s delivered to N subscribers, and latency.

Throughput: for each target, N and burst size, warm-up rounds size the event
count so a measured round lasts about `round_seconds`; then `runs`
measured rounds, each with fresh subscribers. Rate = messages delivered (N x
events) / (last receive - trigger). Latency: N = `latency_n` subscribers at a
fixed `latency_rate` messages/s delivered (events/s = rate / N), bursts of 1;
latency = receive time - the event's own timestamp. Every round is bounded by
`round_timeout`; a round cut short still reports what was delivered.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .loadgen import LoadClient
from .procs import foreign_cpu_seconds, foreign_cpu_ticks, group_cpu_seconds
from .targets import Plan, Target, TargetUnavailable

WARM_MESSAGES = 40_000
# Warm-up rounds repeat (up to WARM_ROUNDS, each sized from the last) until one
# lasts WARM_ENOUGH of a measured round, so fast targets get long enough rounds.
WARM_ROUNDS = 3
WARM_ENOUGH = 0.3
MAX_EVENTS = 200_000
MIN_EVENTS = 10
# Client read batching (see Worker.measure), sized to ~16 frames per recv().
BATCH_FRAMES = 16
BATCH_MIN, BATCH_MAX = 0.02, 0.05
CONNECT_TIMEOUT = 90.0
# The machine may be shared: a measured round during which other processes
# used more than this many cores is measured again, at most MAX_RETRIES times.
MAX_OTHER_LOAD = 0.25
MAX_RETRIES = 2
# Before measuring again: wait for a 1 s sample under QUIET_LOAD, for up to QUIET_WAIT s.
QUIET_LOAD, QUIET_SAMPLE, QUIET_WAIT = 0.1, 1.0, 30.0
SETTLE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FanoutSettings:
    ns: tuple[int, ...] = (100, 1000, 5000)
    bursts: tuple[int, ...] = (1, 16)
    runs: int = 3
    round_seconds: float = 2.0
    round_timeout: float = 30.0
    latency_n: int = 1000
    latency_rate: float = 5000.0
    latency_seconds: float = 8.0
    workers: int = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Round:
    target: str
    n: int
    burst: int
    events: int
    rate: float
    ready: int
    delivered: int
    complete: int
    seconds: float
    msgs_per_s: float
    server_cpu_s: float
    # Cores' worth of CPU used by processes other than the server and the client.
    other_load: float
    timed_out: bool
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def run_round(target: Target, client: LoadClient, n: int, plan: Plan, *, latency: bool,
              timeout: float, batch: float = 0.0) -> Round:
    url = target.prepare(plan)
    ready = client.connect(url, n, timeout=CONNECT_TIMEOUT)
    try:
        if ready.ready == 0:
            raise TargetUnavailable(f"no subscriber got in: {ready.errors}")
        foreign = foreign_cpu_ticks(target.pid, client.pids)
        cpu = group_cpu_seconds(target.pid)
        client.go(expect=plan.count, latency=latency, timeout=timeout, batch=batch)
        start_ns = time.time_ns()
        target.trigger()
        got = client.wait()
        cpu = group_cpu_seconds(target.pid) - cpu
        other = foreign_cpu_seconds(foreign, foreign_cpu_ticks(target.pid, client.pids))
    finally:
        client.close()
    target.settle(SETTLE_TIMEOUT)
    end_ns = got.last_ns or time.time_ns()
    seconds = max((end_ns - start_ns) / 1e9, 1e-9)
    lat = sorted(x / 1e6 for x in got.latencies_ns)
    return Round(
        target=target.key, n=n, burst=plan.burst, events=plan.count, rate=plan.rate,
        ready=ready.ready, delivered=got.total, complete=got.complete, seconds=seconds,
        msgs_per_s=got.total / seconds, server_cpu_s=cpu,
        other_load=other / seconds, timed_out=got.timed_out,
        errors={**ready.errors, **got.errors},
        p50_ms=percentile(lat, 50) if lat else None,
        p99_ms=percentile(lat, 99) if lat else None,
        max_ms=lat[-1] if lat else None)


def measured_round(target: Target, client: LoadClient, n: int, plan: Plan, *, latency: bool,
                   timeout: float, batch: float, say: Callable[[str], None],
                   tag: str) -> Round:
    """A round, repeated (at most MAX_RETRIES times) while other processes disturb it."""
    for attempt in range(MAX_RETRIES + 1):
        result = run_round(target, client, n, plan, latency=latency, timeout=timeout,
                           batch=batch)
        say(f"  {tag}" + _describe(result))
        if result.other_load <= MAX_OTHER_LOAD or attempt == MAX_RETRIES:
            return result
        waited = wait_quiet(target, client)
        say(f"    other processes used {result.other_load:.2f} cores: measuring again "
            f"(after {waited:.0f} s waiting for a quiet machine)")
    raise AssertionError("unreachable")


def wait_quiet(target: Target, client: LoadClient) -> float:
    """Wait (at most QUIET_WAIT s) until other processes use < QUIET_LOAD cores."""
    began = time.monotonic()
    while time.monotonic() - began < QUIET_WAIT:
        before = foreign_cpu_ticks(target.pid, client.pids)
        time.sleep(QUIET_SAMPLE)
        used = foreign_cpu_seconds(before, foreign_cpu_ticks(target.pid, client.pids))
        if used / QUIET_SAMPLE < QUIET_LOAD:
            break
    return time.monotonic() - began


def _describe(r: Round) -> str:
    text = (f"{r.target:>9} N={r.n:<5} burst={r.burst:<3} events={r.events:<6} "
            f"{r.msgs_per_s:>11,.0f} msg/s  {r.seconds:6.2f} s  cpu {r.server_cpu_s:5.2f} s")
    if r.p99_ms is not None:
        text += f"  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
    if r.other_load > MAX_OTHER_LOAD:
        text += f"  (disturbed: other load {r.other_load:.2f})"
    if r.complete < r.ready or r.ready < r.n:
        text += f"  (ready {r.ready}, complete {r.complete}, {r.errors})"
    return text


def throughput_cell(target: Target, client: LoadClient, n: int, burst: int,
                    settings: FanoutSettings, say: Callable[[str], None]) -> list[Round]:
    events = max(MIN_EVENTS, WARM_MESSAGES // n // burst * burst)
    batch = BATCH_MIN
    for _ in range(WARM_ROUNDS):
        warm = run_round(target, client, n, Plan(count=events, burst=burst),
                         latency=False, timeout=settings.round_timeout, batch=batch)
        say("  warm-up " + _describe(warm))
        events = int(warm.msgs_per_s * settings.round_seconds / n)
        events = min(max(events // burst * burst, MIN_EVENTS, burst), MAX_EVENTS)
        batch = min(max(BATCH_FRAMES * n / max(warm.msgs_per_s, 1.0), BATCH_MIN), BATCH_MAX)
        if warm.seconds >= WARM_ENOUGH * settings.round_seconds or events == MAX_EVENTS:
            break
    return [measured_round(target, client, n, Plan(count=events, burst=burst), latency=False,
                           timeout=settings.round_timeout, batch=batch, say=say, tag="")
            for _ in range(settings.runs)]


def latency_cell(target: Target, client: LoadClient, settings: FanoutSettings,
                 say: Callable[[str], None]) -> list[Round]:
    n = settings.latency_n
    rate = settings.latency_rate / n
    plan = Plan(count=max(int(rate * settings.latency_seconds), 2), burst=1, rate=rate)
    return [measured_round(target, client, n, plan, latency=True,
                           timeout=settings.latency_seconds + settings.round_timeout,
                           batch=0.0, say=say, tag="latency ")
            for _ in range(settings.runs)]


def run_fanout(targets: Sequence[Target], settings: FanoutSettings,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every target; return raw rounds, medians and skips (JSON-ready)."""
    rounds: list[Round] = []
    skipped: dict[str, str] = {}
    with LoadClient(workers=settings.workers) as client:
        for target in targets:
            say(f"fan-out: {target.label}")
            try:
                target.start()
            except TargetUnavailable as exc:
                skipped[target.key] = str(exc)
                say(f"  skipped: {exc}")
                continue
            try:
                for n in settings.ns:
                    for burst in settings.bursts:
                        rounds += throughput_cell(target, client, n, burst, settings, say)
                rounds += latency_cell(target, client, settings, say)
            except TargetUnavailable as exc:
                skipped[target.key] = str(exc)
                say(f"  stopped: {exc}")
            finally:
                target.stop()
            sys.stdout.flush()
    return {"settings": asdict(settings), "labels": {t.key: t.label for t in targets},
            "skipped": skipped, "max_other_load": MAX_OTHER_LOAD,
            "rounds": [asdict(r) for r in rounds],
            "summary": summarize(rounds)}


def summarize(rounds: Sequence[Round]) -> dict[str, Any]:
    """Medians per (target, N, burst) for throughput, and per target for latency."""
    throughput: dict[str, dict[str, float]] = {}
    latency: dict[str, dict[str, float]] = {}
    groups: dict[tuple[str, int, int, bool], list[Round]] = {}
    for r in rounds:
        groups.setdefault((r.target, r.n, r.burst, r.p99_ms is not None), []).append(r)
    for (target, n, burst, is_latency), group in groups.items():
        if is_latency:
            latency[target] = {
                "n": n, "msgs_per_s": statistics.median(r.msgs_per_s for r in group),
                "p50_ms": statistics.median(r.p50_ms or 0.0 for r in group),
                "p99_ms": statistics.median(r.p99_ms or 0.0 for r in group),
                "max_ms": max(r.max_ms or 0.0 for r in group)}
        else:
            cell = throughput.setdefault(f"{n}/{burst}", {})
            cell[target] = statistics.median(r.msgs_per_s for r in group)
    disturbed = sum(1 for r in rounds if r.other_load > MAX_OTHER_LOAD)
    incomplete = sum(1 for r in rounds if r.complete < r.ready or r.ready < r.n)
    return {"throughput": throughput, "latency": latency, "disturbed_rounds": disturbed,
            "incomplete_rounds": incomplete}
