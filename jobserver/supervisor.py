"""The supervisor: a FIFO queue, a fixed number of slots, one task per run.

Rules: a job runs inside its own cancel scope (`LiveJob.cancel_scope`); cancel
and bounce go through it, nothing else stops a job. Each run's children and
pumps live in that run's nursery, inside the supervisor's. A run always ends
with exactly one of: Finished (SUCCEEDED / FAILED / CANCELLED) or Bounce. Its
work dir is handed to the supervisor's `WorkDirs` as it ends, which removes it
shortly after, batched with others, or keeps it as a spare that a later run
renames to its own work dir (workdirs.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from . import executor, groups, watchdog, workdirs
from .auth import Principal
from .core import control as ctl
from .core import events as ev
from .core.ids import JobId
from .core.logcap import LogCap
from .core.states import OutcomeKind, Status
from .engine import ADHOC_TEMPLATE, Engine
from .errors import JobserverError
from .livejob import LiveJob, Submission, closing_steps, log_marker

log = logging.getLogger("jobserver.supervisor")

# Environment variables a job inherits from the server; nothing else leaks.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME",
                 "SHELL", "VIRTUAL_ENV", "PYTHONPATH")


class Supervisor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config
        self._running: dict[JobId, LiveJob] = {}
        self._idle = trio.Event()
        self._idle.set()
        self.work_dirs = workdirs.WorkDirs(engine.config.data_dir / "work")

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.work_dirs.run)
            task_status.started()
            while True:
                while len(self._running) < self.config.slots and self.engine.accepting:
                    live = self.engine.take_queued()
                    if live is None:
                        break
                    self._running[live.job.id] = live
                    self._idle = trio.Event()
                    nursery.start_soon(self._run_job, live)
                await self.engine.wait_queue_changed()

    async def bounce_all(self) -> None:
        """Stop taking work and send every running job back to QUEUED; return once
        the bounces are committed (and so published)."""
        self.engine.accepting = False
        for live in list(self._running.values()):
            live.stop_reason = "bounce"
            if live.cancel_scope is not None:
                live.cancel_scope.cancel()
        await self._idle.wait()
        await self.engine.store.wait_flushed()

    async def _run_job(self, live: LiveJob) -> None:
        job_id = live.job.id
        try:
            await Run(self.engine, live, self.work_dirs).run()
        finally:
            del self._running[job_id]
            if not self._running:
                self._idle.set()
            self.engine.kick()


class Run:
    """One execution of one job: its plan, its sink, its outcome."""

    def __init__(self, engine: Engine, live: LiveJob, work_dirs: workdirs.WorkDirs) -> None:
        self.engine = engine
        self.live = live
        self.work_dirs = work_dirs
        self.reclaimed = False  # the dir of an earlier run of the job, to remove first
        self.spare: Path | None = None  # an empty dir to rename to the work dir
        self.config = engine.config
        self.snippet: dict[str, deque[str]] = {
            "stdout": deque(maxlen=self.config.log_snippet_lines),
            "stderr": deque(maxlen=self.config.log_snippet_lines),
        }
        self.reported_error: str | None = None
        self.current_step: str | None = None
        self.result_message: str | None = None
        job_id = live.job.id
        self.work_dir = self.config.data_dir / "work" / job_id
        self.output_dir = self.config.data_dir / "output" / job_id
        template = self.config.templates.get(live.job.template)
        limit = (template.max_log_bytes if template and template.max_log_bytes
                 else self.config.max_log_bytes)
        live.cap = LogCap(limit) if limit else None
        self.kill_on_cap = template is not None and template.on_log_cap == "kill"
        self.stopper = watchdog.Stopper()
        self.dirs_made = False  # by `_make_dirs`, in the thread of the first spawn

    @property
    def cap_reached(self) -> bool:
        return self.live.cap is not None and self.live.cap.reached

    # ---- ExecutionSink ----------------------------------------------------

    async def started(self, pid: int, command: str, step: str | None, *,
                      identity: groups.Identity | None) -> None:
        jid = self.live.job.id
        process = identity.to_dict() if identity is not None else None
        await self.engine.record(self.live, [lambda s: ev.Started(
            job_id=jid, seq=s, ts=self.engine.now(), pid=pid, command=command, step=step,
            process=process, node=self.engine.node_id)])

    async def lines(self, stream: str, ts: float, lines: list[str]) -> None:
        self.snippet[stream].extend(lines[-self.config.log_snippet_lines:])
        await self.engine.record_logs(self.live, stream, ts, lines)
        if self.kill_on_cap and self.cap_reached:
            self.stopper.stop("log_cap")

    async def warning(self, message: str) -> None:
        jid = self.live.job.id
        await self.engine.record(self.live, [lambda s: ev.Warning(
            job_id=jid, seq=s, ts=self.engine.now(), message=message)])

    async def control(self, messages: list[ctl.Message]) -> None:
        """One read's control messages: their events in one record (a spawn, which
        submits a job, goes in its place between them)."""
        made: list[Callable[[int], ev.Event]] = []
        for message in messages:
            if isinstance(message, ctl.SpawnMsg):
                if made:
                    await self.engine.record(self.live, made)
                    made = []
                await self._spawn(message)
                continue
            event = self._event_for(message)
            if event is not None:
                made.append(event)
        if made:
            await self.engine.record(self.live, made)

    def _event_for(self, message: ctl.Message) -> Callable[[int], ev.Event] | None:
        """How to make `message`'s event at a seq (None: it makes none)."""
        jid, now = self.live.job.id, self.engine.now()
        match message:
            case ctl.Progress():
                pct = message.pct
                if pct is None and message.at is not None and message.of:
                    pct = 100.0 * message.at / message.of
                return _at_seq(ev.Progress, job_id=jid, ts=now,
                               pct=round(min(max(pct or 0.0, 0.0), 100.0), 2), at=message.at,
                               of=message.of, message=message.message,
                               step=message.step or self.current_step)
            case ctl.StepMsg():
                return _at_seq(ev.Step, job_id=jid, ts=now, name=message.name,
                               status=message.status)
            case ctl.ResultMsg():
                data = dict(message.data)
                if isinstance(data.get("message"), str):
                    self.result_message = data["message"]
                return _at_seq(ev.Result, job_id=jid, ts=now, data=data)
            case ctl.ErrorMsg():
                self.reported_error = message.message
                return _at_seq(ev.Error, job_id=jid, ts=now, code=message.code,
                               message=message.message, remediation=message.remediation,
                               step=message.step or self.current_step)
        return None

    async def _spawn(self, message: ctl.SpawnMsg) -> None:
        parent = self.live.job
        principal = Principal(parent.owner, self.live.role)
        try:
            child = await self.engine.submit(principal, Submission(
                template=message.template, params=message.params,
                correlation_id=parent.correlation_id, parent_id=parent.id))
        except JobserverError as exc:
            where = f"{exc.field}: " if exc.field else ""
            await self.warning(f"spawn of {message.template!r} refused: {where}{exc.message}")
            return
        await self.engine.record(self.live, [lambda s: ev.Spawned(
            job_id=parent.id, seq=s, ts=self.engine.now(), child_id=child.id,
            template=message.template, name=message.name)])

    # ---- the run ----------------------------------------------------------

    async def run(self) -> None:
        with trio.CancelScope() as scope:
            self.live.cancel_scope = scope
            if self.live.stop_reason is None:
                self.reclaimed = await self.work_dirs.reclaim(self.work_dir)
                self.spare = self.work_dirs.take_spare()
                outcome = await self._execute_plan()
        self.live.cancel_scope = None
        with trio.CancelScope(shield=True):
            try:
                await self._discard_work_dir()
            finally:
                try:
                    if scope.cancelled_caught or self.live.stop_reason is not None:
                        await self._stopped()
                    else:
                        await self._finish(*outcome)
                except trio.ClosedResourceError:
                    # The whole server is being torn down, not stopped: the job's
                    # end is not recorded, and recovery at the next start sees it.
                    log.warning("job %s ended as the store closed; recovery will see it",
                                self.live.job.id)

    async def _stopped(self) -> None:
        jid = self.live.job.id
        if self.live.stop_reason == "bounce":
            if self.live.job.status is Status.QUEUED:
                return  # stopped before its process started: still queued, nothing to say
            now = self.engine.now()
            # With several nodes it goes back to the shared queue now, a new
            # attempt there (alone, the restart says so when it takes it again).
            again = [] if self.engine.claims is None else [lambda s: ev.Queued(
                job_id=jid, seq=s, ts=now, reason="restart")]
            await self.engine.record(self.live, [*log_marker(self.live, now), lambda s: ev.Bounce(
                job_id=jid, seq=s, ts=now, reason="server shutting down"), *again])
            return  # stays in memory as QUEUED; picked up again after restart
        await self.engine.finish_cancelled(self.live)
        self.engine.forget(jid)

    async def _execute_plan(self) -> tuple[str, str, int | None, str | None]:
        """(status, outcome, exit_code, message) of the whole plan."""
        job = self.live.job
        if job.template == ADHOC_TEMPLATE:
            plan: list[tuple[str | None, list[str]]] = [(None, list(job.command))]
            template = None
        else:
            template = self.config.templates.get(job.template)
            if template is None:
                return (Status.FAILED, "failed", None,
                        f"template {job.template!r} is no longer configured")
            plan = template.plan(job.params)
        env = self._environment(template.render_env(job.params) if template else {})
        cwd = template.cwd if template and template.cwd else str(self.work_dir)
        timeout = template.timeout if template else None
        idle = template.idle_timeout if template else None
        deadline = time.monotonic() + timeout if timeout else None
        stdin = self._input_bytes() if template and template.stdin_input else None
        for index, (step, argv) in enumerate(plan):
            if index < job.resume_from and step is not None:
                await self._step(step, "Skipped")
                continue
            self.current_step = step
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            self.stopper = watchdog.Stopper()
            if self.cap_reached and self.kill_on_cap:
                self.stopper.stop("log_cap")
            info = await executor.execute(
                executor.Command(argv=argv, env=env, cwd=cwd, timeout=left, stdin_data=stdin,
                                 step=step, idle_timeout=idle, prepare=self._make_dirs),
                self, kill_grace=self.config.kill_grace, max_line=self.config.max_line_bytes,
                stopper=self.stopper)
            failure = self._failure(info, timeout, idle)
            if failure is not None:
                if step is not None:
                    await self._step(step, "Failed")
                return (Status.FAILED, failure[0], info.exit_code, failure[1])
            if step is not None and self._step_status(step) != "Skipped":
                await self._step(step, "Succeeded")  # unless it reported itself Skipped
        message = self.result_message or "Completed successfully."
        return (Status.SUCCEEDED, "succeeded", 0, message)

    def _failure(self, info: executor.ExitInfo, timeout: float | None,
                 idle: float | None) -> tuple[str, str] | None:
        if info.start_error is not None:
            return "failed", f"could not start: {info.start_error}"
        if info.timed_out:
            return "killed", f"timed out after {timeout:g} seconds"
        if info.ended_by == "idle":
            return OutcomeKind.IDLE, f"no output for {idle:g} seconds (idle_timeout)"
        if info.ended_by == "log_cap":
            return (OutcomeKind.LOG_CAP,
                    f"stopped: the log passed its cap of {self._cap_bytes():,} bytes")
        if info.signal is not None:
            name = signal.Signals(info.signal).name if info.signal in signal.valid_signals() \
                else str(info.signal)
            return "killed", self.reported_error or f"killed by signal {name}"
        if info.exit_code != 0:
            return "failed", self.reported_error or f"exited with code {info.exit_code}"
        return None

    def _cap_bytes(self) -> int:
        return self.live.cap.max_bytes if self.live.cap is not None else 0

    def _step_status(self, name: str) -> str | None:
        return next((s.status for s in self.live.job.steps if s.name == name), None)

    async def _step(self, name: str, status: str) -> None:
        jid = self.live.job.id
        await self.engine.record(self.live, [lambda s: ev.Step(
            job_id=jid, seq=s, ts=self.engine.now(), name=name, status=status)])

    async def _finish(self, status: str, outcome: str, exit_code: int | None,
                      message: str | None) -> None:
        jid = self.live.job.id
        snippet = None
        if status == Status.FAILED:
            tail = self.snippet["stderr"] or self.snippet["stdout"]
            snippet = "\n".join(tail) if tail else None
        now = self.engine.now()
        await self.engine.record(self.live, [
            *log_marker(self.live, now),
            *closing_steps(self.live.job, status, now),
            lambda s: ev.Finished(
                job_id=jid, seq=s, ts=now, status=status, outcome=outcome,
                exit_code=exit_code, message=message, log_snippet=snippet)])
        self.engine.forget(jid)

    async def _discard_work_dir(self) -> None:
        """The work dir goes shortly after the end (batched, workdirs.py), or
        now when the batch is full."""
        if not self.dirs_made:
            if self.spare is not None:  # not used: another run's
                self.work_dirs.give_back(self.spare)
            await trio.lowlevel.checkpoint()  # no process started: nothing was made
            return
        if self.work_dirs.discard(self.work_dir):
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(workdirs.FLUSH_SECONDS):
            await workdirs.remove_now(self.work_dir)

    def _make_dirs(self) -> None:
        """The work dir (with the input file) and the output dir, made before the
        run's first process starts: blocking, run in the thread that spawns it
        (executor.Command.prepare); a later step finds them made. An earlier
        run's dir still waiting for its removal (`reclaimed`) goes first."""
        if self.dirs_made:
            return
        self.dirs_made = True  # from here on, whatever is made is removed at the end
        if self.reclaimed:
            workdirs.remove_dir(self.work_dir)
        spare, self.spare = self.spare, None
        if not workdirs.take_over(spare, self.work_dir):
            _mkdir(self.work_dir)
        _mkdir(self.output_dir)
        data = self._input_bytes()
        if data is not None:
            (self.work_dir / "input.json").write_bytes(data)

    def _input_bytes(self) -> bytes | None:
        document = self.live.job.input
        return None if document is None else json.dumps(document).encode()

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(extra)
        job = self.live.job
        env.update({
            "JOBSERVER_JOB_ID": job.id,
            "JOBSERVER_WORK_DIR": str(self.work_dir),
            "JOBSERVER_OUTPUT_DIR": str(self.output_dir),
            "JOBSERVER_CORRELATION_ID": job.correlation_id or "",
        })
        if job.input is not None:
            env["JOBSERVER_INPUT_FILE"] = str(self.work_dir / "input.json")
        return env


def _at_seq(kind: Callable[..., ev.Event], **fields: Any) -> Callable[[int], ev.Event]:
    """An event of `kind` with `fields`, made once its seq is known (Engine.record)."""
    def make(seq: int) -> ev.Event:
        return kind(seq=seq, **fields)
    return make


def _mkdir(path: Path) -> None:
    """Make `path` (and its parents), unless it is there: one call when the parent is."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)


