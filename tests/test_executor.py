"""The executor against real subprocesses: lines, control, exits, kills, cleanup."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from jobserver import executor, groups, spawning
from jobserver.core import control
from jobserver.core.control import Progress, ResultMsg, StepMsg, StepStatus
from jobserver.core.lines import truncation_marker
from jobserver.executor import Command, ExitInfo

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
ENV = {"PATH": os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", os.defpath),
       "PYTHONPATH": str(REPO)}
GRACE = 0.5

# A leader that starts a grandchild and reports its pid once the grandchild is
# ready. Flags: leader-exits, leader-ignores-term; for the grandchild:
# ignore-term, setsid (leaves the session, so it is outside the job's group).
TREE = r"""
import os, signal, subprocess, sys, time
flags = sys.argv[1:]
r, w = os.pipe()
code = ("import os, signal, sys, time\n"
        "if 'setsid' in sys.argv: os.setsid()\n"
        "if 'ignore-term' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "os.write(int(sys.argv[1]), b'r'); time.sleep(60)\n")
g = subprocess.Popen([sys.executable, "-c", code, str(w), *flags], pass_fds=(w,))
os.close(w); os.read(r, 1)
print("grandchild", g.pid, flush=True)
if "leader-ignores-term" in flags: signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "leader-exits" not in flags: time.sleep(60)
g.returncode = 0  # no "still running" warning at exit
"""


class RecordingSink:
    """Records what the executor reports; `wait_for` lets a test act mid-run."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.pid: int | None = None
        self.identity: groups.Identity | None = None
        self.command: str | None = None
        self.out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.batches = 0
        self.controls: list[control.Message] = []
        self.warnings: list[str] = []
        self._delay = delay
        self._changed = trio.Event()

    async def started(self, pid: int, command: str, step: str | None, *,
                      identity: groups.Identity | None) -> None:
        self.pid, self.command = pid, command
        self.identity = identity
        self._poke()

    async def lines(self, stream: str, ts: float, lines: list[str]) -> None:
        assert abs(ts - time.time()) < 5
        self.out[stream].extend(lines)
        self.batches += 1
        self._poke()
        await trio.sleep(self._delay)  # backpressure: the executor must wait for us

    async def control(self, messages: list[control.Message]) -> None:
        assert messages
        self.controls.extend(messages)

    async def warning(self, message: str) -> None:
        self.warnings.append(message)

    async def wait_for(self, ready: Callable[[], bool]) -> None:
        with trio.fail_after(10):
            while not ready():
                await self._changed.wait()

    def grandchild(self) -> int | None:
        for line in self.out["stdout"]:
            if line.startswith("grandchild "):
                return int(line.split()[1])
        return None

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for a parent (init here reaps lazily)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test may leave behind on failure (or on purpose): killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    before = set(os.listdir("/proc/self/fd"))
    yield
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, {fd: _describe_fd(fd) for fd in leaked}


def _describe_fd(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture(params=["posix_spawn", "popen"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with posix_spawn (glibc) and with the subprocess fallback."""
    if request.param == "popen":
        monkeypatch.setattr(spawning, "_posix_spawner", lambda: None)
    elif spawning._posix_spawner() is None:
        pytest.skip("posix_spawn backend not available here")
    return str(request.param)


async def run(argv: list[str], sink: RecordingSink | None = None, *,
              env: dict[str, str] | None = None, cwd: str | None = None,
              timeout: float | None = None, stdin: bytes | None = None,
              max_line: int = 65536) -> tuple[ExitInfo, RecordingSink]:
    sink = sink or RecordingSink()
    info = await executor.execute(
        Command(argv=argv, env=ENV if env is None else env, cwd=cwd, timeout=timeout,
                stdin_data=stdin),
        sink, kill_grace=GRACE, max_line=max_line)
    if sink.pid is not None:  # whatever happened, the group is gone
        assert dead(sink.pid)
        assert not groups.group_alive(sink.pid)
    return info, sink


def py(code: str, *args: str) -> list[str]:
    return [PY, "-c", code, *args]


# ---- output -----------------------------------------------------------------------

async def test_stdout_and_stderr_lines_in_order(backend: str) -> None:
    code = ("import sys\n"
            "for i in range(3):\n"
            "    print('out', i); print('err', i, file=sys.stderr)\n"
            "sys.stdout.write('no newline')")
    info, sink = await run(py(code, "arg with space"))
    assert info == ExitInfo(exit_code=0, signal=None, timed_out=False, start_error=None)
    assert sink.out == {"stdout": ["out 0", "out 1", "out 2", "no newline"],
                        "stderr": ["err 0", "err 1", "err 2"]}
    assert sink.command is not None and sink.command.endswith("'arg with space'")
    assert not sink.warnings


async def test_invalid_utf8_and_a_1mb_line_is_capped() -> None:
    code = ("import sys; o = sys.stdout.buffer\n"
            "o.write(b'bad \\xff\\xfe bytes\\n'); o.write('caf\\u00e9\\n'.encode()[:4] + b'\\n')\n"
            "o.write(b'x' * 1048576 + b'\\n'); o.write(b'after\\n')")
    info, sink = await run(py(code))
    assert info.exit_code == 0
    assert sink.out["stdout"] == [
        "bad \ufffd\ufffd bytes", "caf\ufffd", "x" * 65536 + truncation_marker(1048576 - 65536),
        "after"]


async def test_100k_lines_none_lost_with_a_slow_sink() -> None:
    code = "import sys\nw = sys.stdout.write\nfor i in range(100000): w(f'line {i}\\n')"
    info, sink = await run(py(code), RecordingSink(delay=0.0005))
    assert info.exit_code == 0
    assert sink.out["stdout"] == [f"line {i}" for i in range(100000)]
    assert sink.batches > 1


async def test_stdin_data_is_fed_else_devnull(backend: str) -> None:
    code = "import sys; print(repr(sys.stdin.read()))"
    _, sink = await run(py(code), stdin=b"hello\nworld")
    assert sink.out["stdout"] == ["'hello\\nworld'"]
    _, sink = await run(py(code))
    assert sink.out["stdout"] == ["''"]
    # A child that never reads a large input does not hang the run.
    info, sink = await run(py("print('bye')"), stdin=b"z" * 5_000_000)
    assert info.exit_code == 0 and sink.out["stdout"] == ["bye"]


# ---- the control pipe -------------------------------------------------------------

async def test_control_messages_and_bad_lines_become_warnings(backend: str) -> None:
    code = r"""
import json, os
fd = int(os.environ["JOBSERVER_CONTROL_FD"])
with os.fdopen(fd, "w", buffering=1) as c:
    c.write(json.dumps({"step": "prepare", "status": "running"}) + "\n")
    c.write(json.dumps({"progress": {"at": 1, "of": 4}, "message": "quarter"}) + "\n")
    c.write("this is not json\n\n")
    c.write(json.dumps({"result": {"answer": 42}}) + "\n")
print("done")
"""
    info, sink = await run(py(code))
    assert info.exit_code == 0 and sink.out["stdout"] == ["done"]
    assert sink.controls == [
        StepMsg(name="prepare", status=StepStatus.RUNNING),
        Progress(at=1, of=4, pct=25.0, message="quarter"),
        ResultMsg(data={"answer": 42})]
    assert len(sink.warnings) == 1 and "not valid JSON" in sink.warnings[0]


async def test_progress_helper_and_fd_3_from_a_shell_script() -> None:
    script = (f'"{PY}" -m jobserver.progress 3 10 "three of ten" && '
              f'"{PY}" -m jobserver.progress --step mux --status running && '
              'echo \'{"result": {"ok": true}}\' >&3')
    info, sink = await run(["sh", "-c", script])
    assert info.exit_code == 0, sink.out
    assert sink.controls == [
        Progress(at=3, of=10, pct=30.0, message="three of ten"),
        StepMsg(name="mux", status=StepStatus.RUNNING),
        ResultMsg(data={"ok": True})]


async def test_the_child_has_fds_0_to_3_only(backend: str) -> None:
    code = ("import os, stat\n"
            "kinds = {}\n"
            "for fd in range(256):\n"
            "    try: mode = os.fstat(fd).st_mode\n"
            "    except OSError: continue\n"
            "    kinds[fd] = stat.S_ISFIFO(mode) and 'fifo' or stat.S_ISCHR(mode) and 'chr'\n"
            "print(kinds)")
    _, sink = await run(py(code))
    assert sink.out["stdout"] == [str({0: "chr", 1: "fifo", 2: "fifo", 3: "fifo"})]


async def test_environment_is_exactly_the_given_one(backend: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_SECRET", "hunter2")
    _, sink = await run(["env"], env={"PATH": ENV["PATH"], "GREETING": "hi there"})
    assert sorted(sink.out["stdout"]) == sorted([
        f"PATH={ENV['PATH']}", "GREETING=hi there", "PYTHONUNBUFFERED=1",
        "JOBSERVER_CONTROL_FD=3"])


async def test_signals_start_at_their_defaults() -> None:
    _, sink = await run(["cat", "/proc/self/status"])
    status = dict(line.split(":\t", 1) for line in sink.out["stdout"] if ":\t" in line)
    assert int(status["SigIgn"], 16) == 0 and int(status["SigBlk"], 16) == 0
    assert int(status["Pid"]) == int(status["NSsid"].split()[-1])  # a session leader


# ---- exits ------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "exit_code", "sig"), [
    ("pass", 0, None),
    ("import sys; sys.exit(3)", 3, None),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM, signal.SIGTERM),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, signal.SIGKILL),
])
async def test_exit_codes(code: str, exit_code: int, sig: int | None) -> None:
    info, _ = await run(py(code))
    assert info == ExitInfo(exit_code=exit_code, signal=sig, timed_out=False, start_error=None)


async def test_start_errors_are_reported_not_raised(backend: str, tmp_path: Path) -> None:
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    cases = [
        (["no-such-program-here"], None, "no-such-program-here: No such file or directory"),
        (["/no/such/path"], None, "/no/such/path: No such file or directory"),
        ([str(not_executable)], None, "Permission denied"),
        (["true"], str(tmp_path / "missing"), "working directory"),
        ([], None, "empty command"),
        (["echo", "a\0b"], None, "NUL"),
    ]
    for argv, cwd, words in cases:
        sink = RecordingSink()
        info, _ = await run(argv, sink, cwd=cwd)
        assert info.start_error is not None and words in info.start_error, (argv, info)
        assert info.exit_code is None and sink.pid is None
    info, _ = await run(["true"], env={"PATH": ENV["PATH"], "A=B": "x"})
    assert info.start_error is not None and "environment" in info.start_error


async def test_cwd_is_used_for_the_child_and_a_relative_program(tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\npwd\n")
    script.chmod(0o755)
    _, sink = await run(["./hello.sh"], cwd=str(tmp_path))
    assert sink.out["stdout"] == [str(tmp_path)]


# ---- ending the group -------------------------------------------------------------

async def test_timeout_kills_the_group_even_what_ignores_sigterm(strays: list[int]) -> None:
    sink = RecordingSink()
    start = time.monotonic()
    info, _ = await run(py(TREE, "ignore-term", "leader-ignores-term"), sink, timeout=1.0)
    elapsed = time.monotonic() - start
    grandchild = sink.grandchild()
    assert grandchild is not None
    strays.append(grandchild)
    assert info.timed_out and info.exit_code == -signal.SIGKILL and info.signal == signal.SIGKILL
    assert dead(grandchild)
    assert 1.0 + GRACE <= elapsed < 1.0 + GRACE + executor.KILL_WAIT


async def test_timeout_term_is_enough_for_a_polite_tree(strays: list[int]) -> None:
    sink = RecordingSink()
    start = time.monotonic()
    info, _ = await run(py(TREE), sink, timeout=1.0)
    grandchild = sink.grandchild()
    assert grandchild is not None
    strays.append(grandchild)
    assert info.timed_out and info.exit_code == -signal.SIGTERM
    assert dead(grandchild)
    assert time.monotonic() - start < 1.0 + GRACE


async def test_cancel_kills_the_tree_then_propagates(backend: str, strays: list[int]) -> None:
    sink = RecordingSink()
    finished = False

    async def job() -> None:
        nonlocal finished
        await run(py(TREE, "ignore-term"), sink)
        finished = True

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job)
            await sink.wait_for(lambda: sink.grandchild() is not None)
            grandchild = sink.grandchild()
            assert grandchild is not None and sink.pid is not None
            strays.append(grandchild)
            start = time.monotonic()
            scope.cancel()
    assert scope.cancelled_caught and not finished
    assert time.monotonic() - start < GRACE + executor.KILL_WAIT
    assert sink.pid is not None and grandchild is not None
    assert dead(sink.pid) and dead(grandchild)
    assert not groups.group_alive(sink.pid)


async def test_leader_exit_ends_orphans_that_hold_the_pipes(strays: list[int]) -> None:
    for flags, least in ((["leader-exits"], 0.0), (["leader-exits", "ignore-term"], GRACE)):
        sink = RecordingSink()
        start = time.monotonic()
        info, _ = await run(py(TREE, *flags), sink)
        elapsed = time.monotonic() - start
        grandchild = sink.grandchild()
        assert grandchild is not None
        strays.append(grandchild)
        assert info.exit_code == 0 and not info.timed_out
        assert dead(grandchild)
        assert least <= elapsed < least + 2.0, flags


async def test_a_pipe_held_outside_the_group_is_abandoned(strays: list[int]) -> None:
    sink = RecordingSink()
    start = time.monotonic()
    info, _ = await run(py(TREE, "leader-exits", "setsid"), sink)
    grandchild = sink.grandchild()
    assert grandchild is not None
    strays.append(grandchild)
    assert info.exit_code == 0
    assert time.monotonic() - start < executor.DRAIN_IDLE + 2.0
    assert len(sink.warnings) == 1 and "stdout" in sink.warnings[0]
    assert not dead(grandchild)  # it left the job: not ours to kill


async def test_a_failing_sink_still_ends_the_group(strays: list[int]) -> None:
    class Broken(RecordingSink):
        async def lines(self, stream: str, ts: float, lines: list[str]) -> None:
            await super().lines(stream, ts, lines)
            if self.grandchild() is not None:
                raise RuntimeError("store is down")

    sink = Broken()
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="store is down"),
                            flatten_subgroups=True):
        await run(py(TREE), sink)
    grandchild = sink.grandchild()
    assert grandchild is not None and sink.pid is not None
    strays.append(grandchild)
    assert dead(sink.pid) and dead(grandchild)


# ---- timing, with the clock under test control (no real child) ----------------------

class FakeChild:
    def __init__(self, *, dies_on: int) -> None:
        self.pid = 999_999_999
        self.kill_at: float | None = None
        self.settled = False
        self.returncode: int | None = None
        self.exited = trio.Event()
        self.dies_on = dies_on

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.returncode is not None
        return self.returncode

    def close(self) -> None:
        pass


@pytest.mark.parametrize("dies_on", [signal.SIGTERM, signal.SIGKILL])
async def test_escalation_sigterm_then_sigkill_after_grace(
        dies_on: int, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    child = FakeChild(dies_on=dies_on)
    sent: list[tuple[int, float]] = []

    def signal_group(pgid: int, sig: int) -> None:
        sent.append((sig, trio.current_time()))
        if sig == child.dies_on:
            child.returncode = -sig
            child.exited.set()

    monkeypatch.setattr(groups, "signal_group", signal_group)
    monkeypatch.setattr(groups, "group_alive", lambda pgid: child.returncode is None)
    start = trio.current_time()
    await executor._end_group(child, 5.0)
    if dies_on == signal.SIGTERM:
        assert sent == [(signal.SIGTERM, start)]
    else:
        assert sent == [(signal.SIGTERM, start), (signal.SIGKILL, start + 5.0)]
    assert child.settled
    # Called again (say, from a `finally` after a cancel), it has nothing left to do.
    await executor._end_group(child, 5.0)
    assert len(sent) == (1 if dies_on == signal.SIGTERM else 2)


async def test_escalation_resumes_where_a_cancel_left_it(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    child = FakeChild(dies_on=signal.SIGKILL)
    sent: list[tuple[int, float]] = []

    def signal_group(pgid: int, sig: int) -> None:
        sent.append((sig, trio.current_time()))
        if sig == signal.SIGKILL:
            child.returncode = -sig
            child.exited.set()

    monkeypatch.setattr(groups, "signal_group", signal_group)
    monkeypatch.setattr(groups, "group_alive", lambda pgid: child.returncode is None)
    with trio.move_on_after(2.0):
        await executor._end_group(child, 5.0)
    assert not child.settled
    await executor._end_group(child, 5.0)  # SIGKILL still comes 5 s after the SIGTERM
    term_at = sent[0][1]
    assert sent == [(signal.SIGTERM, term_at), (signal.SIGKILL, term_at + 5.0)]


async def test_a_silent_pipe_is_abandoned_after_the_idle_time(
        autojump_clock: trio.testing.MockClock) -> None:
    r, w = os.pipe()
    try:
        got: list[str] = []

        async def handle(ts: float, lines: list[str]) -> None:
            got.extend(lines)

        os.set_blocking(r, False)
        pump = executor._Pumps([("stdout", r, handle)], 100)
        os.write(w, b"one\npartial")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            await trio.sleep(100)  # no drain yet: it waits as long as it takes
            assert not pump.done
            start = trio.current_time()
            pump.drain(0.5, start + 5.0)
        assert trio.current_time() - start == pytest.approx(0.5)
        assert pump.abandoned == ["stdout"] and pump.done and got == ["one", "partial"]
    finally:
        os.close(r)
        os.close(w)


def test_posix_spawn_is_used_on_glibc() -> None:
    if sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        assert spawning._posix_spawner() is not None


async def test_a_chatty_pipe_outside_the_group_is_cut_off_at_the_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    r, w = os.pipe()
    got: list[str] = []

    async def handle(ts: float, lines: list[str]) -> None:
        got.extend(lines)

    async def chatter() -> None:
        for i in range(1000):
            os.write(w, f"{i}\n".encode())
            await trio.sleep(0.1)

    os.set_blocking(r, False)
    pump = executor._Pumps([("stderr", r, handle)], 100)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chatter)
            nursery.start_soon(pump.run)
            await trio.sleep(1.05)
            start = trio.current_time()
            pump.drain(0.5, start + 5.0)
            await trio.sleep(10)
            assert pump.done and pump.abandoned == ["stderr"]
            nursery.cancel_scope.cancel()
        assert got == [str(i) for i in range(len(got))]  # in order, none lost
        assert 55 <= len(got) <= 62  # 6 s of a line every 0.1 s
    finally:
        os.close(r)
        os.close(w)



async def test_one_task_reads_every_pipe_none_starving_the_others() -> None:
    """A pipe that never runs dry (a thread keeps it full) does not keep the
    others from being read; a pipe at its end early leaves the others read to
    theirs; each pipe's lines whole and in order."""
    (flood_r, flood_w), (late_r, late_w), (closed_r, closed_w) = fds = [os.pipe() for _ in range(3)]
    got: dict[str, list[str]] = {"flood": [], "late": [], "closed": []}
    late_seen = trio.Event()
    stop = threading.Event()
    sent = 0

    def handler(name: str) -> executor._Handler:
        async def handle(ts: float, lines: list[str]) -> None:
            got[name].extend(lines)
            if name == "late":
                late_seen.set()
        return handle

    def flood() -> None:
        nonlocal sent
        try:
            while not stop.is_set():
                sent += os.write(flood_w, b"x" * 50 + b"\n")
        except BrokenPipeError:
            pass
        finally:
            os.close(flood_w)

    for r, _ in fds:
        os.set_blocking(r, False)
    pumps = executor._Pumps([("flood", flood_r, handler("flood")),
                             ("late", late_r, handler("late")),
                             ("closed", closed_r, handler("closed"))], 100)
    os.write(closed_w, b"only\nlast")
    os.close(closed_w)
    writer = threading.Thread(target=flood)
    try:
        writer.start()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pumps.run)
                await trio.sleep(0.05)
                os.write(late_w, b"late line\n")
                await late_seen.wait()  # never set if the flood starved the pipe
                assert writer.is_alive()
                stop.set()
                os.close(late_w)
        writer.join()
        assert pumps.done and pumps.abandoned == []
        assert got["late"] == ["late line"] and got["closed"] == ["only", "last"]
        assert got["flood"] == ["x" * 50] * (sent // 51)
    finally:
        stop.set()
        for fd in (flood_r, late_r, closed_r):  # a writer blocked on a full pipe gets EPIPE
            os.close(fd)
        if writer.is_alive():
            writer.join(5)
