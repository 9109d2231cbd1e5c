"""Jobs end to end: real subprocesses through a real server."""

from __future__ import annotations

import json
import shutil
import signal

import trio

from .conftest import Harness, pid_alive


async def _logs(harness: Harness, job_id: str, query: str = "") -> str:
    r = await harness.client.get(f"/api/v1/jobs/{job_id}/logs{query}",
                                 headers=harness.auth(harness.admin))
    assert r.status_code == 200
    return r.text


async def test_failure_carries_exit_code_message_and_snippet(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("exit", {"code": 3}))["id"])
    assert job["status"] == "FAILED" and job["exit_code"] == 3 and job["outcome"] == "failed"
    assert job["error_message"] == "exited with code 3"
    assert job["log_snippet"] == "err line"  # stderr preferred over stdout
    assert await _logs(harness, job["id"], "?streams=1") in (
        "[stdout] out line\n[stderr] err line\n", "[stderr] err line\n[stdout] out line\n")


async def test_killed_by_signal_has_negative_exit_code(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("selfkill"))["id"])
    assert job["status"] == "FAILED" and job["exit_code"] == -signal.SIGKILL
    assert job["outcome"] == "killed" and "SIGKILL" in job["error_message"]


async def test_control_channel_progress_steps_result_warnings(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("control"))["id"])
    assert job["status"] == "SUCCEEDED"
    assert job["result"] == {"message": "all good", "answer": 42}
    assert job["result_message"] == "all good"
    assert job["progress"]["pct"] == 25.0 and job["progress"]["message"] == "quarter"
    assert [(s["name"], s["status"]) for s in job["steps"]] == [("prepare", "Succeeded")]
    assert len(job["warnings"]) == 1 and "json" in job["warnings"][0].lower()


async def test_progress_helper_for_shell_scripts(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("progress_cli"))["id"])
    assert job["status"] == "SUCCEEDED", job
    assert job["progress"]["at"] == 3 and job["progress"]["of"] == 10
    assert job["progress"]["pct"] == 30.0 and job["progress"]["message"] == "three of ten"


async def test_pipeline_runs_steps_in_order(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("pipeline"))["id"])
    assert job["status"] == "SUCCEEDED"
    assert [(s["name"], s["status"]) for s in job["steps"]] == [
        ("fetch", "Succeeded"), ("build", "Succeeded"), ("publish", "Succeeded")]
    assert await _logs(harness, job["id"]) == "fetch\nbuild\npublish\n"


async def test_failing_step_leaves_later_steps_pending(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("pipeline", {"fail_at": "build"}))["id"])
    assert job["status"] == "FAILED" and job["exit_code"] == 1
    assert [(s["name"], s["status"]) for s in job["steps"]] == [
        ("fetch", "Succeeded"), ("build", "Failed"), ("publish", "Pending")]


async def test_cancel_kills_the_whole_process_tree(harness: Harness) -> None:
    job = await harness.submit("tree")
    job_id = job["id"]
    with trio.fail_after(20):
        while "grandchild" not in (text := await _logs(harness, job_id)):
            await trio.sleep(0.05)
    grandchild = int(text.split("grandchild ")[1].split()[0])
    running = await harness.job(job_id)
    child = running["pid"]
    assert pid_alive(child) and pid_alive(grandchild)
    r = await harness.client.post(f"/api/v1/jobs/{job_id}/cancel",
                                  headers=harness.auth(harness.alice))
    assert r.status_code == 202
    done = await harness.wait(job_id)
    assert done["status"] == "CANCELLED" and done["exit_code"] == -100
    assert done["result_message"] == "Job cancelled by user request."
    assert not pid_alive(child) and not pid_alive(grandchild)


async def test_timeout_kills_and_fails(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("slow_timeout"))["id"])
    assert job["status"] == "FAILED" and job["outcome"] == "killed"
    assert "timed out" in job["error_message"]
    assert job["exit_code"] in (-signal.SIGTERM, -signal.SIGKILL)
    assert not pid_alive(job["pid"])


async def test_invalid_utf8_and_a_megabyte_line(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("binary"))["id"])
    assert job["status"] == "SUCCEEDED"
    lines = (await _logs(harness, job["id"])).split("\n")
    assert lines[0] == "bad \ufffd\ufffd bytes"
    assert lines[1].startswith("x" * 1000) and len(lines[1].encode()) < 1_048_576
    assert "truncated" in lines[1]
    assert lines[2] == "after"


async def test_hundred_thousand_lines_none_lost(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("chatty", {"lines": 100_000}))["id"],
                             timeout=60)
    assert job["status"] == "SUCCEEDED"
    text = await _logs(harness, job["id"])
    assert text == "".join(f"line {i}\n" for i in range(100_000))


async def test_environment_is_scrubbed(harness: Harness) -> None:
    job = await harness.wait((await harness.submit("env", {"who": "you"}))["id"])
    names = set(json.loads((await _logs(harness, job["id"])).strip()))
    assert {"GREETING", "JOBSERVER_JOB_ID", "JOBSERVER_CONTROL_FD", "PATH"} <= names
    assert not {n for n in names if "TOKEN" in n or "SECRET" in n or n.startswith("PYTEST")}


async def test_slots_queue_fifo_and_cancel_queued(harness: Harness) -> None:
    # Two slots: the third job waits QUEUED until one frees, and can be cancelled there.
    first = await harness.submit("sleep", {"seconds": 30})
    second = await harness.submit("sleep", {"seconds": 30})
    third = await harness.submit("echo", {"message": "third"})
    fourth = await harness.submit("echo", {"message": "fourth"})
    await harness.wait(first["id"], "RUNNING")
    await harness.wait(second["id"], "RUNNING")
    await trio.sleep(0.3)
    assert (await harness.job(third["id"]))["status"] == "QUEUED"
    headers = harness.auth(harness.alice)
    r = await harness.client.post(f"/api/v1/jobs/{third['id']}/cancel", headers=headers)
    assert r.status_code == 202 and r.json()["status"] == "CANCELLED"
    await harness.client.post(f"/api/v1/jobs/{first['id']}/cancel", headers=headers)
    done = await harness.wait(fourth["id"])
    assert done["status"] == "SUCCEEDED"
    assert (await harness.job(third["id"]))["pid"] is None
    await harness.client.post(f"/api/v1/jobs/{second['id']}/cancel", headers=headers)
    await harness.wait(second["id"])


async def test_a_job_can_spawn_jobs(harness: Harness) -> None:
    parent = await harness.wait((await harness.submit("spawner"))["id"])
    assert parent["status"] == "SUCCEEDED"
    assert any("nope" in w for w in parent["warnings"])  # an unknown template is refused
    r = await harness.client.get(f"/api/v1/jobs/{parent['id']}/events",
                                 headers=harness.auth(harness.alice))
    spawned = [e for e in r.json()["events"] if e["type"] == "spawned"]
    assert len(spawned) == 1 and spawned[0]["name"] == "kid"
    child = await harness.wait(spawned[0]["child_id"])
    assert child["parent_id"] == parent["id"] and child["owner"] == "alice"
    assert child["correlation_id"] == parent["correlation_id"]
    assert await _logs(harness, child["id"]) == "from parent\n"


async def test_directories_a_job_cannot_have_fail_the_job_not_the_server(
        harness: Harness) -> None:
    work = harness.data_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.write_text("in the way")  # the work dirs' parent, as a file
    try:
        job = await harness.wait((await harness.submit("exit", {"code": 0}))["id"])
        assert job["status"] == "FAILED" and job["outcome"] == "failed"
        assert job["error_message"].startswith(f"could not start: working directory {work}/")
    finally:
        work.unlink()
    job = await harness.wait((await harness.submit("exit", {"code": 0}))["id"])
    assert job["status"] == "SUCCEEDED" and job["pid"] is not None
    assert await harness.work_dir_gone(job["id"])
    assert (harness.data_dir / "output" / job["id"]).is_dir()


async def test_an_empty_work_dir_is_kept_for_the_next_run(harness: Harness) -> None:
    spares = harness.data_dir / "work" / ".spare"
    work_dirs = harness.server.supervisor.work_dirs
    first = await harness.wait((await harness.submit("echo", {"message": "one"}))["id"])
    with trio.fail_after(5):
        while work_dirs.removed < 1:  # its sweep is over
            await trio.sleep(0.01)
    assert not (harness.data_dir / "work" / first["id"]).exists()
    (kept,) = spares.iterdir()  # renamed to a spare, not removed
    inode = kept.stat().st_ino
    second = await harness.wait((await harness.submit("echo", {"message": "two"}))["id"])
    assert second["status"] == "SUCCEEDED" and await _logs(harness, second["id"]) == "two\n"
    assert await harness.work_dir_gone(second["id"])
    (again,) = spares.iterdir()  # the second run took the spare and left it again
    assert again.stat().st_ino == inode and again.name != kept.name
    assert work_dirs.reused == 1
