"""Idempotent submits: the `Idempotency-Key` header of the two create routes.

Rules: a key is 1..255 visible ASCII characters (a bad one is a 400 naming the
header). Keys are per user (the principal's `sub`) and stored with the job
they made, in the job's first write (one transaction: a job never exists
without its key, nor a key without its job). What a key is bound to is a
fingerprint: SHA-256 of the route and the body as canonical JSON (keys sorted,
no spaces), so the same JSON written another way is the same body. Within
`config.idempotency_ttl` of the first submit, the same key and fingerprint
give back the job it made (the route answers 200, `replayed`), another
fingerprint is a 422 `idempotency_key_reused`; after it, or once that job was
deleted, the key is free again. Requests with one key are serialised by a
per-(user, key) lock held until the new key is committed, so two at once make
one job. The locks live while someone holds or waits for them: bounded by the
requests in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import trio

from ..auth import Principal
from ..core.job import Job
from ..engine import Engine
from ..errors import BadRequest, ValidationFailed
from ..livejob import KeyClaim, Submission

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")


def parse_key(value: str | None) -> str | None:
    """The header's key, None when absent; BadRequest when it is not a valid key."""
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} visible ASCII characters "
                         "(no spaces)", code="invalid_idempotency_key", field=HEADER)
    return value


def fingerprint(route: str, body: Any) -> str:
    """SHA-256 of the route and the body as canonical JSON."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest()


def replay_headers(replayed: bool) -> dict[str, str]:
    """`Idempotent-Replayed: true` on an answer that gives back an earlier job."""
    return {REPLAYED_HEADER: "true"} if replayed else {}


@dataclass(eq=False, slots=True)
class _Slot:
    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0


class IdempotentSubmits:
    """One per server: submits that carry a key go through `submit`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._slots: dict[tuple[str, str], _Slot] = {}

    async def submit(self, principal: Principal, sub: Submission, *, key: str,
                     fingerprint: str) -> tuple[Job, bool]:
        """(the job, replayed): the job this key made, or a new one made with it."""
        name = (principal.sub, key)
        slot = self._slots.setdefault(name, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                return await self._submit_locked(principal, sub, key, fingerprint)
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[name]

    async def _submit_locked(self, principal: Principal, sub: Submission, key: str,
                             fingerprint: str) -> tuple[Job, bool]:
        engine = self._engine
        await engine.store.wait_flushed()
        found = await engine.store.find_key(principal.sub, key)
        if found is not None and found.expires_at > engine.now():
            if found.fingerprint != fingerprint:
                raise ValidationFailed(
                    f"this {HEADER} was used with another request (route or body) "
                    "in the last "
                    f"{engine.config.idempotency_ttl:g} s; send a new key for a new job",
                    code="idempotency_key_reused", field=HEADER)
            job = await engine.get_any(found.job_id)
            if job is not None:
                return job, True
        job = await engine.submit(principal, dataclasses.replace(
            sub, claim=KeyClaim(key, fingerprint)))
        # The next request with this key must find it: wait for the commit.
        await engine.store.wait_flushed()
        return job, False
