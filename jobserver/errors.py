"""One error tree for everything a client can get wrong or ask for in vain.

    JobserverError                 (status_hint 500; never raised for client input)
    ├── BadRequest                 400  malformed body (not JSON, not UTF-8)
    │   └── ValidationFailed       422  well-formed but invalid; `field` names it
    ├── Unauthenticated            401  missing, malformed, expired or foreign token
    ├── Forbidden                  403  authenticated, but the role may not do this
    ├── NotFound                   404  no such thing, or not yours (ids don't leak)
    ├── Conflict                   409  not in a state that allows it
    ├── PayloadTooLarge            413
    ├── UnsupportedMediaType       415  a body that is not labelled application/json
    └── Unavailable                503  shutting down

Each carries a stable `code` and a human `message`; the wire format (native JSON,
RFC 7807 for the jobs dialect, close codes for WebSockets) is chosen in one
place per transport from `status_hint`.
"""

from __future__ import annotations


class JobserverError(Exception):
    status_hint = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field


class BadRequest(JobserverError):
    status_hint = 400
    code = "bad_request"


class ValidationFailed(BadRequest):
    status_hint = 422
    code = "validation_failed"


class Unauthenticated(JobserverError):
    status_hint = 401
    code = "unauthenticated"


class Forbidden(JobserverError):
    status_hint = 403
    code = "forbidden"


class NotFound(JobserverError):
    status_hint = 404
    code = "not_found"


class Conflict(JobserverError):
    status_hint = 409
    code = "conflict"


class PayloadTooLarge(JobserverError):
    status_hint = 413
    code = "payload_too_large"


class UnsupportedMediaType(JobserverError):
    status_hint = 415
    code = "unsupported_media_type"


class Unavailable(JobserverError):
    status_hint = 503
    code = "unavailable"
