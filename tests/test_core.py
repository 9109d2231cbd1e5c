"""The sans-IO core: state table, templates, the job reducer, and its purity."""

from __future__ import annotations

import ast
import datetime as dt
import pathlib
import random
import sys

import pytest

from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId, parse_job_id
from jobserver.core.job import Job, apply
from jobserver.core.states import (
    TRANSITIONS,
    InvalidTransition,
    Move,
    Outcome,
    OutcomeKind,
    Status,
    transition,
)
from jobserver.core.templates import ParamError, TemplateError, parse_template
from jobserver.core.timefmt import iso_ms, iso_s

CORE = pathlib.Path(__file__).parent.parent / "jobserver" / "core"
FORBIDDEN = {"trio", "quart", "quart_trio", "hypercorn", "wsproto", "h11", "socket", "sqlite3",
             "jwt", "asyncio", "os", "subprocess"}


def test_core_imports_no_io() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_every_state_and_move_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Status)
    for status in Status:
        if status.terminal:
            assert TRANSITIONS[status] == {}
    assert transition(Status.QUEUED, Move.START) is Status.RUNNING
    assert transition(Status.RUNNING, Move.BOUNCE) is Status.QUEUED
    assert transition(Status.RUNNING, Move.CANCEL) is Status.CANCELLED


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED])
@pytest.mark.parametrize("move", list(Move))
def test_terminal_is_terminal(status: Status, move: Move) -> None:
    with pytest.raises(InvalidTransition):
        transition(status, move)


def test_outcome_maps_to_status() -> None:
    assert Outcome(kind=OutcomeKind.KILLED, exit_code=-9).status is Status.FAILED
    assert Outcome(kind=OutcomeKind.CANCELLED).status is Status.CANCELLED
    assert Outcome(kind=OutcomeKind.SUCCEEDED, exit_code=0).status is Status.SUCCEEDED


def _job() -> Job:
    return Job(id=JobId("j"), owner=UserId("u"), template="t")


def test_invalid_transition_leaves_job_untouched() -> None:
    job = _job()
    done = apply(job, ev.Finished(job_id=job.id, seq=1, ts=1.0, status="CANCELLED",
                                  outcome="cancelled", exit_code=-100, message="stop"))
    assert done.status is Status.CANCELLED
    with pytest.raises(InvalidTransition):
        apply(done, ev.Started(job_id=job.id, seq=2, ts=2.0, pid=1, command="x"))
    assert done.status is Status.CANCELLED and done.last_seq == 1


def test_reducer_walks_a_pipeline() -> None:
    job = _job()
    job = apply(job, ev.Started(job_id=job.id, seq=1, ts=10.0, pid=42, command="a", step="one"))
    job = apply(job, ev.Progress(job_id=job.id, seq=2, ts=11.0, pct=50.0, at=1, of=2, step="one"))
    job = apply(job, ev.Step(job_id=job.id, seq=3, ts=12.0, name="one", status="Succeeded"))
    job = apply(job, ev.Error(job_id=job.id, seq=4, ts=13.0, code="E", message="bad", step="two"))
    job = apply(job, ev.Finished(job_id=job.id, seq=5, ts=14.0, status="FAILED", outcome="failed",
                                 exit_code=3, message="exited with code 3", log_snippet="tail"))
    assert job.status is Status.FAILED and job.pid == 42 and job.started_at == 10.0
    one, two = job.steps
    assert (one.name, one.status, one.progress_pct, one.completed_at) == ("one", "Succeeded",
                                                                          100.0, 12.0)
    assert two.errors == ({"code": "E", "message": "bad"},)
    assert job.error_message == "exited with code 3" and job.log_snippet == "tail"
    assert Job.from_dict(job.to_dict()) == job


def test_bounce_returns_running_to_queued() -> None:
    job = apply(_job(), ev.Started(job_id=JobId("j"), seq=1, ts=1.0, pid=5, command="x"))
    job = apply(job, ev.Bounce(job_id=job.id, seq=2, ts=2.0, reason="shutdown"))
    assert job.status is Status.QUEUED and job.pid is None


def test_a_jobs_node_is_its_runs_until_it_is_queued_again() -> None:
    job = apply(_job(), ev.Started(job_id=JobId("j"), seq=1, ts=1.0, pid=5, command="x",
                                   node="n1"))
    assert job.node == "n1" and Job.from_dict(job.to_dict()) == job
    job = apply(job, ev.Bounce(job_id=job.id, seq=2, ts=2.0, reason="node n1 died"))
    assert job.node is None  # queued: no node runs it
    job = apply(job, ev.Started(job_id=job.id, seq=3, ts=3.0, pid=6, command="x", node="n2"))
    job = apply(job, ev.Finished(job_id=job.id, seq=4, ts=4.0, status="FAILED", outcome="lost",
                                 message="node n2 died while running it"))
    assert job.node == "n2"  # the node that ran it, whoever recorded its end
    assert apply(_job(), ev.Started(job_id=job.id, seq=1, ts=1.0, pid=5,
                                    command="x")).node is None  # a single node's


def test_event_data_round_trip() -> None:
    for cls in ev.EVENT_TYPES.values():
        sample = {
            ev.Started: {"pid": 1, "command": "c"}, ev.Log: {"stream": "stdout", "line": "l"},
            ev.Progress: {"pct": 1.0}, ev.Step: {"name": "s", "status": "Running"},
            ev.Spawned: {"child_id": "c", "template": "t"}, ev.Result: {"data": {"a": 1}},
            ev.Error: {"code": "c", "message": "m"}, ev.Warning: {"message": "w"},
            ev.Bounce: {"reason": "r"}, ev.Finished: {"status": "FAILED", "outcome": "failed"},
            ev.Truncated: {"lines": 2, "bytes": 9, "first_seq": 1, "last_seq": 2},
        }.get(cls, {})
        event = cls(job_id=JobId("j"), seq=3, ts=4.5, **sample)
        again = ev.from_data(cls.TYPE, job_id=JobId("j"), seq=3, ts=4.5, data=ev.to_data(event))
        assert again == event


TEMPLATE = {
    "argv": ["tool", "--count={n}", "{name}", "{{literal}}"],
    "env": {"MODE": "{mode}"},
    "params": {
        "n": {"type": "int", "min": 1, "max": 10, "default": 2},
        "name": {"type": "string", "required": True, "pattern": "[a-z]+"},
        "mode": {"type": "choice", "choices": ["fast", "slow"], "default": "fast"},
        "ratio": {"type": "float"},
        "flag": {"type": "bool"},
    },
}


def test_template_renders_params_as_argv_elements() -> None:
    t = parse_template("t", TEMPLATE)
    params = t.validate({"name": "abc", "n": 3})
    assert params == {"n": 3, "name": "abc", "mode": "fast"}
    assert t.plan(params) == [(None, ["tool", "--count=3", "abc", "{literal}"])]
    assert t.render_env(params) == {"MODE": "fast"}


def test_shell_text_stays_one_argument() -> None:
    t = parse_template("e", {"argv": ["echo", "{m}"], "params": {"m": {"type": "string"}}})
    assert t.plan({"m": "$(rm -rf /); `x` | y"}) == [(None, ["echo", "$(rm -rf /); `x` | y"])]


@pytest.mark.parametrize(("raw", "field"), [
    ({}, "params.name"),
    ({"name": "ABC"}, "params.name"),
    ({"name": "a", "n": 11}, "params.n"),
    ({"name": "a", "n": 1.5}, "params.n"),
    ({"name": "a", "n": True}, "params.n"),
    ({"name": "a", "mode": "medium"}, "params.mode"),
    ({"name": "a", "ratio": "x"}, "params.ratio"),
    ({"name": "a", "flag": "maybe"}, "params.flag"),
    ({"name": "a", "extra": 1}, "params.extra"),
    ({"name": 5}, "params.name"),
    # Strict types: a value is refused unless it is already the declared JSON type.
    ({"name": "a", "n": "3"}, "params.n"),
    ({"name": "a", "ratio": "0.5"}, "params.ratio"),
    ({"name": "a", "flag": "true"}, "params.flag"),
    ({"name": "a", "flag": 1}, "params.flag"),
    ({"name": "a", "mode": 1}, "params.mode"),
    ({"name": "a", "ratio": 10 ** 400}, "params.ratio"),
    ({"name": "a", "ratio": float("inf")}, "params.ratio"),
])
def test_bad_params_name_the_field(raw: dict[str, object], field: str) -> None:
    t = parse_template("t", TEMPLATE)
    with pytest.raises(ParamError) as info:
        t.validate(raw)
    assert info.value.field == field


def test_numbers_keep_their_json_meaning() -> None:
    t = parse_template("t", TEMPLATE)
    # JSON has one number type: 3.0 is the integer 3, and an int param is a float's too.
    assert t.validate({"name": "a", "n": 3.0, "ratio": 2}) == {
        "n": 3, "name": "a", "mode": "fast", "ratio": 2.0}
    with pytest.raises(ParamError, match=r"must be an integer, got the string '3'"):
        t.validate({"name": "a", "n": "3"})
    with pytest.raises(ParamError, match=r"params\.n: must be an integer, got 1\.5$"):
        t.validate({"name": "a", "n": 1.5})


def test_python_placeholder_is_the_servers_interpreter() -> None:
    t = parse_template("py", {"argv": ["{python}", "-c", "pass", "{n}"],
                              "env": {"PY": "{python}"}, "params": {"n": {"type": "int"}}})
    assert t.plan({"n": 1}) == [(None, [sys.executable, "-c", "pass", "1"])]
    assert t.render_env({}) == {"PY": sys.executable}
    with pytest.raises(TemplateError, match="reserved"):
        parse_template("p", {"argv": ["{python}"], "params": {"python": {"type": "string"}}})


@pytest.mark.parametrize("table", [
    {},
    {"argv": "echo hi"},
    {"argv": ["echo", "{undeclared}"]},
    {"argv": ["x"], "params": {"p": {"type": "blob"}}},
    {"argv": ["x"], "params": {"p": {"type": "choice"}}},
    {"argv": ["x"], "params": {"p": {"type": "int", "default": "no"}}},
])
def test_bad_templates_are_refused(table: dict[str, object]) -> None:
    with pytest.raises(TemplateError):
        parse_template("t", table)


def test_job_ids_are_parsed() -> None:
    assert parse_job_id("3FA85F64-5717-4562-B3FC-2C963F66AFA6") == \
        "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert parse_job_id("../etc/passwd") is None
    assert parse_job_id("x" * 1000) is None


def test_timestamps() -> None:
    assert iso_ms(1698402601.1234) == "2023-10-27T10:30:01.123Z"
    assert iso_s(1698402601.9) == "2023-10-27T10:30:01Z"
    assert iso_ms(None) is None


def test_iso_ms_matches_datetime() -> None:
    """iso_ms gives what datetime.fromtimestamp would, rounding included, in any
    order of seconds (it keeps the last second's text)."""
    rng = random.Random(7)
    stamps = [rng.uniform(0, 4e9) for _ in range(20_000)]
    stamps += [s + f for s in (1698402601, 0, 86399, 951782399)
               for f in (0.0, 0.0005, 0.0004995, 0.9994999, 0.9995, 0.9999995, 0.9999994)]
    stamps += [-0.5, -1.0000004, -86400.25]
    stamps += sorted(stamps[:500])  # runs of the same second, as events come
    for ts in stamps:
        moment = dt.datetime.fromtimestamp(ts, dt.UTC)
        expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        assert iso_ms(ts) == expected, ts
