"""Shared request plumbing: the services handed to the app, auth, JSON bodies.

Rules: handlers reach the engine through `services()`, never a global; a
JSON body is read once, only by `json_body`, with the size cap, the media type
check and `core.jsontext`'s decoder, so bad input becomes 400/413/415 and never
a 500; tokens are read here and never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quart import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..auth import KeyRing, Principal, authorize, bearer
from ..config import Config
from ..core import jsontext
from ..core.ids import JobId, parse_job_id
from ..engine import Engine
from ..errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from ..metrics import Metrics
from ..supervisor import Supervisor
from .idempotency import IdempotentSubmits


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    engine: Engine
    supervisor: Supervisor
    keyring: KeyRing
    started_at: float
    submits: IdempotentSubmits
    metrics: Metrics


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


# What a JSON body may be labelled: application/json, or a +json type
# (application/problem+json, application/merge-patch+json ...), in UTF-8.
JSON_SUBTYPE_SUFFIX = "+json"


async def json_body() -> dict[str, Any]:
    """The request's JSON object. Every route that reads a JSON body reads it here:
    the size cap (413), the media type (415), UTF-8 (400) and `core.jsontext`'s
    decoding (400, naming the value to blame) are applied the same to all."""
    try:
        data = await request.get_data(as_text=False)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"body is larger than {services().config.max_body_bytes} bytes") from None
    # Checked after the (capped) read, so the connection stays usable for the next request.
    _require_json_media_type()
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not raw:
        raise BadRequest("a JSON body is required", code="empty_body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8", code="bad_encoding") from None
    try:
        body = jsontext.loads(text)
    except jsontext.JsonError as exc:
        if exc.kind == "number":
            raise BadRequest(exc.reason, code="number_too_large", field=exc.path) from None
        raise BadRequest(f"body is not valid JSON: {exc.reason}", code="bad_json",
                         field=exc.path) from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", code="bad_json")
    return body


def _require_json_media_type() -> None:
    mimetype = request.mimetype  # lower-cased, parameters split off
    if not mimetype:
        raise UnsupportedMediaType("send the body with Content-Type: application/json",
                                   code="missing_content_type")
    if mimetype != "application/json" and not (
            mimetype.startswith("application/") and mimetype.endswith(JSON_SUBTYPE_SUFFIX)):
        raise UnsupportedMediaType(f"the body must be application/json, not {mimetype}",
                                   code="unsupported_media_type")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"the body must be UTF-8, not {charset}",
                                   code="unsupported_media_type")
