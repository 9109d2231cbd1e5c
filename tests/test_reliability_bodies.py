"""The bad-body table: every body a client can send to the two submit routes
gets a 400, 413 or 422 naming what is wrong (the field, where there is one),
never a 500, never a job.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Harness
from .test_dataplane_helpers import running_server

pytestmark = pytest.mark.reliability

MAX_BODY = 256 * 1024
DEEP = 100_000  # nesting levels, in a body well under MAX_BODY


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, max_body_bytes=MAX_BODY) as harness:
        yield harness


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# (name, body, status, field): on both routes unless the name says which.
COMMON: list[tuple[str, bytes, int, str | None]] = [
    ("empty", b"", 400, None),
    ("not JSON", b"template=echo", 400, None),
    ("truncated JSON", b'{"template": "echo", "params": {', 400, None),
    ("not UTF-8", b'{"template": "\xff\xfe"}', 400, None),
    ("UTF-16", '{"template": "echo"}'.encode("utf-16"), 400, None),
    ("an unpaired surrogate escape", b'{"template": "echo", "params": {"message": "\\ud800"}}',
     400, None),
    ("a JSON array", b"[1, 2, 3]", 400, None),
    ("a JSON string", b'"echo"', 400, None),
    ("null", b"null", 400, None),
    ("deeply nested arrays", b'{"params": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400, None),
    ("deeply nested objects", b'{"x":' * (DEEP // 4) + b"1" + b"}" * (DEEP // 4), 400, None),
    ("over the size limit", b'{"pad": "' + b"x" * (MAX_BODY + 1) + b'"}', 413, None),
]
NATIVE: list[tuple[str, bytes, int, str | None]] = [
    ("template a number", _json({"template": 3}), 422, "template"),
    ("params a list", _json({"template": "echo", "params": []}), 422, "params"),
    ("a command from a user", _json({"command": ["true"]}), 403, None),
    ("both template and command", _json({"template": "echo", "command": ["true"]}), 422,
     "template"),
    ("neither", _json({}), 422, "template"),
    ("an unknown field", _json({"template": "echo", "colour": "red"}), 422, "colour"),
    ("an unknown template", _json({"template": "no-such-thing"}), 422, "template"),
    ("a param of the wrong type", _json({"template": "echo", "params": {"message": {}}}), 422,
     "params.message"),
    ("a missing param", _json({"template": "echo", "params": {}}), 422, "params.message"),
    ("an unknown param", _json({"template": "echo", "params": {"message": "m", "x": 1}}),
     422, "params.x"),
    # Not JSON at all (RFC 8259 has no NaN or Infinity): a bad body.
    ("a float param NaN", b'{"template": "sleep", "params": {"seconds": NaN}}', 400, None),
    ("a float param Infinity", b'{"template": "sleep", "params": {"seconds": Infinity}}', 400,
     None),
    ("a float param not a number", _json({"template": "sleep", "params": {"seconds": "soon"}}),
     422,
     "params.seconds"),
    ("a float param a bool", _json({"template": "sleep", "params": {"seconds": True}}), 422,
     "params.seconds"),
]
# Ad-hoc commands are an admin's: their bodies are checked for an admin.
ADMIN: list[tuple[str, bytes, int, str | None]] = [
    ("command a string", _json({"command": "ls -l"}), 422, "command"),
    ("command of numbers", _json({"command": [1, 2]}), 422, "command"),
    ("command empty", _json({"command": []}), 422, "command"),
    ("command with a NUL", _json({"command": ["echo", "a\u0000b"]}), 422, "command"),
]
JOBS: list[tuple[str, bytes, int, str | None]] = [
    ("preset a number", _json({"preset": 3}), 422, "preset"),
    ("an unknown preset", _json({"preset": "no-such-preset"}), 422, "preset"),
    ("inputs a list", _json({"preset": "default", "inputs": [1]}), 422, "inputs"),
    ("options a number", _json({"preset": "default", "options": 5}), 422, "options"),
    ("brief a string", _json({"brief": "a video"}), 422, "brief"),
    ("brief without a topic", _json({"brief": {}}), 422, "brief.topic"),
    ("planSpec a list", _json({"brief": {"topic": "t"}, "planSpec": []}), 422, "planSpec"),
    ("a preset and a legacy body", _json({"preset": "default", "brief": {"topic": "t"}}), 422,
     "preset"),
]
HUGE_INT = b"1" + b"0" * 5000  # past Python's 4,300-digit int conversion limit
HUGE: list[tuple[str, str, bytes, str]] = [
    ("native", "/api/v1/jobs", b'{"template": "sleep", "params": {"seconds": ' + HUGE_INT +
     b"}}", "params.seconds"),
    ("jobs", "/api/jobs", b'{"preset": "default", "inputs": {"seconds": ' + HUGE_INT + b"}}",
     "inputs.seconds"),
]


async def _check(h: Harness, route: str, name: str, body: bytes, status: int,
                 field: str | None, *, token: str) -> None:
    r = await h.client.post(route, content=body, headers={
        **h.auth(token), "Content-Type": "application/json"})
    assert r.status_code == status, (route, name, r.status_code, r.text[:300])
    wanted_type = "application/problem+json" if route == "/api/jobs" else "application/json"
    assert r.headers["content-type"].startswith(wanted_type), (route, name)
    doc = r.json()
    if route == "/api/jobs":
        assert doc["status"] == status and doc["detail"], (name, doc)
    else:
        assert doc["code"] and doc["message"], (name, doc)
    if field is not None:
        assert doc.get("field") == field, (route, name, doc)


@pytest.mark.parametrize(("route", "cases"), [
    ("/api/v1/jobs", COMMON + NATIVE), ("/api/jobs", COMMON + JOBS)], ids=["native", "jobs"])
async def test_bad_bodies_are_refused_with_the_field_named(
        h: Harness, route: str, cases: list[tuple[str, bytes, int, str | None]]) -> None:
    for name, body, status, field in cases:
        await _check(h, route, name, body, status, field, token=h.alice)
    if route == "/api/v1/jobs":
        for name, body, status, field in ADMIN:
            await _check(h, route, name, body, status, field, token=h.admin)
    # Nothing was made of any of them; the server still takes a good one.
    r = await h.client.get("/api/v1/jobs", headers=h.auth(h.admin))
    assert r.json()["jobs"] == []
    good = await h.submit("echo", {"message": "still fine"})
    await h.wait(good["id"])


@pytest.mark.parametrize(("route", "body", "field"), [case[1:] for case in HUGE],
                         ids=[case[0] for case in HUGE])
async def test_a_huge_integer_is_refused_with_the_field_named(
        h: Harness, route: str, body: bytes, field: str) -> None:
    r = await h.client.post(route, content=body, headers={
        **h.auth(h.alice), "Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text[:300]
    assert field in r.text
