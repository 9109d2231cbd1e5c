"""The native REST API against a real server: auth, isolation, bad input, docs."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from jobserver.auth import LEEWAY_SECONDS, KeyRing

from .conftest import Harness


async def test_submit_get_list_and_logs(harness: Harness) -> None:
    job = await harness.submit("echo", {"message": "hello world"})
    assert job["status"] == "QUEUED" and job["owner"] == "alice" and job["template"] == "echo"
    assert job["params"] == {"message": "hello world"}
    done = await harness.wait(job["id"])
    assert done["status"] == "SUCCEEDED" and done["exit_code"] == 0
    assert done["pid"] > 0 and done["command"] == "echo 'hello world'"
    assert done["started_at"].endswith("Z") and done["completed_at"] >= done["started_at"]
    r = await harness.client.get(f"/api/v1/jobs/{job['id']}/logs",
                                 headers=harness.auth(harness.alice))
    assert r.status_code == 200 and r.text == "hello world\n"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    r = await harness.client.get("/api/v1/jobs", headers=harness.auth(harness.alice))
    assert [j["id"] for j in r.json()["jobs"]] == [job["id"]]


async def test_events_are_numbered_and_paged(harness: Harness) -> None:
    job = await harness.submit("chatty", {"lines": 30})
    await harness.wait(job["id"])
    headers = harness.auth(harness.alice)
    r = await harness.client.get(f"/api/v1/jobs/{job['id']}/events?limit=10", headers=headers)
    first = r.json()
    assert [e["seq"] for e in first["events"]] == list(range(1, 11))
    assert first["events"][0]["type"] == "queued" and first["next_after"] == 10
    seen = first["events"]
    after = first["next_after"]
    while after is not None:
        page = (await harness.client.get(
            f"/api/v1/jobs/{job['id']}/events?after={after}&limit=10", headers=headers)).json()
        seen += page["events"]
        after = page["next_after"]
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert [e["line"] for e in seen if e["type"] == "log"] == [f"line {i}" for i in range(30)]
    assert seen[-1]["type"] == "finished" and seen[-1]["status"] == "SUCCEEDED"


async def test_list_filters_and_cursor(harness: Harness) -> None:
    ids = [(await harness.submit("echo", {"message": str(i)}))["id"] for i in range(5)]
    bobs = await harness.submit("echo", {"message": "bob's"}, token=harness.bob)
    for job_id in [*ids, bobs["id"]]:
        await harness.wait(job_id)
    headers = harness.auth(harness.alice)
    seen: list[str] = []
    cursor = ""
    while True:
        page = (await harness.client.get(f"/api/v1/jobs?limit=2&cursor={cursor}",
                                         headers=headers)).json()
        seen += [j["id"] for j in page["jobs"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids))
    r = await harness.client.get("/api/v1/jobs?status=succeeded&template=echo",
                                 headers=harness.auth(harness.admin))
    assert len(r.json()["jobs"]) == 6
    r = await harness.client.get("/api/v1/jobs?owner=bob", headers=harness.auth(harness.admin))
    assert {j["owner"] for j in r.json()["jobs"]} == {"bob"}


async def test_a_job_is_listed_as_soon_as_it_is_submitted(harness: Harness) -> None:
    headers = harness.auth(harness.alice)
    for i in range(20):
        job = await harness.submit("sleep", {"seconds": 30})
        r = await harness.client.get("/api/v1/jobs?limit=1", headers=headers)
        assert [j["id"] for j in r.json()["jobs"]] == [job["id"]], f"submission {i}"
        await harness.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=headers)


async def test_users_never_see_each_others_jobs(harness: Harness) -> None:
    job = await harness.submit("sleep", {"seconds": 30}, token=harness.alice)
    bob = harness.auth(harness.bob)
    for method, path in [("GET", ""), ("POST", "/cancel"), ("DELETE", ""), ("GET", "/events"),
                         ("GET", "/logs")]:
        r = await harness.client.request(method, f"/api/v1/jobs/{job['id']}{path}", headers=bob)
        assert r.status_code == 404, (method, path)
        assert r.json()["code"] == "job_not_found"
    r = await harness.client.get("/api/v1/jobs?owner=alice", headers=bob)
    assert r.json()["jobs"] == []
    # The admin sees and controls it.
    r = await harness.client.post(f"/api/v1/jobs/{job['id']}/cancel",
                                  headers=harness.auth(harness.admin))
    assert r.status_code == 202
    done = await harness.wait(job["id"])
    assert done["status"] == "CANCELLED" and done["exit_code"] == -100


def _token(secret: bytes, **claims: object) -> str:
    now = int(time.time())
    body = {"sub": "alice", "role": "user", "iat": now, "exp": now + 60, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret,
                      algorithm="HS256", headers={"kid": "api-1"})


@pytest.mark.parametrize("case", ["none", "garbage", "expired", "no-exp", "other-key",
                                  "alg-none", "bad-role", "basic"])
async def test_bad_tokens_get_401(harness: Harness, case: str) -> None:
    secret = (harness.data_dir / "signing.key").read_bytes()
    tokens = {
        "garbage": "not.a.token",
        "expired": _token(secret, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        "no-exp": _token(secret, exp=None),
        "other-key": _token(b"x" * 32),
        "alg-none": jwt.encode({"sub": "alice", "role": "admin", "iat": int(time.time()),
                                "exp": int(time.time()) + 60}, None, algorithm="none"),
        "bad-role": _token(secret, role="root"),
    }
    headers = {}
    if case == "basic":
        headers = {"Authorization": "Basic YWxpY2U6eA=="}
    elif case != "none":
        headers = {"Authorization": f"Bearer {tokens[case]}"}
    r = await harness.client.get("/api/v1/jobs", headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] in ("missing_token", "unauthenticated", "token_expired")
    assert r.headers["www-authenticate"] == "Bearer"


async def test_token_cli_key_is_the_servers(harness: Harness) -> None:
    token = KeyRing.load_or_create(harness.data_dir).issue("carol", "user", ttl=60)
    r = await harness.client.get("/api/v1/jobs", headers=harness.auth(token))
    assert r.status_code == 200


async def test_a_token_has_the_leeway_the_readme_states(harness: Harness) -> None:
    """README: accepted up to LEEWAY_SECONDS past `exp` (or with `iat` that far ahead)."""
    keys, now = KeyRing.load_or_create(harness.data_dir), time.time()
    assert LEEWAY_SECONDS == 10
    cases = [(now - 61 - LEEWAY_SECONDS / 2, 200), (now - 61 - LEEWAY_SECONDS * 2, 401),
             (now + LEEWAY_SECONDS / 2, 200), (now + LEEWAY_SECONDS * 2, 401)]
    for issued, status in cases:  # each valid for 60 seconds from `issued`
        token = keys.issue("carol", "user", ttl=60, now=issued)
        r = await harness.client.get("/api/v1/jobs", headers=harness.auth(token))
        assert r.status_code == status, issued - now


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"not json", 400, "bad_json"),
    (b"\xff\xfe{}", 400, "bad_encoding"),
    (b"[1, 2]", 400, "bad_json"),
    (b"", 400, "empty_body"),
    (b'{"template": "nope"}', 422, "unknown_template"),
    (b'{"template": "echo"}', 422, "invalid_param"),
    (b'{"template": "echo", "params": {"message": 5}}', 422, "invalid_param"),
    (b'{"template": "echo", "params": []}', 422, "validation_failed"),
    (b'{"template": "echo", "command": ["ls"]}', 422, "validation_failed"),
    (b'{"template": "echo", "colour": "red"}', 422, "validation_failed"),
    (b'{"template": "admin_only"}', 422, "unknown_template"),
    (b'{"command": ["ls"]}', 403, "adhoc_forbidden"),
    (b'{"template": 7}', 422, "validation_failed"),
    (b"[" * 100000, 400, "bad_json"),
    # An unpaired surrogate could reach neither argv nor the wire (UTF-8).
    (b'{"template": "echo", "params": {"message": "a\\ud800b"}}', 400, "bad_json"),
])
async def test_bad_bodies(harness: Harness, body: bytes, status: int, code: str) -> None:
    r = await harness.client.post("/api/v1/jobs", content=body,
                                  headers={**harness.auth(harness.alice),
                                           "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


async def test_bad_param_names_the_field(harness: Harness) -> None:
    r = await harness.client.post("/api/v1/jobs", json={"template": "exit",
                                                        "params": {"code": "three"}},
                                  headers=harness.auth(harness.alice))
    assert r.status_code == 422 and r.json()["field"] == "params.code"


# The server answers 413 without reading the body; httpx then leaves its body
# generator unfinished, which Python reports as unraisable on the client side.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_oversized_body_gets_413(harness: Harness) -> None:
    body = b'{"template": "echo", "params": {"message": "' + b"x" * 2_000_000 + b'"}}'
    r = await harness.client.post("/api/v1/jobs", content=body,
                                  headers=harness.auth(harness.alice))
    assert r.status_code == 413 and r.json()["code"] in ("payload_too_large",
                                                         "request_entity_too_large")


async def test_adhoc_for_admins(harness: Harness) -> None:
    r = await harness.client.post("/api/v1/jobs", json={"command": ["echo", "a b", "$HOME"]},
                                  headers=harness.auth(harness.admin))
    assert r.status_code == 201
    job = await harness.wait(r.json()["id"])
    assert job["status"] == "SUCCEEDED" and job["argv"] == ["echo", "a b", "$HOME"]
    logs = await harness.client.get(f"/api/v1/jobs/{job['id']}/logs",
                                    headers=harness.auth(harness.admin))
    assert logs.text == "a b $HOME\n"


@pytest.mark.parametrize("job_id", ["nope", "../../etc", str(uuid.uuid4()), "1" * 500])
async def test_unknown_and_malformed_ids_are_404(harness: Harness, job_id: str) -> None:
    r = await harness.client.get(f"/api/v1/jobs/{job_id}", headers=harness.auth(harness.admin))
    # (the client folds ../ away, so that one never reaches the job route)
    assert r.status_code == 404 and r.json()["code"] in ("job_not_found", "not_found")


async def test_bad_query_values_get_422(harness: Harness) -> None:
    headers = harness.auth(harness.alice)
    for query in ("limit=0", "limit=x", "limit=100000", "status=DONE"):
        r = await harness.client.get(f"/api/v1/jobs?{query}", headers=headers)
        assert r.status_code == 422, query


async def test_delete_only_finished_jobs(harness: Harness) -> None:
    headers = harness.auth(harness.alice)
    running = await harness.submit("sleep", {"seconds": 30})
    r = await harness.client.delete(f"/api/v1/jobs/{running['id']}", headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "job_not_finished"
    await harness.client.post(f"/api/v1/jobs/{running['id']}/cancel", headers=headers)
    await harness.wait(running["id"])
    r = await harness.client.post(f"/api/v1/jobs/{running['id']}/cancel", headers=headers)
    assert r.status_code == 409
    r = await harness.client.delete(f"/api/v1/jobs/{running['id']}", headers=headers)
    assert r.status_code == 204
    r = await harness.client.get(f"/api/v1/jobs/{running['id']}", headers=headers)
    assert r.status_code == 404


async def test_templates_health_metrics_openapi(harness: Harness) -> None:
    r = await harness.client.get("/api/v1/templates", headers=harness.auth(harness.alice))
    names = {t["name"] for t in r.json()["templates"]}
    assert "echo" in names and "admin_only" not in names
    r = await harness.client.get("/api/v1/templates", headers=harness.auth(harness.admin))
    assert "admin_only" in {t["name"] for t in r.json()["templates"]}
    health = (await harness.client.get("/healthz")).json()
    assert health["status"] == "ok"
    also = (await harness.client.get("/api/v1/health")).json()
    assert also["status"] == "ok" and set(also) == set(health)
    metrics = (await harness.client.get("/metrics")).text
    assert "jobserver_jobs_running 0.0" in metrics and "jobserver_slots 2.0" in metrics
    doc = (await harness.client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/api/v1/jobs/{job_id}" in doc["paths"]
    page = await harness.client.get("/")
    assert page.status_code == 200 and "<title>jobserver</title>" in page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"


async def test_unknown_route_and_method_are_json(harness: Harness) -> None:
    r = await harness.client.get("/api/v1/nothing")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = await harness.client.put("/api/v1/jobs", headers=harness.auth(harness.alice))
    assert r.status_code == 405


async def test_logs_text_between_two_seqs(harness: Harness) -> None:
    job = await harness.submit("chatty", {"lines": 10})
    await harness.wait(job["id"])
    events = (await harness.client.get(f"/api/v1/jobs/{job['id']}/events",
                                       headers=harness.auth(harness.alice))).json()["events"]
    seqs = {e["line"]: e["seq"] for e in events if e["type"] == "log"}
    r = await harness.client.get(
        f"/api/v1/jobs/{job['id']}/logs",
        params={"after": seqs["line 2"], "until": seqs["line 5"], "streams": 1},
        headers=harness.auth(harness.alice))
    assert r.text == "[stdout] line 3\n[stdout] line 4\n[stdout] line 5\n"
    r = await harness.client.get(f"/api/v1/jobs/{job['id']}/logs", params={"until": "x"},
                                 headers=harness.auth(harness.alice))
    assert r.status_code == 422 and r.json()["field"] == "until"
    r = await harness.client.get(f"/api/v1/jobs/{job['id']}/logs", params={"stream": "bogus"},
                                 headers=harness.auth(harness.alice))
    assert r.status_code == 422 and r.json()["field"] == "stream"
    assert r.json()["code"] == "validation_failed" and "stdout" in r.json()["message"]
    r = await harness.client.get(f"/api/v1/jobs/{job['id']}/logs", params={"stream": "stderr"},
                                 headers=harness.auth(harness.alice))
    assert r.status_code == 200 and r.text == ""
