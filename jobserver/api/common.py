"""Shared request plumbing: the services handed to the app, auth, JSON bodies.

Rules: handlers reach the engine through `services()`, never a global; a
body is read once with the size cap and decoded here, so bad bytes become
400/413/422 and never a 500; tokens are read here and never logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from quart import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..auth import KeyRing, Principal, authorize, bearer
from ..config import Config
from ..core.ids import JobId, parse_job_id
from ..engine import Engine
from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    engine: Engine
    supervisor: Supervisor
    keyring: KeyRing
    started_at: float
    stream_stats: Any = None  # a callable returning the data plane's statistics


def services() -> Services:
    found: Services = current_app.extensions["jobserver"]
    return found


def bearer_token() -> str | None:
    return bearer(request.headers.get("Authorization", ""))


def authenticate(*, allow_query_token: bool = False) -> Principal:
    return authorize(services().keyring, bearer=bearer_token(),
                     query_token=request.args.get("token") if allow_query_token else None)


def job_id_arg(text: str) -> JobId:
    job_id = parse_job_id(text)
    if job_id is None:
        raise NotFound("job not found", code="job_not_found")
    return job_id


async def json_body() -> dict[str, Any]:
    try:
        data = await request.get_data(as_text=False)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"body is larger than {services().config.max_body_bytes} bytes") from None
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not raw:
        raise BadRequest("a JSON body is required", code="empty_body")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8", code="bad_encoding") from None
    except (json.JSONDecodeError, RecursionError):
        raise BadRequest("body is not valid JSON", code="bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", code="bad_json")
    if b"\\u" in raw:
        # An unpaired \udXXX escape parses to a lone surrogate, which UTF-8
        # (argv, the store, every stream) cannot carry.
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise BadRequest("body has an unpaired surrogate escape",
                             code="bad_json") from None
    return body
