"""Control lines into typed messages, and the `jobserver.progress` helper's lines."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from jobserver import progress
from jobserver.core import control
from jobserver.core.control import (
    ControlError,
    ErrorMsg,
    Progress,
    ResultMsg,
    SpawnMsg,
    StepMsg,
    StepStatus,
    parse,
)


def test_progress_as_at_of_with_message_and_step() -> None:
    assert parse('{"progress": {"at": 3, "of": 10}, "message": "encoding"}') == Progress(
        at=3, of=10, pct=30.0, message="encoding")
    assert parse('{"progress": {"at": 1, "of": 4, "message": "in", "step": "mux"}}') == Progress(
        at=1, of=4, pct=25.0, message="in", step="mux")
    assert parse('{"progress": {"at": 2, "of": 8}, "step": "mux"}') == Progress(
        at=2, of=8, pct=25.0, step="mux")
    assert parse('{"progress": {"at": 5}}') == Progress(at=5)  # a count without a total
    assert parse('{"progress": {"at": 0, "of": 0}}') == Progress(at=0, of=0)


def test_progress_as_a_percentage() -> None:
    assert parse('{"progress": 42}') == Progress(pct=42)
    assert parse('{"progress": 42.5, "message": "m"}') == Progress(pct=42.5, message="m")
    assert parse('{"progress": {"pct": 7}}') == Progress(pct=7)
    assert parse('{"progress": {"percent": 8}}') == Progress(pct=8)


@pytest.mark.parametrize(("word", "status"), [
    ("running", StepStatus.RUNNING), ("Running", StepStatus.RUNNING),
    ("SUCCEEDED", StepStatus.SUCCEEDED), ("failed", StepStatus.FAILED),
    ("pending", StepStatus.PENDING), ("skipped", StepStatus.SKIPPED),
    ("started", StepStatus.RUNNING), ("done", StepStatus.SUCCEEDED),
])
def test_step_statuses(word: str, status: StepStatus) -> None:
    message = parse(json.dumps({"step": "mux", "status": word}))
    assert message == StepMsg(name="mux", status=status)
    assert isinstance(message, StepMsg) and message.status == status.value  # a str for events


def test_result_error_spawn() -> None:
    assert parse('{"result": {"message": "ok", "n": [1]}}') == ResultMsg(
        data={"message": "ok", "n": [1]})
    assert parse('{"error": {"code": "E1", "message": "broke", "remediation": "fix"}}') == \
        ErrorMsg(code="E1", message="broke", remediation="fix")
    assert parse('{"error": {"code": "E", "message": "m"}, "step": "s"}') == ErrorMsg(
        code="E", message="m", step="s")
    assert parse('{"error": "plain words"}') == ErrorMsg(code="error", message="plain words")
    assert parse('{"spawn": {"template": "thumb", "params": {"src": "a"}, "name": "t"}}') == \
        SpawnMsg(template="thumb", params={"src": "a"}, name="t")
    assert parse('{"spawn": {"template": "thumb"}}') == SpawnMsg(template="thumb")


def test_unknown_keys_are_ignored() -> None:
    assert parse('{"progress": 1, "ts": 123, "extra": {}}') == Progress(pct=1)


@pytest.mark.parametrize(("line", "words"), [
    ("this is not json", "not valid JSON"),
    ('{"progress": 1', "not valid JSON"),
    ("[1, 2]", "JSON object, got an array"),
    ('"progress"', "JSON object, got a string"),
    ("{}", "needs one of progress, step"),
    ('{"hello": 1}', "needs one of"),
    ('{"result": {}, "error": "x"}', "result and error"),
    ('{"progress": "half"}', '"progress" must be a number'),
    ('{"progress": null}', "got null"),
    ('{"progress": true}', "must be a number"),
    ('{"progress": NaN}', "NaN is not allowed"),
    ('{"progress": -1}', "must not be negative"),
    ('{"progress": {"of": 10}}', 'needs "at"'),
    ('{"progress": {"at": 1, "of": "ten"}}', '"of" must be a number'),
    ('{"progress": 5, "message": 7}', '"message" must be a string'),
    ('{"step": "mux"}', "status"),
    ('{"step": "mux", "status": "dancing"}', "one of pending, running"),
    ('{"step": "", "status": "running"}', 'non-empty "step"'),
    ('{"result": [1]}', '"result" must be a JSON object'),
    ('{"error": {"message": "m"}}', 'non-empty "code"'),
    ('{"error": 5}', '"error" must be an object'),
    ('{"spawn": {"params": {}}}', 'non-empty "template"'),
    ('{"spawn": {"template": "t", "params": [1]}}', '"params" must be a JSON object'),
    ('{"spawn": "t"}', '"spawn" must be an object'),
    ("[" * 100_000, "nested too deeply"),
    ('{"result": {"message": "x\\ud800y"}}', "unpaired surrogate"),
    ('{"error": {"code": "E", "message": "\\udfff"}}', "unpaired surrogate"),
])
def test_invalid_lines_say_why(line: str, words: str) -> None:
    with pytest.raises(ControlError) as info:
        parse(line)
    assert words in info.value.reason
    assert str(info.value) == info.value.reason
    assert len(info.value.reason) < 300  # a readable warning, even for a huge line


def test_messages_are_frozen_and_slotted() -> None:
    for message in (Progress(pct=1), StepMsg(name="a", status=StepStatus.RUNNING),
                    ResultMsg(), ErrorMsg(code="c", message="m"), SpawnMsg(template="t")):
        assert not hasattr(message, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, dataclasses.fields(message)[0].name, None)


def test_core_control_is_pure() -> None:
    assert "trio" not in control.__dict__ and "os" not in control.__dict__


# ---- `python -m jobserver.progress`: the lines it writes -----------------------

@pytest.mark.parametrize(("argv", "expected"), [
    (["3", "10", "three of ten"],
     Progress(at=3, of=10, pct=30.0, message="three of ten")),
    (["3", "10"], Progress(at=3, of=10, pct=30.0)),
    (["1.5", "3", "half", "--step", "mux"], Progress(at=1.5, of=3, pct=50.0, message="half",
                                                     step="mux")),
    (["--step", "mux", "--status", "Running"], StepMsg(name="mux", status=StepStatus.RUNNING)),
    (["--result", '{"message": "done"}'], ResultMsg(data={"message": "done"})),
    (["--error", "E42", "it broke", "--remediation", "retry"],
     ErrorMsg(code="E42", message="it broke", remediation="retry")),
])
def test_progress_cli_writes_a_valid_control_line(argv: list[str], expected: object) -> None:
    assert parse(json.dumps(progress.message(argv))) == expected


@pytest.mark.parametrize("argv", [
    [], ["3"], ["--status", "running"], ["--step", "s", "--status", "dancing"],
    ["--result", "not json"], ["--result", "[1]"], ["x", "y"],
])
def test_progress_cli_refuses_bad_arguments(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        progress.message(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err


def test_progress_cli_writes_one_line_to_the_control_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    try:
        monkeypatch.setenv(progress.CONTROL_ENV, str(w))
        assert progress.main(["3", "10", "msg"]) == 0
        assert progress.main(["--step", "a", "--status", "succeeded"]) == 0
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            lines = f.read().decode().splitlines()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert [parse(line) for line in lines] == [
        Progress(at=3, of=10, pct=30.0, message="msg"),
        StepMsg(name="a", status=StepStatus.SUCCEEDED)]


def test_progress_cli_outside_a_job_notes_and_succeeds(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(progress.CONTROL_ENV, raising=False)
    assert progress.main(["1", "2"]) == 0
    assert "not set" in capsys.readouterr().err
    monkeypatch.setenv(progress.CONTROL_ENV, "not-a-number")
    assert progress.main(["1", "2"]) == 0
    assert "cannot report" in capsys.readouterr().err
