"""The jobs dialect's SSE rendering, sans-IO: resuming anywhere gives exactly the rest."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId
from jobserver.core.job import Job, StepState, apply
from jobserver.dataplane.wire import encode_sse
from jobserver.dialects import Message, SseEvent, dumps
from jobserver.dialects.jobs import Cursor, JobsRenderer, log_data, resume

JID = JobId("6f1c1d3e-51f8-4c4b-9d1e-1f3c1a2b3c4d")
Make = Callable[[int], ev.Event]


def _history(end: str) -> list[ev.Event]:
    """A resumed attempt (preflight skipped) that errs, reports results, is bounced
    by a restart, runs again and ends `end`."""
    t = 1000.0
    last = "Succeeded" if end == "SUCCEEDED" else "Failed"
    makes: list[Make] = [
        lambda s: ev.Queued(job_id=JID, seq=s, ts=t, reason="retry"),
        lambda s: ev.Step(job_id=JID, seq=s, ts=t, name="preflight", status="Skipped"),
        lambda s: ev.Started(job_id=JID, seq=s, ts=t, pid=10, command="x", step="narration"),
        lambda s: ev.Log(job_id=JID, seq=s, ts=t, stream="stdout", line="hello"),
        lambda s: ev.Progress(job_id=JID, seq=s, ts=t, pct=41.6, step="narration"),
        lambda s: ev.Error(job_id=JID, seq=s, ts=t, code="Slow", message="slow voice",
                           remediation="wait", step="narration"),
        lambda s: ev.Result(job_id=JID, seq=s, ts=t, data={"output": {"n": 1}}),
        lambda s: ev.Step(job_id=JID, seq=s, ts=t, name="narration", status="Succeeded"),
        lambda s: ev.Bounce(job_id=JID, seq=s, ts=t, reason="restart"),
        lambda s: ev.Step(job_id=JID, seq=s, ts=t, name="preflight", status="Skipped"),
        lambda s: ev.Started(job_id=JID, seq=s, ts=t, pid=11, command="x", step="narration"),
        lambda s: ev.Progress(job_id=JID, seq=s, ts=t, pct=100),
        lambda s: ev.Warning(job_id=JID, seq=s, ts=t, message="odd line"),
        lambda s: ev.Step(job_id=JID, seq=s, ts=t, name="narration", status="Succeeded"),
        lambda s: ev.Started(job_id=JID, seq=s, ts=t, pid=12, command="x", step="mux"),
        lambda s: ev.Result(job_id=JID, seq=s, ts=t, data={"output": {"n": 2}, "message": "m"}),
        lambda s: ev.Error(job_id=JID, seq=s, ts=t, code="FFmpegNotFound", message="no ffmpeg"),
        lambda s: ev.Step(job_id=JID, seq=s, ts=t, name="mux", status=last),
        lambda s: ev.Finished(job_id=JID, seq=s, ts=t, status=end, outcome="x",
                              message="the end"),
    ]
    return [make(seq) for seq, make in enumerate(makes, 1)]


def _records(events: list[ev.Event]) -> list[Job]:
    """The job record after each seq (index 0: as submitted)."""
    job = Job(id=JID, owner=UserId("u"), template="default", kind="video",
              steps=tuple(StepState(name=n) for n in ("preflight", "narration", "mux")),
              resume_from=1, correlation_id="cid")
    out = [job]
    for event in events:
        job = apply(job, event)
        out.append(job)
    return out


def _render_all(renderer: JobsRenderer, events: list[ev.Event]) -> list[SseEvent]:
    out: list[Message] = []
    for event in events:
        rendered = renderer.render(event)
        out += rendered.messages
        if rendered.end:
            break
    return [_sse(m) for m in out]


def _sse(message: Message) -> SseEvent:
    assert isinstance(message, SseEvent)
    return message


def _data(message: SseEvent) -> dict[str, object]:
    data = json.loads(message.data)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("end", ["SUCCEEDED", "FAILED", "CANCELLED"])
def test_resuming_at_any_id_with_any_later_record_gives_exactly_the_rest(end: str) -> None:
    events = _history(end)
    records = _records(events)
    full = _render_all(JobsRenderer.for_job(records[0]), events)
    assert [m.event for m in full][:4] == ["job-status", "step-status", "job-status",
                                          "step-status"]
    assert [m.id for m in full][:4] == ["1", "2", "3.0", "3"]
    for cut, seen in enumerate(full):
        cursor = Cursor.parse(seen.id)
        for record in records[cursor.seq:]:  # the record a reconnect reads: as new or newer
            around = [e for e in events if e.seq > cursor.seq - 2][:2]
            renderer, first = resume(JobsRenderer.for_job(record), cursor, around)
            rest = [_sse(m) for m in first]
            rest += _render_all(renderer, [e for e in events if e.seq > cursor.seq])
            assert rest == full[cut + 1:], (cut, seen.id, record.last_seq)
    # From the start too.
    renderer, first = resume(JobsRenderer.for_job(records[-1]), Cursor.parse(None), [])
    assert first == () and _render_all(renderer, events) == full


def test_final_events() -> None:
    events = _history("FAILED")
    full = _render_all(JobsRenderer.for_job(_records(events)[0]), events)
    assert full[-1].event == "job-failed" and _data(full[-1]) == {
        "status": "Failed", "correlationId": "cid", "errorMessage": "no ffmpeg",
        "errors": [{"code": "Slow", "message": "slow voice", "remediation": "wait"},
                   {"code": "FFmpegNotFound", "message": "no ffmpeg", "remediation": None}]}
    # The later revision of the original client's events: a line, a warning.
    assert [(m.event, _data(m)) for m in full if m.event in ("job-log", "warning")] == [
        ("job-log", {"jobId": JID, "message": "hello", "stream": "stdout",
                     "severity": "info", "timestamp": "1970-01-01T00:16:40Z",
                     "correlationId": "cid"}),
        ("warning", {"message": "odd line", "correlationId": "cid"})]
    assert [_data(m)["step"] for m in full if m.event == "step-progress"] == ["narration",
                                                                            "video"]
    assert [_data(m)["status"] for m in full if m.event == "job-status"] == [
        "Queued", "Running", "Queued", "Running"]
    done = _render_all(JobsRenderer.for_job(_records(events)[0]), _history("SUCCEEDED"))[-1]
    assert done.event == "job-completed" and _data(done)["output"] == {"n": 2}
    cancelled = _render_all(JobsRenderer.for_job(_records(events)[0]), _history("CANCELLED"))
    final = _data(cancelled[-1])
    assert cancelled[-1].event == "job-failed" and final["status"] == "Canceled"
    assert isinstance(final["errors"], list) and final["errors"][-1] == {
        "code": "Canceled", "message": "the end", "remediation": "Retry the job to run it again."}
    assert final["errorMessage"] == "the end"
    # job-cancelled first (one seq, two events: `id: SEQ.0`, then `id: SEQ`).
    assert cancelled[-2].event == "job-cancelled" and _data(cancelled[-2]) == {
        "status": "Canceled", "jobId": JID, "message": "the end", "correlationId": "cid"}
    assert (cancelled[-2].id, cancelled[-1].id) == (f"{len(events)}.0", str(len(events)))


@pytest.mark.parametrize("correlation_id", [None, "cid", 'q"u\\ote ü'])
def test_job_log_data_is_built_by_hand_byte_for_byte(correlation_id: str | None) -> None:
    renderer = JobsRenderer(correlation_id=correlation_id, kind="video")
    lines = ["plain", "", 'quote " and \\ back', "tab\tcontrol\x01\x1f", "ünïcode ✓ 𝄞",
             "\ufffd replaced", "Warning: x", "ERROR y", "line </script>"]
    for seq, (ts, line) in enumerate(((t, x) for t in (0.0, 1.5, 1.5, 86400.999)
                                      for x in lines), 1):
        event = ev.Log(job_id=JID, seq=seq, ts=ts, stream="stderr" if seq % 2 else "stdout",
                       line=line)
        [message] = renderer.render(event).messages
        assert isinstance(message, SseEvent)
        assert (message.event, message.id) == ("job-log", str(seq))
        expected = {**log_data(JID, ts, event.stream, line), "correlationId": correlation_id}
        assert message.data == dumps(expected)


@pytest.mark.parametrize(("line", "severity"), [
    ("all good", "info"), ("ERROR: disk full", "error"), ("Warning: slow", "warning"),
    ("warn and error", "error")])
def test_job_log_severity_is_the_original_servers_guess(line: str, severity: str) -> None:
    assert log_data(JID, 0.0, "stderr", line)["severity"] == severity


def test_cursor_parsing_and_encoding() -> None:
    assert Cursor.parse("17") == Cursor(17, None)
    assert Cursor.parse(" 17.0 ") == Cursor(17, 1)
    for bad in (None, "", "x", "-1", "1.x", "1.2.3", "9" * 30, "١٢"):
        assert Cursor.parse(bad) == Cursor(0, None)
    data = {"step": "mux", "status": "Succeeded", "note": "ünï\ncode"}
    wire = encode_sse([SseEvent(data=json.dumps(data, ensure_ascii=False), event="step-status",
                                id="5.0")])
    lines = wire.decode().split("\n")
    assert lines[:2] == ["id: 5.0", "event: step-status"] and lines[3:] == ["", ""]
    assert json.loads(lines[2].removeprefix("data: ")) == data
