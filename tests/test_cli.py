"""The `jobserver` command line against a real server: each command, its output
for scripts (`--json`, TSV when piped), and its exit codes."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import jwt
import trio

from jobserver.auth import KeyRing

from .clirun import cli, cli_all, cli_env
from .conftest import Harness


def env_for(h: Harness, tmp_path: Path, token: str | None = None) -> dict[str, str]:
    return cli_env(h.url, token or h.alice, tmp_path / "home")


async def test_version_and_help(tmp_path: Path) -> None:
    env = cli_env(None, None, tmp_path)
    ran = await cli(env, "--version")
    assert ran.rc == 0 and ran.out.startswith("jobserver 0.")
    ran = await cli(env, "--help")
    for command in ("submit", "run", "ls", "show", "logs", "wait", "cancel", "retry", "rm",
                    "templates", "login", "token", "serve"):
        assert command in ran.out


async def test_submit_follow_puts_each_stream_on_its_own_and_wait_exits_with_the_job(
        harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    ran = await cli(env, "submit", "exit", "code=7", "-f", "--wait")
    assert ran.rc == 7
    assert ran.lines == ["out line"]  # stdout is the job's own; the id goes to stderr
    job_id = ran.err.split("submitted ")[1].split()[0]
    assert "err line" in ran.err.splitlines()
    job = await harness.job(job_id)
    assert job["params"] == {"code": 7} and job["status"] == "FAILED"
    # -f alone streams and exits 0, saying on stderr how the job ended badly;
    # --wait alone waits quietly.
    ran = await cli(env, "submit", "exit", "code=5", "-f")
    assert ran.rc == 0 and ran.lines == ["out line"]
    assert re.search(r"^[0-9a-f]{8} FAILED in .* \(exit 5\)", ran.err.splitlines()[-1])
    ran = await cli(env, "submit", "exit", "code=0", "--wait")
    assert ran.rc == 0 and len(ran.lines) == 1 and "SUCCEEDED" in ran.err


async def test_params_are_typed_by_the_template(harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    # "60" is a string for a string param, a number for a float one.
    ran = await cli(env, "submit", "echo", "message=60", "--json")
    assert ran.rc == 0 and json.loads(ran.out)["params"] == {"message": "60"}
    ran = await cli(env, "submit", "sleep", "seconds=0", "--json", "--wait")
    assert ran.rc == 0
    assert json.loads(ran.lines[-1])["params"] == {"seconds": 0.0}
    ran = await cli(env, "submit", "pipeline", "fail_at=build", "--wait")
    assert ran.rc == 1
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"message": "from the file", "x": 1}))
    ran = await cli(env, "submit", "echo", "--param-file", str(params), "-f")
    assert ran.rc == 2 and "bad param x" in ran.err  # the server names it
    params.write_text(json.dumps({"message": "from the file"}))
    ran = await cli(env, "submit", "echo", "--param-file", str(params), "-f")
    assert ran.rc == 0 and ran.lines == ["from the file"]
    ran = await cli(env, "submit", "echo", "--param-file", str(params), "message=word", "-f")
    assert ran.lines == ["word"]


async def test_bad_params_are_named_and_exit_2(harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    cases = {
        ("sleep", "seconds=soon"): "bad param seconds: 'soon' is not a number",
        ("exit", "code=1.5"): "bad param code: '1.5' is not an integer",
        ("sleep", "nap=1"): "bad param nap: template sleep has no such param",
        ("pipeline", "fail_at=never"): "bad param fail_at: 'never' is not one of none, fetch",
        ("sleep", "seconds=-1"): "bad param seconds: must be at least 0",  # the server's 422
        ("echo",): "bad param message: is required",
        ("echo", "message"): "write it as name=value",
    }
    runs = await cli_all(*[(env, ("submit", *words)) for words in cases])
    for (words, message), ran in zip(cases.items(), runs, strict=True):
        assert ran.rc == 2, (words, ran)
        assert ran.err.startswith("jobserver: ") and message in ran.err, (words, ran.err)
        assert len(ran.err.splitlines()) == 1 and ran.out == ""
    ran = await cli(env, "submit", "no-such-template")
    assert ran.rc == 66 and "template no-such-template not found" in ran.err


async def test_errors_are_one_line_with_their_exit_codes(harness: Harness,
                                                         tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    home = tmp_path / "home"
    keys = KeyRing.load_or_create(harness.data_dir)
    expired = keys.issue("alice", "user", ttl=1, now=time.time() - 3600)
    foreign = jwt.encode({"sub": "alice", "iat": int(time.time()),
                          "exp": int(time.time()) + 60}, "another key" * 4, algorithm="HS256")
    cases = [
        (cli_env(closed_url, harness.alice, home), 69,
         f"cannot reach the server at {closed_url}"),
        (cli_env(harness.url, None, home), 77, "no token"),
        (cli_env(harness.url, expired, home), 77, "was expired"),
        (cli_env(harness.url, foreign, home), 77, "was refused"),
    ]
    runs = await cli_all(*[(env, ("ls",)) for env, _, _ in cases])
    for (_, rc, message), ran in zip(cases, runs, strict=True):
        assert ran.rc == rc and message in ran.err, ran
        assert len(ran.err.splitlines()) == 1
        if rc == 77:
            assert "jobserver token --sub" in ran.err  # how to get one
    env = env_for(harness, tmp_path)
    commands = ("show", "logs", "wait", "cancel", "rm", "retry")
    for ran in await cli_all(*[(env, (command, "0123abcd")) for command in commands]):
        assert ran.rc == 66 and ran.err == "jobserver: job 0123abcd not found\n", ran
    bobs = await harness.submit("echo", {"message": "hi"}, token=harness.bob)
    ran = await cli(env, "show", bobs["id"])  # someone else's job is not found
    assert ran.rc == 66 and "not found" in ran.err
    ran = await cli(env, "run", "--", "true")  # ad-hoc is for admins
    assert ran.rc == 77 and "not allowed" in ran.err


async def test_ls_filters_pages_and_prints_plain_rows(harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    ok = [await harness.submit("echo", {"message": str(i)}) for i in range(3)]
    bad = await harness.submit("exit", {"code": 2})
    for job in (*ok, bad):
        await harness.wait(job["id"])
    await harness.submit("echo", {"message": "bob's"}, token=harness.bob)
    ran = await cli(env, "ls")
    rows = [line.split("\t") for line in ran.lines]
    assert [r[0] for r in rows] == [bad["id"], *[j["id"] for j in reversed(ok)]]
    assert rows[0][1:4] == ["FAILED", "exit", "alice"] and rows[0][6] == "2"
    assert rows[1][1] == "SUCCEEDED" and float(rows[1][5]) >= 0
    ran = await cli(env, "ls", "--status", "failed")
    assert [line.split("\t")[0] for line in ran.lines] == [bad["id"]]
    ran = await cli(env, "ls", "--template", "echo", "--json")
    assert [j["id"] for j in json.loads(ran.out)["jobs"]] == [j["id"] for j in reversed(ok)]
    ran = await cli(env, "ls", "--limit", "2")
    assert len(ran.lines) == 2 and "more: the same with --cursor " in ran.err
    cursor = ran.err.split("--cursor ")[1].split()[0]
    ran = await cli(env, "ls", "--limit", "2", "--cursor", cursor)
    assert [line.split("\t")[0] for line in ran.lines] == [ok[1]["id"], ok[0]["id"]]
    ran = await cli(env, "ls", "--limit", "1", "--all")
    assert len(ran.lines) == 4 and ran.err == ""
    admin = env_for(harness, tmp_path, harness.admin)
    ran = await cli(admin, "ls", "--owner", "bob")
    assert [line.split("\t")[3] for line in ran.lines] == ["bob"]
    ran = await cli(env, "ls", "--status", "sleepy")
    assert ran.rc == 2 and "status must be one of" in ran.err


async def test_short_ids_resolve_and_an_ambiguous_prefix_is_refused(
        harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    seen: dict[str, str] = {}
    while True:  # at most 17 jobs before two ids share a first hex digit
        job = await harness.submit("echo", {"message": "x"})
        if job["id"][0] in seen:
            break
        seen[job["id"][0]] = job["id"]
    ran = await cli(env, "show", job["id"][0])
    assert ran.rc == 2 and "ambiguous" in ran.err and job["id"] in ran.err
    ran = await cli(env, "show", job["id"][:8].upper(), "--json")
    assert ran.rc == 0 and json.loads(ran.out)["id"] == job["id"]


async def test_show_templates_and_the_json_of_each(harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    job = await harness.submit("control")
    await harness.wait(job["id"])
    ran = await cli(env, "show", job["id"][:10])
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in ran.lines)
    assert fields["id"] == job["id"] and fields["status"] == "SUCCEEDED"
    assert fields["progress"] == "1/4 25% quarter" and fields["exit_code"] == "0"
    assert '"answer": 42' in fields["result"] and fields["step prepare"] == "SUCCEEDED"
    assert fields["command"].startswith("python3 -c 'import json, os\\nfd = ")
    ran = await cli(env, "templates")
    rows = {line.split("\t")[0]: line.split("\t") for line in ran.lines}
    assert rows["echo"][1] == "message:string*"
    assert rows["pipeline"][1] == "fail_at:none|fetch|build|publish=none"
    assert "admin_only" not in rows  # alice may not run it
    ran = await cli(env, "templates", "--json")
    assert {t["name"] for t in json.loads(ran.out)} == set(rows)
    ran = await cli(env, "templates", "sample-hello-youtube")
    assert "seconds:int=20  (min 1, max 60)  Length of the video." in ran.out


async def test_logs_history_streams_tail_since_and_json(harness: Harness,
                                                        tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    admin = env_for(harness, tmp_path, harness.admin)
    script = "import sys\nfor i in range(6): print(i, file=[sys.stdout, sys.stderr][i % 2])"
    ran = await cli(admin, "run", "--wait", "--", "python3", "-c", script)
    job_id = ran.lines[0]
    ran = await cli(admin, "logs", job_id)
    assert ran.lines == ["0", "2", "4"] and ran.err.splitlines() == ["1", "3", "5"]
    ran = await cli(admin, "logs", job_id, "--stderr")
    assert ran.out == "" and ran.err.splitlines() == ["1", "3", "5"]
    ran = await cli(admin, "logs", job_id, "--stdout", "--tail", "2")
    assert ran.lines == ["2", "4"] and ran.err == ""
    ran = await cli(admin, "logs", job_id, "--json")
    events = [json.loads(line) for line in ran.lines]
    # The two pipes are read apart: each stream keeps its order.
    assert sorted(e["line"] for e in events) == [str(i) for i in range(6)]
    assert {e["stream"] for e in events if int(e["line"]) % 2} == {"stderr"}
    after = events[2]["seq"]
    ran = await cli(admin, "logs", job_id, "--since", str(after), "--json")
    assert [json.loads(line) for line in ran.lines] == events[3:]
    ran = await cli(admin, "logs", job_id, "--since", str(after))
    assert ran.out + ran.err == "".join(f"{e['line']}\n" for e in events[3:]
                                        if e["stream"] == "stdout") + \
        "".join(f"{e['line']}\n" for e in events[3:] if e["stream"] == "stderr")
    ran = await cli(admin, "logs", job_id, "-f", "--tail", "1", "--stdout")
    assert ran.rc == 0 and ran.lines == ["4"] and ran.err == ""  # it succeeded: no word
    ran = await cli(env, "submit", "exit", "code=3", "--wait")
    failed = ran.lines[0]
    ran = await cli(env, "logs", failed, "-f")  # the end said on stderr, after the lines
    assert ran.rc == 0 and ran.lines == ["out line"]
    assert ran.err.splitlines()[0] == "err line"
    assert re.fullmatch(rf"{failed[:8]} FAILED in \S+ \(exit 3\): .*3.*",
                        ran.err.splitlines()[-1]), ran.err
    ran = await cli(env, "logs", failed, "-f", "--json")  # stdout: the events alone
    assert ran.rc == 0
    assert sorted(json.loads(line)["line"] for line in ran.lines) == ["err line", "out line"]
    assert " FAILED in " in ran.err.splitlines()[-1]
    ran = await cli(env, "logs", job_id)  # alice: not hers
    assert ran.rc == 66


async def test_wait_cancel_retry_and_rm(harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    long = await harness.submit("sleep", {"seconds": 60})
    await harness.wait(long["id"], "RUNNING")
    ran = await cli(env, "wait", long["id"][:8], "--timeout", "0.3")
    assert ran.rc == 124 and "still not done" in ran.err
    async with trio.open_nursery() as nursery:
        waited: list[int] = []

        async def wait_for_it() -> None:
            waited.append((await cli(env, "wait", long["id"])).rc)

        nursery.start_soon(wait_for_it)
        await trio.sleep(0.5)
        ran = await cli(env, "cancel", long["id"][:8])
        assert ran.rc == 0 and ran.lines == [f"{long['id']} cancel requested (RUNNING)"]
    assert waited == [130]  # a cancelled job
    ran = await cli(env, "cancel", long["id"])
    assert ran.rc == 1 and "409" in ran.err
    failed = await harness.submit("exit", {"code": 3})
    await harness.wait(failed["id"])
    ran = await cli(env, "retry", failed["id"][:8], "--wait")
    assert ran.rc == 3
    again = await harness.job(ran.lines[0])
    assert again["retry_of"] == failed["id"] and again["attempt"] == 2
    ran = await cli(env, "rm", failed["id"], again["id"][:8])
    assert ran.rc == 0 and ran.lines == [f"{failed['id']} deleted", f"{again['id']} deleted"]
    ran = await cli(env, "show", failed["id"])
    assert ran.rc == 66
    done = await harness.submit("echo", {"message": "x"})
    await harness.wait(done["id"])
    ran = await cli(env, "wait", done["id"], "--json")
    assert ran.rc == 0 and json.loads(ran.out)["status"] == "SUCCEEDED"
    ran = await cli(env, "retry", done["id"])
    assert ran.rc == 1 and "only failed or cancelled jobs can be retried" in ran.err.lower()


async def test_cancel_of_a_queued_job_says_it_is_cancelled(
        harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    for _ in range(2):  # both slots taken
        await harness.wait((await harness.submit("sleep", {"seconds": 60}))["id"], "RUNNING")
    queued = await harness.submit("sleep", {"seconds": 60})
    ran = await cli(env, "cancel", queued["id"])
    assert ran.rc == 0 and ran.lines == [f"{queued['id']} CANCELLED"]


async def test_pin_and_unpin_keep_a_job_from_retention_and_let_it_go(
        harness: Harness, tmp_path: Path) -> None:
    env = env_for(harness, tmp_path)
    done = await harness.submit("echo", {"message": "keep me"})
    await harness.wait(done["id"])
    ran = await cli(env, "pin", done["id"][:8])
    assert ran.rc == 0 and ran.lines == [f"{done['id']} pinned"], ran
    assert (await harness.job(done["id"]))["pinned"] is True
    ran = await cli(env, "pin", done["id"], "--json")  # again: still pinned, no error
    assert ran.rc == 0 and json.loads(ran.out)["pinned"] is True
    ran = await cli(env, "unpin", done["id"])
    assert ran.rc == 0 and ran.lines == [f"{done['id']} unpinned"], ran
    assert (await harness.job(done["id"]))["pinned"] is False
    bobs = await harness.submit("echo", {"message": "his"}, token=harness.bob)
    unknown, unknown_unpin, others, bare = await cli_all(
        (env, ("pin", "0123abcd")), (env, ("unpin", "0123abcd")),
        (env, ("pin", bobs["id"])),  # someone else's job is not found
        (env, ("pin",)))
    for ran in (unknown, unknown_unpin):
        assert ran.rc == 66 and ran.err == "jobserver: job 0123abcd not found\n", ran
    assert others.rc == 66 and "not found" in others.err
    assert (await harness.job(bobs["id"], token=harness.bob))["pinned"] is False
    assert bare.rc == 2 and "ID" in bare.err


async def test_run_is_for_admins_and_exits_with_the_command(harness: Harness,
                                                            tmp_path: Path) -> None:
    env = env_for(harness, tmp_path, harness.admin)
    ran = await cli(env, "run", "-f", "--wait", "--", "sh", "-c", "echo $0; exit 4", "one arg")
    assert ran.rc == 4 and ran.lines == ["one arg"]
    ran = await cli(env, "run", "--wait", "--", "sh", "-c", "kill -TERM $$")
    assert ran.rc == 128 + 15
    ran = await cli(env, "run")
    assert ran.rc == 2 and "run needs a command" in ran.err


async def test_login_keeps_url_and_token_0600_and_env_overrides(harness: Harness,
                                                                tmp_path: Path) -> None:
    home = tmp_path / "home"
    bare = cli_env(None, None, home)
    ran = await cli(bare, "login", "--url", harness.url, stdin=b"not a token\n")
    assert ran.rc == 77 and not (home / "jobserver" / "config.toml").exists()
    assert ran.err.startswith("jobserver: the token from standard input was refused ("), ran.err
    bare_host = harness.url.removeprefix("http://")  # no scheme: http:// is assumed
    ran = await cli(bare, "login", "--url", bare_host, stdin=harness.alice.encode() + b"\n")
    assert ran.rc == 0 and "as alice (user)" in ran.out
    assert f"logged in to {harness.url} " in ran.out
    path = home / "jobserver" / "config.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert harness.alice in path.read_text()
    mine = await harness.submit("echo", {"message": "x"})
    ran = await cli(bare, "ls")
    assert ran.rc == 0 and ran.lines[0].split("\t")[0] == mine["id"]
    # The environment wins over the file.
    ran = await cli(cli_env(None, harness.bob, home), "ls")
    assert ran.rc == 0 and ran.out == ""
    ran = await cli(cli_env("http://127.0.0.1:9", None, home), "ls")
    assert ran.rc == 69 and "http://127.0.0.1:9" in ran.err


async def test_token_refuses_a_data_dir_without_a_key(tmp_path: Path) -> None:
    env = cli_env(None, None, tmp_path)
    empty = tmp_path / "empty"
    ran = await cli(env, "token", "--sub", "alice", "--data-dir", str(empty))
    assert ran.rc == 1 and "no signing key in" in ran.err and "--new-key" in ran.err
    assert not (empty / "signing.key").exists()
    ran = await cli(env, "token", "--sub", "alice", "--data-dir", str(empty), "--new-key")
    assert ran.rc == 0
    assert KeyRing.load_or_create(empty).verify(ran.out.strip()).sub == "alice"
    assert os.stat(empty / "signing.key").st_mode & 0o777 == 0o600
    # The defaults the README states: role user, valid 24 hours.
    claims = jwt.decode(ran.out.strip(), options={"verify_signature": False})
    assert claims["role"] == "user" and claims["exp"] - claims["iat"] == 24 * 3600
