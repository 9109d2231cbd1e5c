"""Following a job: `logs` (with `-f`), `wait`, and `submit/run/retry -f|--wait`.

Rules: the job's stdout lines go to our stdout and its stderr lines to our
stderr, in seq order, each exactly once (the client's resumable stream sees
to that across drops); the status line, when there is one, is on stderr. A
waited-for job's own exit code is ours: 0 when it succeeded, its exit code
when it failed with one, 128+N when a signal N ended it, 130 when it was
cancelled, 1 when it failed without a code (it could not start, the server
lost it).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from ..core.states import CANCELLED_EXIT_CODE
from .client import Client
from .output import SHORT_ID, StatusLine, Style, duration, job_duration, print_json_line

TICK = 0.1  # the spinner's frame time
EXIT_CANCELLED = 130  # as a shell reports a command ended by Ctrl-C


def job_exit_code(job: dict[str, Any]) -> int:
    if job["status"] == "SUCCEEDED":
        return 0
    if job["status"] == "CANCELLED":
        return EXIT_CANCELLED
    code = job.get("exit_code")
    if isinstance(code, int) and code > 0:
        return min(code, 255)
    if isinstance(code, int) and code < 0 and code != CANCELLED_EXIT_CODE:
        return min(128 - code, 255)
    return 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFilter:
    """Which log lines to show, and how."""

    streams: tuple[str, ...] = ("stdout", "stderr")
    json: bool = False
    show: bool = True  # False: follow for the status only (`wait`)


def stream_named(name: str | None) -> TextIO:
    """Our own stream for a job's: its stderr lines to stderr, the rest to stdout."""
    return sys.stderr if name == "stderr" else sys.stdout


def show_log(event: dict[str, Any], lines: LogFilter, write: Callable[[TextIO, str], None]
             ) -> None:
    if not lines.show or event.get("type") != "log" or event.get("stream") not in lines.streams:
        return
    if lines.json:
        print_json_line(event)
    else:
        write(stream_named(event.get("stream")), f"{event['line']}\n")


def status_line(job: dict[str, Any], style: Style, *, enabled: bool) -> StatusLine:
    ui = StatusLine(sys.stdout, sys.stderr, style, enabled=enabled)
    ui.label = f"{job['id'][:SHORT_ID]} {job['template']}"
    ui.status = job["status"]
    ui.progress = job.get("progress")
    ui.message = (job.get("progress") or {}).get("message") or ""
    return ui


def _on_event(event: dict[str, Any], ui: StatusLine, lines: LogFilter) -> None:
    kind = event.get("type")
    if kind == "log":
        show_log(event, lines, ui.write)
    elif kind == "started":
        ui.update(status="RUNNING", message=f"step {event['step']}" if event.get("step") else "")
    elif kind == "progress":
        ui.update(progress=event, message=event.get("message") or ui.message)
    elif kind == "step":
        ui.update(message=f"step {event['name']}: {event['status']}")
    elif kind == "queued":
        ui.update(status="QUEUED")
    elif kind == "bounce":
        ui.update(status="QUEUED", message=f"back in the queue: {event.get('reason', '')}")
    elif kind == "finished":
        ui.update(status=event["status"], message=event.get("message") or "")


async def follow_job(client: Client, job: dict[str, Any], *, after: int, lines: LogFilter,
                     style: Style, progress: bool) -> dict[str, Any] | None:
    """Show the job's events after seq `after` until it ends; the final job
    record, or None when it was deleted meanwhile."""
    ui = status_line(job, style, enabled=progress)
    ended: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        _on_event(event, ui, lines)
        if event.get("type") == "deleted":
            ended.append("deleted")

    async with trio.open_nursery() as nursery:
        if progress:
            nursery.start_soon(_tick, ui)
        try:
            ui.draw()
            await client.follow(job["id"], after, on_event)
        finally:
            nursery.cancel_scope.cancel()
            ui.clear()
            sys.stdout.flush()
    if ended:
        return None
    final = await client.job(job["id"])
    return final


async def _tick(ui: StatusLine) -> None:
    while True:
        await trio.sleep(TICK)
        ui.draw()


def summary(job: dict[str, Any], style: Style) -> str:
    """`abc12345 SUCCEEDED in 1.2s`, with the exit code or message after a failure."""
    text = f"{job['id'][:SHORT_ID]} {style.status(job['status'])}"
    took = job_duration(job)
    if took is not None:
        text += f" in {duration(took)}"
    if job["status"] != "SUCCEEDED":
        if job.get("exit_code") is not None and job["exit_code"] != CANCELLED_EXIT_CODE:
            text += f" (exit {job['exit_code']})"
        if job.get("error_message"):
            text += f": {job['error_message']}"
    return text


async def history(client: Client, job: dict[str, Any], after: int, lines: LogFilter, *,
                  tail: int | None) -> int:
    """Print the stored log after seq `after`, up to the job's last seq when it
    was read (the last `tail` lines of that, held in a bounded deque); that seq,
    from which a follow goes on."""
    keep: deque[tuple[str, str]] = deque(maxlen=tail if tail is not None else 1)

    def on_line(stream: str, line: str) -> None:
        if tail is None:
            stream_named(stream).write(f"{line}\n")
        else:
            keep.append((stream, line))

    if lines.json:  # the events carry seq and ts: page through them
        return await _history_events(client, job["id"], after, lines, tail=tail)
    until = max(after, int(job["last_seq"]))
    await client.log_lines(job["id"], after=after, until=until, streams=lines.streams,
                           on_line=on_line)
    if tail:
        for stream, line in keep:
            stream_named(stream).write(f"{line}\n")
    return until


async def _history_events(client: Client, job_id: str, after: int, lines: LogFilter, *,
                          tail: int | None) -> int:
    keep: deque[dict[str, Any]] = deque(maxlen=tail if tail is not None else 1)
    cursor: int | None = after
    last = after
    while cursor is not None:
        events, cursor = await client.events_page(job_id, cursor)
        for event in events:
            last = event["seq"]
            if event.get("type") != "log" or event.get("stream") not in lines.streams:
                continue
            if tail is None:
                print_json_line(event)
            else:
                keep.append(event)
    if tail:
        for event in keep:
            print_json_line(event)
    return last
