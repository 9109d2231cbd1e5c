"""The jobs dialect's REST side (specs/dialect-jobs-sse.md) against a real server.

Presets run the bundled video pipeline for real (tests/templates.toml mirrors
the bundled presets, with FFmpeg looked up as `jobserver-test-ffmpeg`, which
is on PATH only where a test puts a stand-in).
"""

from __future__ import annotations

import os
import struct
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from jobserver.auth import KeyRing
from jobserver.server import Server, serve

from .conftest import Harness, make_config

PROBLEM_KEYS = {"type", "title", "status", "detail", "correlationId", "traceId"}
LEGACY_BODY: dict[str, Any] = {
    "brief": {"topic": "Trio nurseries", "audience": "Pythonistas", "goal": "Explain",
              "tone": "Friendly", "language": "en-US", "aspect": "Widescreen16x9"},
    "planSpec": {"targetDuration": "00:00:02", "pacing": "Conversational",
                 "density": "Balanced", "style": "Modern"},
    "voiceSpec": {"voiceName": "en-US-JennyNeural", "rate": 1.0, "pitch": 1.0, "pause": 1.0},
    "renderSpec": {"res": "1080p", "container": "avi", "videoBitrateK": 8000,
                   "audioBitrateK": 192, "fps": 5, "codec": "H264", "qualityLevel": 75,
                   "enableSceneCut": True},
}


# ---- helpers ---------------------------------------------------------------------

async def create(h: Harness, body: dict[str, Any], *, token: str | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await h.client.post("/api/jobs", json=body,
                            headers={**h.auth(token or h.alice), **(headers or {})})
    assert r.status_code == 202, r.text
    created: dict[str, Any] = r.json()
    return created


async def document(h: Harness, job_id: str, *, token: str | None = None) -> dict[str, Any]:
    r = await h.client.get(f"/api/jobs/{job_id}", headers=h.auth(token or h.alice))
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def finished(h: Harness, job_id: str, *, token: str | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            doc = await document(h, job_id, token=token)
            if doc["status"] in ("Succeeded", "Failed", "Canceled"):
                return doc
            await trio.sleep(0.02)


def assert_problem(r: httpx.Response, status: int, *, correlation: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert PROBLEM_KEYS <= set(body), body
    assert body["status"] == status and body["type"].startswith("https://")
    assert body["title"] and body["detail"] and len(body["traceId"]) >= 8
    assert body["correlationId"] == r.headers["X-Correlation-ID"]
    if correlation is not None:
        assert body["correlationId"] == correlation


def avi_summary(path: Path) -> dict[str, Any]:
    """Walk an AVI's RIFF chunks: its main header and what the movi list holds."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"AVI "
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    out: dict[str, Any] = {"chunks": {}}

    def walk(start: int, end: int) -> None:
        at = start
        while at + 8 <= end:
            fourcc, size = data[at:at + 4], struct.unpack_from("<I", data, at + 4)[0]
            if fourcc == b"LIST":
                walk(at + 12, at + 8 + size)
            else:
                out["chunks"][fourcc] = out["chunks"].get(fourcc, 0) + 1
                if fourcc == b"avih":
                    fields = struct.unpack_from("<10I", data, at + 8)
                    out["fps"] = 1_000_000 // fields[0]
                    out["frames"], out["width"], out["height"] = fields[4], fields[8], fields[9]
            at += 8 + size + (size & 1)
        assert at == end, "chunk sizes do not add up"

    walk(12, len(data))
    return out


def checked_video(output: dict[str, Any], name: str) -> Path:
    """The output's video file: it exists, with the size the job reported."""
    video = Path(output["videoPath"])
    assert video.name == name and video.stat().st_size == output["sizeBytes"] > 0
    return video


def all_files(*paths: str) -> bool:
    return all(Path(p).is_file() for p in paths)


def fake_ffmpeg(directory: Path) -> Path:
    """A stand-in `jobserver-test-ffmpeg`: writes a small file where it is told."""
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / "jobserver-test-ffmpeg"
    tool.write_text(f"#!{sys.executable}\nimport sys\n"
                    "open(sys.argv[-1], 'wb').write(b'\\0\\0\\0\\x18ftypisom' + b'x' * 4000)\n"
                    "print('frame=5', flush=True)\nprint('progress=end')\n")
    tool.chmod(0o755)
    return directory


@asynccontextmanager
async def server_with(nursery: trio.Nursery, data_dir: Path,
                      **overrides: Any) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    server: Server = await nursery.start(serve, make_config(data_dir, kill_grace=1.0,
                                                            **overrides))
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        yield server, client
    server.request_shutdown()


# ---- creating and reading --------------------------------------------------------

async def test_sample_preset_renders_a_real_video(harness: Harness) -> None:
    r = await harness.client.post(
        "/api/jobs", json={"preset": "sample-hello-youtube", "inputs": {},
                           "options": {"allowSkipUnavailable": True, "quality": "balanced"}},
        headers={**harness.auth(harness.alice), "X-Correlation-ID": "my-correlation-id"})
    assert r.status_code == 202 and r.headers["X-Correlation-ID"] == "my-correlation-id"
    created = r.json()
    assert created == {"jobId": created["jobId"], "correlationId": "my-correlation-id",
                       "status": "Queued", "stage": "preflight"}
    doc = await finished(harness, created["jobId"])
    assert doc["status"] == "Succeeded", doc
    assert doc["correlationId"] == "my-correlation-id" and doc["errors"] == []
    assert [s["name"] for s in doc["steps"]] == ["preflight", "narration", "broll",
                                                 "subtitles", "mux"]
    for step in doc["steps"]:
        assert step["status"] == "Succeeded" and step["progressPct"] == 100
        assert step["errors"] == [] and step["durationMs"] >= 0
        assert step["startedAt"].endswith("Z") and step["completedAt"] >= step["startedAt"]
    assert doc["createdUtc"] <= doc["startedUtc"] <= doc["endedUtc"]
    video = checked_video(doc["output"], "video.avi")
    assert video.is_relative_to(harness.data_dir.resolve())
    avi = avi_summary(video)
    assert (avi["width"], avi["height"], avi["fps"], avi["frames"]) == (160, 90, 5, 100)
    assert avi["chunks"][b"00db"] == 100 and avi["chunks"][b"01wb"] == 100
    assert avi["chunks"][b"idx1"] == 1
    assert (video.parent / "narration.wav").stat().st_size == 44 + 20 * 16000 * 2
    assert "Hello, YouTube!" in (video.parent / "subtitles.srt").read_text()
    # The J- form of the id is accepted too.
    assert (await document(harness, f"J-{created['jobId']}"))["jobId"] == created["jobId"]


async def test_correlation_id_is_generated_when_absent(harness: Harness) -> None:
    r = await harness.client.post("/api/jobs", json={"preset": "sample-hello-youtube",
                                                     "inputs": {"seconds": 1}},
                                  headers=harness.auth(harness.alice))
    assert r.status_code == 202
    cid = r.headers["X-Correlation-ID"]
    assert len(cid) >= 16 and r.json()["correlationId"] == cid
    doc = await finished(harness, r.json()["jobId"])
    assert doc["correlationId"] == cid
    # A request's own id is echoed on reads, whatever the job's is.
    r = await harness.client.get(f"/api/jobs/{doc['jobId']}",
                                 headers={**harness.auth(harness.alice),
                                          "X-Correlation-ID": "read-1"})
    assert r.headers["X-Correlation-ID"] == "read-1" and r.json()["correlationId"] == cid


async def test_high_quality_without_ffmpeg_fails_with_the_spec_error(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1}, "options": {"quality": "high"}})
    doc = await finished(harness, created["jobId"])
    error = {"code": "FFmpegNotFound", "message": "FFmpeg executable not found.",
             "remediation": "Install FFmpeg from Settings → Dependencies"}
    assert doc["status"] == "Failed" and doc["errors"] == [error]
    assert [s["status"] for s in doc["steps"]] == ["Succeeded"] * 4 + ["Failed"]
    assert doc["steps"][4]["errors"] == [error] and doc["output"] is None
    assert doc["stage"] == "mux"


async def test_allow_skip_unavailable_skips_the_step(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1},
                                     "options": {"quality": "high",
                                                 "allowSkipUnavailable": True}})
    doc = await finished(harness, created["jobId"])
    assert doc["status"] == "Succeeded" and doc["errors"] == []
    assert [s["status"] for s in doc["steps"]] == ["Succeeded"] * 4 + ["Skipped"]
    output = doc["output"]
    assert output["videoPath"] is None and output["skippedSteps"] == ["mux"]
    assert all_files(output["audioPath"], output["subtitlesPath"])


async def test_mp4_when_ffmpeg_is_installed(harness: Harness, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{fake_ffmpeg(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1}, "options": {"quality": "high"}})
    doc = await finished(harness, created["jobId"])
    assert doc["status"] == "Succeeded", doc
    checked_video(doc["output"], "video.mp4")


async def test_legacy_body_reaches_the_process_as_json(harness: Harness) -> None:
    created = await create(harness, LEGACY_BODY)
    doc = await finished(harness, created["jobId"])
    assert doc["status"] == "Succeeded", doc
    r = await harness.client.get(f"/api/v1/jobs/{created['jobId']}/logs",
                                 headers=harness.auth(harness.alice))
    log = r.text
    assert "topic: Trio nurseries" in log
    assert "legacy body: brief, planSpec, renderSpec, voiceSpec" in log
    assert "plan: 2 s at 5 fps, 160x90, quality fast" in log
    avi = avi_summary(Path(doc["output"]["videoPath"]))
    assert (avi["frames"], avi["fps"]) == (10, 5)
    native = (await harness.job(created["jobId"]))
    assert native["template"] == "render-legacy" and native["input"] == LEGACY_BODY
    # A preset and a legacy body at once is ambiguous: 422 naming the field.
    r = await harness.client.post("/api/jobs", json={**LEGACY_BODY, "preset": "default"},
                                  headers=harness.auth(harness.alice))
    assert r.status_code == 422 and r.json()["field"] == "preset"


async def test_legacy_body_on_stdin(nursery: trio.Nursery, data_dir: Path) -> None:
    async with server_with(nursery, data_dir, legacy_template="render-legacy-stdin",
                           anonymous_loopback=True) as (_, client):
        r = await client.post("/api/jobs", json=LEGACY_BODY)
        assert r.status_code == 202, r.text
        job_id = r.json()["jobId"]
        with trio.fail_after(20):
            while (await client.get(f"/api/jobs/{job_id}")).json()["status"] != "Succeeded":
                await trio.sleep(0.02)
        token = KeyRing.load_or_create(data_dir).issue("root", "admin")
        r = await client.get(f"/api/v1/jobs/{job_id}/logs",
                             headers={"Authorization": f"Bearer {token}"})
        assert "topic: Trio nurseries" in r.text and "legacy body: brief" in r.text


# ---- errors: RFC 7807 everywhere -----------------------------------------------

async def test_unauthenticated_is_a_401_problem(harness: Harness) -> None:
    r = await harness.client.post("/api/jobs", json={"preset": "default"},
                                  headers={"X-Correlation-ID": "no-token"})
    assert_problem(r, 401, correlation="no-token")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    for headers in ({"Authorization": "Bearer nonsense"}, {"Authorization": "Basic eA=="}):
        assert_problem(await harness.client.get(f"/api/jobs/{uuid.uuid4()}", headers=headers),
                       401)
    assert_problem(await harness.client.get(f"/api/jobs/{uuid.uuid4()}?token=bad"), 401)


async def test_missing_foreign_and_malformed_jobs_are_404(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1}}, token=harness.bob)
    for job_id in (str(uuid.uuid4()), created["jobId"], "J-nope", "12345"):
        for method, path in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry")):
            r = await harness.client.request(method, f"/api/jobs/{job_id}{path}",
                                             headers={**harness.auth(harness.alice),
                                                      "X-Correlation-ID": "c-404"})
            assert_problem(r, 404, correlation="c-404")
    # The owner and admins see it.
    await document(harness, created["jobId"], token=harness.bob)
    await finished(harness, created["jobId"], token=harness.admin)


@pytest.mark.parametrize(("body", "field"), [
    ({"preset": "no-such-preset"}, "preset"),
    ({"preset": 7}, "preset"),
    ({"preset": "sample-hello-youtube", "options": {"quality": "ultra"}}, "options.quality"),
    ({"preset": "sample-hello-youtube", "inputs": {"seconds": 999}}, "inputs.seconds"),
    ({"preset": "sample-hello-youtube", "inputs": {"colour": "red"}}, "inputs.colour"),
    ({"preset": "sample-hello-youtube", "inputs": []}, "inputs"),
    ({"brief": "a topic"}, "brief"),
    ({"brief": {"audience": "all"}}, "brief.topic"),
    ({"brief": {"topic": "x"}, "renderSpec": 3}, "renderSpec"),
])
async def test_invalid_bodies_are_422_problems(harness: Harness, body: dict[str, Any],
                                               field: str) -> None:
    r = await harness.client.post("/api/jobs", json=body, headers=harness.auth(harness.alice))
    assert_problem(r, 422)
    assert r.json()["field"] == field


async def test_malformed_bodies_are_400_problems(harness: Harness) -> None:
    headers = {**harness.auth(harness.alice), "Content-Type": "application/json"}
    for content in (b"{not json", b'{"preset": "\xff\xfe"}', b"[1, 2]", b""):
        assert_problem(await harness.client.post("/api/jobs", content=content,
                                                 headers=headers), 400)
    assert_problem(await harness.client.put("/api/jobs", headers=headers), 405)


async def test_finished_jobs_cannot_be_cancelled_and_only_failed_ones_retried(
        harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1}})
    job_id = created["jobId"]
    r = await harness.client.post(f"/api/jobs/{job_id}/retry",
                                  headers={**harness.auth(harness.alice),
                                           "X-Correlation-ID": "too-early"})
    assert_problem(r, 409, correlation="too-early")  # queued or running
    assert (await finished(harness, job_id))["status"] == "Succeeded"
    for path in ("cancel", "retry"):
        r = await harness.client.post(f"/api/jobs/{job_id}/{path}",
                                      headers=harness.auth(harness.alice))
        assert_problem(r, 409)


# ---- cancel and retry ------------------------------------------------------------

async def test_cancel_stops_the_job_and_removes_its_work_dir(harness: Harness) -> None:
    created = await create(harness, {"preset": "jobs-slow"},
                           headers={"X-Correlation-ID": "to-cancel"})
    job_id = created["jobId"]
    scratch = harness.data_dir / "work" / job_id / "scratch.tmp"
    with trio.fail_after(10):
        while not scratch.exists():
            await trio.sleep(0.02)
    r = await harness.client.post(f"/api/jobs/{job_id}/cancel",
                                  headers={**harness.auth(harness.alice),
                                           "X-Correlation-ID": "cancel-req"})
    assert r.status_code == 202 and r.headers["X-Correlation-ID"] == "cancel-req"
    assert r.json() == {"jobId": job_id, "message": "Job cancellation requested",
                        "currentStatus": "Running", "correlationId": "cancel-req"}
    doc = await finished(harness, job_id)
    assert doc["status"] == "Canceled" and doc["errors"][-1]["code"] == "Canceled"
    assert doc["steps"][0]["status"] == "Failed" and doc["steps"][1]["status"] == "Pending"
    assert await harness.work_dir_gone(job_id)


async def test_cancel_mid_step_leaves_no_partial_file(harness: Harness) -> None:
    created = await create(harness, {"preset": "default", "inputs": {"seconds": 4, "pace": 1}})
    job_id = created["jobId"]
    partial = harness.data_dir / "work" / job_id / "narration.wav.part"
    with trio.fail_after(20):
        while not partial.exists():
            await trio.sleep(0.02)
    r = await harness.client.post(f"/api/jobs/{job_id}/cancel", headers=harness.auth(
        harness.alice))
    assert r.status_code == 202
    assert (await finished(harness, job_id))["status"] == "Canceled"
    assert await harness.work_dir_gone(job_id)
    left = sorted(p.name for p in (harness.data_dir / "output" / job_id).glob("*"))
    assert not [name for name in left if name.endswith(".part")], left


async def test_cancel_a_queued_job(nursery: trio.Nursery, data_dir: Path) -> None:
    async with server_with(nursery, data_dir, slots=1, anonymous_loopback=True) as (_, client):
        first = (await client.post("/api/jobs", json={"preset": "jobs-slow"})).json()["jobId"]
        second = (await client.post("/api/jobs", json={"preset": "jobs-slow"})).json()["jobId"]
        r = await client.post(f"/api/jobs/{second}/cancel")
        assert r.status_code == 202 and r.json()["currentStatus"] == "Queued"
        assert (await client.get(f"/api/jobs/{second}")).json()["status"] == "Canceled"
        assert (await client.post(f"/api/jobs/{first}/cancel")).status_code == 202


async def test_retry_resumes_from_the_failed_step(harness: Harness, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    body = {**LEGACY_BODY, "renderSpec": {**LEGACY_BODY["renderSpec"], "container": "mp4"}}
    first = await create(harness, body, headers={"X-Correlation-ID": "attempt-1"})
    failed = await finished(harness, first["jobId"])
    assert failed["status"] == "Failed" and failed["errors"][0]["code"] == "FFmpegNotFound"
    # "Install FFmpeg", then retry: only mux runs again.
    monkeypatch.setenv("PATH", f"{fake_ffmpeg(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    r = await harness.client.post(f"/api/jobs/{first['jobId']}/retry?strategy=manual",
                                  headers={**harness.auth(harness.alice),
                                           "X-Correlation-ID": "attempt-2"})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["jobId"] == first["jobId"] and answer["currentStatus"] == "Failed"
    assert answer["currentStage"] == "mux" and answer["strategy"] == "manual"
    assert answer["correlationId"] == "attempt-2" and len(answer["suggestedActions"]) == 4
    assert answer["resumeFromStep"] == "mux" and answer["attempt"] == 2
    assert "resuming at step mux" in answer["message"]
    retried = await finished(harness, answer["newJobId"])
    assert retried["status"] == "Succeeded", retried
    assert retried["attempt"] == 2 and retried["retryOf"] == first["jobId"]
    assert retried["correlationId"] == "attempt-2"
    assert [s["status"] for s in retried["steps"]] == ["Skipped"] * 4 + ["Succeeded"]
    checked_video(retried["output"], "video.mp4")
    native = await harness.job(answer["newJobId"])
    assert native["input"] == body and native["resume_from"] == 4
    # The original is untouched, and a retry of the retry is attempt 3.
    assert (await document(harness, first["jobId"]))["status"] == "Failed"
    # strategy=restart runs every step again; an unknown strategy is a 422.
    r = await harness.client.post(f"/api/jobs/{first['jobId']}/retry?strategy=restart",
                                  headers=harness.auth(harness.alice))
    assert r.status_code == 202 and r.json()["resumeFromStep"] == "preflight"
    again = await finished(harness, r.json()["newJobId"])
    assert [s["status"] for s in again["steps"]] == ["Succeeded"] * 5
    r = await harness.client.post(f"/api/jobs/{first['jobId']}/retry?strategy=bogus",
                                  headers=harness.auth(harness.alice))
    assert r.status_code == 422 and r.json()["field"] == "strategy"
    assert r.headers["content-type"] == "application/problem+json"


async def test_retry_of_a_cancelled_job_by_an_admin_stays_the_owners(harness: Harness) -> None:
    created = await create(harness, {"preset": "jobs-slow"})
    job_id = created["jobId"]
    with trio.fail_after(10):
        while (await document(harness, job_id))["status"] != "Running":
            await trio.sleep(0.02)
    await harness.client.post(f"/api/jobs/{job_id}/cancel", headers=harness.auth(harness.admin))
    cancelled = await finished(harness, job_id)
    assert cancelled["status"] == "Canceled"
    remediation = cancelled["errors"][-1]["remediation"]
    assert remediation == "Retry the job to run it again."
    r = await harness.client.post(f"/api/jobs/{job_id}/retry",
                                  headers=harness.auth(harness.admin))
    assert r.status_code == 202 and r.json()["strategy"] == "manual"
    # jobs-slow is not resumable: the retry starts from the top.
    new_id = r.json()["newJobId"]
    assert r.json()["resumeFromStep"] == "preflight"
    doc = await document(harness, new_id, token=harness.alice)
    assert doc["retryOf"] == job_id and doc["attempt"] == 2
    await harness.client.post(f"/api/jobs/{new_id}/cancel", headers=harness.auth(harness.alice))
    await finished(harness, new_id)


# ---- anonymous loopback ------------------------------------------------------------

async def test_anonymous_loopback_acts_as_the_configured_user(nursery: trio.Nursery,
                                                              data_dir: Path) -> None:
    async with server_with(nursery, data_dir, anonymous_loopback=True,
                           anonymous_user="local-tool") as (_, client):
        r = await client.post("/api/jobs", json={"preset": "sample-hello-youtube",
                                                 "inputs": {"seconds": 1}})
        assert r.status_code == 202, r.text
        job_id = r.json()["jobId"]
        keys = KeyRing.load_or_create(data_dir)
        r = await client.get(f"/api/v1/jobs/{job_id}",
                             headers={"Authorization": f"Bearer {keys.issue('root', 'admin')}"})
        assert r.json()["owner"] == "local-tool"
        # Another user's token is that user, not the anonymous one; a bad token is refused.
        alice = {"Authorization": f"Bearer {keys.issue('alice', 'user')}"}
        assert_problem(await client.get(f"/api/jobs/{job_id}", headers=alice), 404)
        assert_problem(await client.get(f"/api/jobs/{job_id}?token=bad"), 401)
        with trio.fail_after(20):
            while (await client.get(f"/api/jobs/{job_id}")).json()["status"] != "Succeeded":
                await trio.sleep(0.02)


async def test_anonymous_is_refused_by_default(harness: Harness) -> None:
    assert_problem(await harness.client.post("/api/jobs", json={"preset": "default"}), 401)
