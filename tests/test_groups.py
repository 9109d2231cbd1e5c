"""groups.py: which processes recovery may end, against real processes.

Each case builds a real process group in its own session, then asks `claim`
and `end_orphans` about an identity that is, or only looks like, the job's.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from jobserver import groups

from .conftest import pid_alive

JOB = "0b7c6a55-0000-4000-8000-000000000001"


@contextmanager
def session(script: str, *, job_id: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`sh -c script` in a session of its own (leader = the shell); every process
    of the session is killed on the way out."""
    env = {"PATH": os.environ["PATH"]}
    if job_id is not None:
        env[groups.JOB_ID_ENV] = job_id
    proc = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.PIPE)
    try:
        yield proc
    finally:
        groups.signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def wait_output(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().decode().strip()


def test_identify_reads_the_start_time_and_the_boot_id() -> None:
    with session("echo ready; exec sleep 30") as proc:
        assert wait_output(proc) == "ready"
        me = groups.identify(proc.pid)
        assert me is not None and me.pgid == proc.pid and me.boot_id == groups.boot_id()
        assert groups.Identity.from_dict(me.to_dict()) == me


async def test_the_leader_with_its_start_time_is_ended_with_its_group() -> None:
    with session("sleep 30 & echo ready; wait") as proc:
        assert wait_output(proc) == "ready"
        me = groups.identify(proc.pid)
        assert me is not None
        held = groups.claim(me, JOB)
        assert len(held) == 2  # the shell and its sleep: the leader vouches for it
        groups.release(held)
        report = await groups.end_orphans(me, JOB, grace=1.0)
        assert report == (f"process group {proc.pid} (2 processes) ended with SIGTERM after "
                          "the server restarted")
        assert not groups.group_alive(proc.pid)


async def test_a_reused_pid_is_never_signalled() -> None:
    with session("echo ready; exec sleep 30") as proc:
        assert wait_output(proc) == "ready"
        me = groups.identify(proc.pid)
        assert me is not None
        earlier = dataclasses.replace(me, start_time=me.start_time - 1)  # another process
        assert groups.claim(earlier, JOB) == []
        other_boot = dataclasses.replace(me, boot_id="another-boot")
        assert groups.claim(other_boot, JOB) == []
        assert await groups.end_orphans(earlier, JOB, grace=1.0) == \
            f"process group {proc.pid} had already ended"
        assert await groups.end_orphans(other_boot, JOB, grace=1.0) == \
            f"process group {proc.pid} is gone: the machine restarted since the job started"
        assert pid_alive(proc.pid)


async def test_without_its_leader_a_member_must_name_the_job() -> None:
    script = "sleep 30 & echo $!"
    for job_id, claimed in ((JOB, True), (None, False)):
        with session(script, job_id=job_id) as proc:
            member = int(wait_output(proc))
            me = groups.identify(proc.pid)
            assert me is not None
            proc.wait()  # the leader is gone, its sleep left in the group
            assert groups.group_alive(me.pgid)
            held = groups.claim(me, JOB)
            assert [h.pid for h in held] == ([member] if claimed else [])
            groups.release(held)
            assert groups.claim(me, "another-job") == []
            report = await groups.end_orphans(me, JOB, grace=1.0)
            assert pid_alive(member) is not claimed, report  # `session` ends it if not
