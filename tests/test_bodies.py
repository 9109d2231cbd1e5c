"""What a job-creating body must be, the same wherever jobs are created: the
native POST /api/v1/jobs, the jobs dialect's POST /api/jobs, and a job's fd-3
`spawn` line. Media type: application/json (or +json) in UTF-8, else 415.
Numbers: an integer past 4,300 digits or a number past any float is a 400
naming it. Typed params: strict, a 422 naming the field as the client wrote it.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobserver.core.control import ControlError, parse
from jobserver.core.jsontext import MAX_INT_DIGITS

from .conftest import Harness

PACKAGE = Path(__file__).parent.parent / "jobserver"
# Where outside JSON may be decoded other than through core/jsontext.py: the
# store reads back what the server itself wrote; progress.py and examples/ run
# inside jobs, not in the server.
OWN_JSON = {"core/jsontext.py", "store/codec.py", "progress.py",
            "examples/video_pipeline.py"}
# Ways a Quart handler can read a body; only api/common.json_body may.
BODY_READERS = {"get_data", "get_json", "json", "form", "files", "values", "body", "data"}
HUGE = "9" * (MAX_INT_DIGITS + 1)
NATIVE = "/api/v1/jobs"
JOBS = "/api/jobs"
GOOD = {NATIVE: b'{"template": "echo", "params": {"message": "hi"}}',
        JOBS: b'{"preset": "sample-hello-youtube", "inputs": {"seconds": 1}}'}
CREATED = {NATIVE: 201, JOBS: 202}


async def post(h: Harness, path: str, body: bytes, content_type: str | None) -> httpx.Response:
    headers = h.auth(h.alice)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await h.client.post(path, content=body, headers=headers)


def error(r: httpx.Response, path: str, status: int) -> dict[str, Any]:
    """The error body, checked to be this route's kind (native JSON or RFC 7807)."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    if path == JOBS:
        assert r.headers["content-type"] == "application/problem+json"
        assert body["status"] == status
    else:
        assert r.headers["content-type"] == "application/json"
    return body


def code_of(body: dict[str, Any], path: str) -> str:
    code: str = body["code"] if path == NATIVE else body["type"].rsplit("/", 1)[-1]
    return code


def message_of(body: dict[str, Any], path: str) -> str:
    message: str = body["message"] if path == NATIVE else body["detail"]
    return message


@pytest.mark.parametrize("path", [NATIVE, JOBS])
@pytest.mark.parametrize(("content_type", "code"), [
    (None, "missing_content_type"),
    ("text/plain", "unsupported_media_type"),
    ("application/x-www-form-urlencoded", "unsupported_media_type"),
    ("application/json; charset=latin-1", "unsupported_media_type"),
])
async def test_a_body_not_labelled_json_is_415(harness: Harness, path: str,
                                               content_type: str | None, code: str) -> None:
    r = await post(harness, path, GOOD[path], content_type)
    body = error(r, path, 415)
    assert code_of(body, path) == code
    assert "application/json" in message_of(body, path) or "UTF-8" in message_of(body, path)
    # The connection stays usable: the refused body was read, not left on the wire.
    assert (await harness.client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("path", [NATIVE, JOBS])
@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON; charset=UTF-8", "application/merge-patch+json"])
async def test_json_media_types_are_taken(harness: Harness, path: str,
                                          content_type: str) -> None:
    r = await post(harness, path, GOOD[path], content_type)
    assert r.status_code == CREATED[path], r.text


async def test_the_specs_curl_example_is_taken(harness: Harness) -> None:
    # specs/dialect-jobs-sse.md: -H "Content-Type: application/json" -d '{...}'
    body = b"""{
    "preset": "sample-hello-youtube",
    "options": {
      "allowSkipUnavailable": true,
      "quality": "balanced"
    }
  }"""
    r = await post(harness, JOBS, body, "application/json")
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(("path", "body", "field"), [
    (NATIVE, f'{{"template": "exit", "params": {{"code": {HUGE}}}}}', "params.code"),
    (NATIVE, f'{{"template": "exit", "params": {{"code": -{HUGE}}}}}', "params.code"),
    (NATIVE, '{"template": "sleep", "params": {"seconds": 1e999}}', "params.seconds"),
    (NATIVE, f'{{"template": "echo", "extra": [1, {{"n": {HUGE}}}]}}', "extra[1].n"),
    (JOBS, f'{{"preset": "sample-hello-youtube", "inputs": {{"seconds": {HUGE}}}}}',
     "inputs.seconds"),
    (JOBS, '{"preset": "sample-hello-youtube", "options": {"pace": -1e400}}',
     "options.pace"),
    (JOBS, f'{{"brief": {{"topic": "t", "n": {HUGE}}}}}', "brief.n"),
])
async def test_a_number_too_large_is_a_400_naming_it(harness: Harness, path: str, body: str,
                                                     field: str) -> None:
    r = await post(harness, path, body.encode(), "application/json")
    found = error(r, path, 400)
    assert found["field"] == field
    assert code_of(found, path) == "number_too_large"
    assert message_of(found, path).startswith(field)


async def test_an_integer_at_the_limit_is_only_checked_against_the_param(
        harness: Harness) -> None:
    at_limit = "9" * MAX_INT_DIGITS
    r = await post(harness, NATIVE, f'{{"template": "exit", "params": {{"code": {at_limit}}}}}'
                   .encode(), "application/json")
    assert r.status_code == 201, r.text  # `exit` has no max: the job runs, and fails
    r = await post(harness, JOBS, f'{{"preset": "sample-hello-youtube", "inputs": '
                   f'{{"seconds": {at_limit}}}}}'.encode(), "application/json")
    assert error(r, JOBS, 422)["field"] == "inputs.seconds"  # over the param's max of 60


@pytest.mark.parametrize(("path", "body", "field", "words"), [
    (NATIVE, {"template": "exit", "params": {"code": "3"}}, "params.code",
     "must be an integer, got the string '3'"),
    (NATIVE, {"template": "exit", "params": {"code": True}}, "params.code",
     "must be an integer, got a boolean"),
    (NATIVE, {"template": "sleep", "params": {"seconds": "0.1"}}, "params.seconds",
     "must be a number"),
    (NATIVE, {"template": "echo", "params": {"message": 5}}, "params.message",
     "must be a string, got a number"),
    (JOBS, {"preset": "sample-hello-youtube", "inputs": {"seconds": "60"}}, "inputs.seconds",
     "must be an integer, got the string '60'"),
    (JOBS, {"preset": "sample-hello-youtube", "options": {"allowSkipUnavailable": "true"}},
     "options.allowSkipUnavailable", "must be a boolean"),
    (JOBS, {"preset": "sample-hello-youtube", "inputs": {"pace": "1"}}, "inputs.pace",
     "must be a number"),
])
async def test_typed_params_are_strict(harness: Harness, path: str, body: dict[str, Any],
                                       field: str, words: str) -> None:
    r = await post(harness, path, json.dumps(body).encode(), "application/json")
    found = error(r, path, 422)
    assert found["field"] == field
    assert code_of(found, path) == "invalid_param"
    assert words in message_of(found, path)


async def test_a_spawned_job_gets_the_same_rules(harness: Harness) -> None:
    parent = await harness.wait((await harness.submit("spawner_typed"))["id"])
    assert parent["status"] == "SUCCEEDED", parent
    warnings = " | ".join(parent["warnings"])
    assert "params.code: must be an integer, got the string '3'" in warnings, warnings
    assert f"is an integer of {MAX_INT_DIGITS + 1} digits" in warnings, warnings
    r = await harness.client.get(f"/api/v1/jobs/{parent['id']}/events",
                                 headers=harness.auth(harness.alice))
    spawned = [e for e in r.json()["events"] if e["type"] == "spawned"]
    assert [e["name"] for e in spawned] == ["typed"]  # only the well-typed one ran
    child = await harness.wait(spawned[0]["child_id"])
    assert child["params"] == {"code": 3} and child["exit_code"] == 3


def test_a_control_line_with_a_huge_integer_says_which_value() -> None:
    with pytest.raises(ControlError) as info:
        parse(f'{{"progress": {{"at": {HUGE}, "of": 10}}}}')
    assert "progress.at is an integer of" in info.value.reason
    assert len(info.value.reason) < 300


def test_outside_json_is_decoded_in_one_place() -> None:
    """Every request body goes through api/common.json_body, and every other JSON
    from outside (a control line, a client's message) through core.jsontext.loads."""
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            target = node.value
            if node.attr in ("loads", "load") and isinstance(target, ast.Name) and \
                    target.id == "json":
                assert name in OWN_JSON, f"{name}:{node.lineno} calls json.{node.attr}: " \
                    "decode outside JSON with core.jsontext.loads"
            if node.attr in BODY_READERS and isinstance(target, ast.Name) and \
                    target.id == "request":
                assert name == "api/common.py", f"{name}:{node.lineno} reads " \
                    f"request.{node.attr}: read JSON bodies with api.common.json_body"
