"""The live dialect's handshake errors, its progress tokens and where their key
comes from: every 422 / 403 / 404 cause on a real server, the key pair made once
(0600) or configured, the REST and command-line ways to a token."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from wsproto.events import BytesMessage

from jobserver.auth import PROGRESS_KEY_FILE, KeyRing, progress_key
from jobserver.config import load_config

from .conftest import Harness
from .live_helpers import authorize, connect, events_of, follow, progress_job, progress_token
from .test_dataplane_helpers import running_server


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, live_stream_retention=0.5) as harness:
        yield harness


@pytest.fixture
async def done(h: Harness) -> dict[str, Any]:
    """A finished job (the admin's) and a good token for it."""
    job = await progress_job(h, 1)
    await h.wait(job["id"])
    return {"id": job["id"], "token": await progress_token(h, job["id"])}


async def send(h: Harness, message: str | bytes) -> tuple[list[dict[str, Any]], int | None,
                                                          str | None]:
    """One packet on a fresh connection: what came back, the close code and reason."""
    with trio.fail_after(10):
        ws = await connect(h)
        try:
            if isinstance(message, bytes):
                await ws.stream.send_all(ws.ws.send(BytesMessage(data=message)))
            else:
                await ws.send_text(message)
            got = await ws.collect()
        finally:
            await ws.aclose()
    return got, ws.close_code, ws.close_reason


def check_error(got: list[dict[str, Any]], code: int | None, reason: str | None,
                status: int) -> str:
    types = {422: "unprocessable_entity", 403: "forbidden", 404: "not_found"}
    assert len(got) == 1, got
    packet = got[0]
    assert set(packet) == {"success", "type", "uid", "data"}
    assert packet["success"] is False and packet["type"] == "error"
    assert isinstance(packet["uid"], str) and packet["uid"]
    assert set(packet["data"]) == {"code", "type", "message"}
    assert packet["data"]["code"] == status and packet["data"]["type"] == types[status]
    assert code == 4000 + status and reason == types[status]
    message: str = packet["data"]["message"]
    return message


@pytest.mark.parametrize("packet", [
    "not json",
    "[1, 2]",
    json.dumps({"type": "hello", "data": {"job_uid": "x", "jwt": "y"}}),
    json.dumps({"data": {"job_uid": "x", "jwt": "y"}}),
    json.dumps({"type": "authorize"}),
    json.dumps({"type": "authorize", "data": "x"}),
    json.dumps({"type": "authorize", "data": {"jwt": "y"}}),
    json.dumps({"type": "authorize", "data": {"job_uid": "x"}}),
    json.dumps({"type": "authorize", "data": {"job_uid": 5, "jwt": "y"}}),
    json.dumps({"type": "authorize", "data": {"job_uid": "x", "jwt": ["y"]}}),
    b'{"type": "authorize"}',
], ids=["not-json", "not-object", "wrong-type", "no-type", "no-data", "data-not-object",
        "no-job-uid", "no-jwt", "job-uid-number", "jwt-list", "binary"])
async def test_422_malformed_authorize(h: Harness, packet: str | bytes) -> None:
    check_error(*await send(h, packet), 422)


def claims_for(job_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": job_id, "aud": "oseh-job-progress", "iss": "oseh", "iat": now,
              "exp": now + 600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def server_key(h: Harness) -> rsa.RSAPrivateKey:
    KeyRing.load_or_create(h.data_dir).issue_progress("x", ttl=60)  # the pair exists now
    key = serialization.load_pem_private_key(
        (h.data_dir / PROGRESS_KEY_FILE).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def sign(h: Harness, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, server_key(h), algorithm="RS256")


async def forbidden(h: Harness, job_id: str, token: str) -> str:
    return check_error(*await send(h, authorize(job_id, token)), 403)


async def test_403_bad_signature(h: Harness, done: dict[str, Any]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature" in await forbidden(h, done["id"], jwt.encode(
        claims_for(done["id"]), other, algorithm="RS256"))


async def test_403_tampered_claims(h: Harness, done: dict[str, Any]) -> None:
    head, _, sig = done["token"].split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims_for(str(uuid.uuid4()))).encode())
    await forbidden(h, done["id"], f"{head}.{body.decode().rstrip('=')}.{sig}")


async def test_403_expired(h: Harness, done: dict[str, Any]) -> None:
    past = int(time.time()) - 3600
    assert "expired" in await forbidden(h, done["id"], sign(h, claims_for(
        done["id"], iat=past - 60, exp=past)))


async def test_403_wrong_audience(h: Harness, done: dict[str, Any]) -> None:
    assert "audience" in await forbidden(h, done["id"], sign(h, claims_for(
        done["id"], aud="oseh-interactive-prompt")))


async def test_403_no_audience(h: Harness, done: dict[str, Any]) -> None:
    await forbidden(h, done["id"], sign(h, claims_for(done["id"], aud=None)))


async def test_403_wrong_issuer(h: Harness, done: dict[str, Any]) -> None:
    assert "issuer" in await forbidden(h, done["id"], sign(h, claims_for(done["id"],
                                                                          iss="someone")))


async def test_403_no_exp(h: Harness, done: dict[str, Any]) -> None:
    assert "exp" in await forbidden(h, done["id"], sign(h, claims_for(done["id"], exp=None)))


async def test_403_no_iat(h: Harness, done: dict[str, Any]) -> None:
    assert "iat" in await forbidden(h, done["id"], sign(h, claims_for(done["id"], iat=None)))


async def test_403_token_for_another_job(h: Harness, done: dict[str, Any]) -> None:
    other = await progress_job(h, 1)
    assert "another job" in await forbidden(h, done["id"], await progress_token(h, other["id"]))
    await h.wait(other["id"])


async def test_403_hs256_with_the_public_key_as_secret(h: Harness,
                                                       done: dict[str, Any]) -> None:
    """The classic confusion: an HS256 token keyed with the server's public key PEM."""
    public = server_key(h).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims_for(done["id"])).encode()).rstrip(b"=")
    mac = hmac.new(public, header + b"." + body, hashlib.sha256).digest()
    token = b".".join((header, body, base64.urlsafe_b64encode(mac).rstrip(b"="))).decode()
    assert "algorithm" in await forbidden(h, done["id"], token)


async def test_403_alg_none(h: Harness, done: dict[str, Any]) -> None:
    token = jwt.encode(claims_for(done["id"]), None, algorithm="none")
    await forbidden(h, done["id"], token)


@pytest.mark.parametrize("alg", ["RS512", "PS256"])
async def test_403_another_rsa_algorithm_with_the_right_key(h: Harness, done: dict[str, Any],
                                                            alg: str) -> None:
    token = jwt.encode(claims_for(done["id"]), server_key(h), algorithm=alg)
    assert "algorithm" in await forbidden(h, done["id"], token)


async def test_403_an_api_token(h: Harness, done: dict[str, Any]) -> None:
    """The server's own HS256 tokens are for the API, not for watching progress."""
    await forbidden(h, done["id"], h.admin)


async def test_a_progress_token_is_not_an_api_token(h: Harness, done: dict[str, Any]) -> None:
    r = await h.client.get(f"/api/v1/jobs/{done['id']}", headers=h.auth(done["token"]))
    assert r.status_code == 401


async def test_403_not_a_jwt(h: Harness, done: dict[str, Any]) -> None:
    await forbidden(h, done["id"], "not.a.token")


async def test_404_no_such_job(h: Harness) -> None:
    ghost = str(uuid.uuid4())
    check_error(*await send(h, authorize(ghost, sign(h, claims_for(ghost)))), 404)


async def test_404_not_a_job_id(h: Harness) -> None:
    check_error(*await send(h, authorize("not-a-uuid", sign(h, claims_for("not-a-uuid")))),
                404)


async def test_404_after_the_retention(h: Harness, done: dict[str, Any]) -> None:
    """`live_stream_retention` (0.5 s here, 30 minutes by default) after the last event,
    a finished job's stream is gone; a running job's never expires."""
    packets, code = await follow(h, done["id"], done["token"])
    assert code == 1000 and events_of(packets)[-1]["type"] == "succeeded"
    job = await h.job(done["id"])
    finished = time.time()
    await trio.sleep(max(0.0, 0.6 - (finished - _epoch(job["completed_at"]))))
    message = check_error(*await send(h, authorize(done["id"], done["token"])), 404)
    assert "expired" in message


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---- where the key comes from ----------------------------------------------


def test_key_pair_made_once_0600_and_reused(tmp_path: Path) -> None:
    first = KeyRing.load_or_create(tmp_path)
    assert not (tmp_path / PROGRESS_KEY_FILE).exists(), "made on first use, not at start"
    token, _ = first.issue_progress("job-1", ttl=60)
    path = tmp_path / PROGRESS_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    again = KeyRing.load_or_create(tmp_path)
    assert again.verify(token, purpose="progress").job == "job-1"
    assert path.read_bytes() == pem


def _pem(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize("fmt", ["pkcs8", "pkcs1", "escaped"])
def test_oseh_progress_jwt_secret(tmp_path: Path, fmt: str) -> None:
    """OSEH_PROGRESS_JWT_SECRET holds the PEM private key (PKCS#8 or PKCS#1; newlines
    may be written \\n): tokens signed with it, as the original's signer does, pass."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(key, serialization.PrivateFormat.TraditionalOpenSSL if fmt == "pkcs1"
               else serialization.PrivateFormat.PKCS8)
    if fmt == "escaped":
        pem = pem.replace("\n", "\\n")
    config = load_config({"data_dir": str(tmp_path)}, environ={"OSEH_PROGRESS_JWT_SECRET": pem})
    assert pem not in repr(config)
    ring = KeyRing.for_config(config)
    theirs = jwt.encode(claims_for("job-2"), key, algorithm="RS256")  # no kid, as theirs
    assert ring.verify(theirs, purpose="progress").job == "job-2"
    assert not (tmp_path / PROGRESS_KEY_FILE).exists()


def test_a_public_key_is_not_enough() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="private key"):
        progress_key(public.decode())


async def test_progress_token_command(data_dir: Path) -> None:
    async with running_server(data_dir) as h:
        job = await progress_job(h, 1)
        await h.wait(job["id"])
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "jobserver", "progress-token", job["id"], "--data-dir",
             str(h.data_dir)], capture_output=True, text=True, timeout=30, check=True))
        lines = out.stdout.strip().splitlines()
        assert lines[0] == f"job_uid: {job['id']}" and lines[1].startswith("expires_at: ")
        packets, code = await follow(h, job["id"], lines[-1])
    assert code == 1000 and events_of(packets)[-1]["type"] == "succeeded"
