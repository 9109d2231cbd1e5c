"""The logs dialect's hand-built log messages equal the generic JSON rendering."""

from __future__ import annotations

import json

import pytest

from jobserver.core import events as ev
from jobserver.core.ids import new_job_id
from jobserver.core.timefmt import iso_ms
from jobserver.dataplane.wire import encode_sse, encode_ws
from jobserver.dialects import SseEvent
from jobserver.dialects.logs import LogsRenderer, message

LINES = ["plain", "", 'quotes " and \\ backslash', "tab\tand\x01control\x7f",
         "unicode é ☃ 𝄞", "\ud800 lone surrogate", "</script>", "x" * 70_000]


@pytest.mark.parametrize("with_seq", [False, True])
def test_log_messages_match_the_generic_rendering(with_seq: bool) -> None:
    job_id = new_job_id()
    renderer = LogsRenderer(job_id, "job", with_seq=with_seq, running=True)
    events = ev.make_logs(job_id, 7, 1_700_000_000.123456, "stdout", LINES)
    events += ev.make_logs(job_id, 7 + len(LINES), 1_700_000_001.5, "stderr", LINES[:2])
    for event in events:
        [text] = renderer.render(event).messages
        payload = {"ts": iso_ms(event.ts), "stream": event.stream, "message": event.line}
        assert text == message("log", payload, event.seq if with_seq else None)
        assert json.loads(text)["payload"]["message"] == event.line


def test_make_logs_equals_the_constructor() -> None:
    job_id = new_job_id()
    made = ev.make_logs(job_id, 3, 2.5, "stderr", ["a", "b"])
    assert made == [ev.Log(job_id=job_id, seq=3, ts=2.5, stream="stderr", line="a"),
                    ev.Log(job_id=job_id, seq=4, ts=2.5, stream="stderr", line="b")]
    back = ev.from_data("log", job_id=job_id, seq=4, ts=2.5, data=ev.to_data(made[1]))
    assert back == made[1] and hash(back) == hash(made[1])
    with pytest.raises(AttributeError):
        made[0].line = "changed"  # type: ignore[misc]


def test_an_unpaired_surrogate_cannot_stop_the_publisher() -> None:
    frame = encode_ws(['{"message":"a\ud800b"}'])
    assert frame[2:].decode("utf-8") == '{"message":"a?b"}'
    chunk = encode_sse([SseEvent(data="x\udcff", id="1")])
    assert chunk.decode("utf-8") == "id: 1\ndata: x?\n\n"
