"""The command line's HTTP client: the native API, short ids, a resumable stream.

Rules: every request goes through `Client.request`, the one place that turns a
transport failure or an error answer into a `CliError` with its exit code and
one line for a person. `follow` reads the job's SSE stream
(GET /api/v1/jobs/{id}/stream) and reconnects with `Last-Event-ID` = the last
seq it handed on, skipping any seq it has already seen, so a dropped connection
or a server restart neither loses nor repeats an event. The token is sent only
in the Authorization header and never printed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from httpx_sse import SSEError, aconnect_sse

from ..core.ids import parse_job_id
from .settings import Target

# Exit codes of the command line itself (a waited-for job exits with its own).
EXIT_FAILED = 1  # the server said no (a conflict, a server error)
EXIT_USAGE = 2  # a bad argument or param, as argparse exits for usage errors
EXIT_NOT_FOUND = 66  # sysexits EX_NOINPUT: no such job or template
EXIT_UNREACHABLE = 69  # sysexits EX_UNAVAILABLE: no server at the URL
EXIT_AUTH = 77  # sysexits EX_NOPERM: token missing, expired, refused, or not allowed

REQUEST_TIMEOUT = 30.0
# The server sends an SSE heartbeat every 15 s: a stream silent for longer than
# this is a dead connection, and is reopened from the last seq.
STREAM_READ_TIMEOUT = 45.0
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 2.0
# A followed stream keeps reconnecting this long (a server restart) before the
# command gives up as unreachable.
RECONNECT_FOR = 300.0
PREFIX_PAGE = 500  # the list API's largest page
END_TYPES = ("finished", "deleted")
TOKEN_HINT = ("get one with `jobserver token --sub NAME --data-dir DIR` on the server's "
              "machine (the server prints an admin token on its first start), then "
              "`jobserver login` or set JOBSERVER_TOKEN")
_HEX_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")


class CliError(Exception):
    """One line for a person and the exit code that goes with it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def error_from(response: httpx.Response, *, target: Target, job: str | None = None
               ) -> CliError:
    """The CliError for an error answer (native JSON or an RFC 7807 problem)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or body.get("detail") or response.reason_phrase)
    code = str(body.get("code") or body.get("type", "").rsplit("/", 1)[-1])
    field = body.get("field")
    status = response.status_code
    if status == 401:
        why = "expired" if code == "token_expired" else f"refused ({message})"
        return CliError(f"the token from {target.token_source} was {why}: {TOKEN_HINT}",
                        EXIT_AUTH)
    if status == 403:
        return CliError(f"not allowed: {message}", EXIT_AUTH)
    if status == 404:
        if job is not None and code in ("job_not_found", "not_found"):
            return CliError(f"job {job} not found", EXIT_NOT_FOUND)
        return CliError(message, EXIT_NOT_FOUND)
    if status in (400, 422):
        if isinstance(field, str) and field.startswith("params."):
            return CliError(f"bad param {field.removeprefix('params.')}: {message}",
                            EXIT_USAGE)
        return CliError(f"rejected: {message}", EXIT_USAGE)
    return CliError(f"the server answered {status}: {message}", EXIT_FAILED)


class Client:
    def __init__(self, target: Target, http: httpx.AsyncClient, *,
                 reconnect_for: float = RECONNECT_FOR,
                 on_reconnect: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.http = http
        self.reconnect_for = reconnect_for
        self.on_reconnect = on_reconnect

    @classmethod
    @asynccontextmanager
    async def open(cls, target: Target, **options: Any) -> AsyncIterator[Client]:
        async with httpx.AsyncClient(base_url=target.url, timeout=REQUEST_TIMEOUT) as http:
            yield cls(target, http, **options)

    def _headers(self) -> dict[str, str]:
        if not self.target.token:
            raise CliError(f"no token (looked in JOBSERVER_TOKEN and {self.target.token_source})"
                           f": {TOKEN_HINT}", EXIT_AUTH)
        return {"Authorization": f"Bearer {self.target.token}"}

    def unreachable(self, exc: Exception) -> CliError:
        reason = str(exc) or type(exc).__name__
        return CliError(f"cannot reach the server at {self.target.url} ({reason}); is it "
                        "running? (set JOBSERVER_URL or run `jobserver login --url URL`)",
                        EXIT_UNREACHABLE)

    async def request(self, method: str, path: str, *, body: Any = None,
                      query: Mapping[str, Any] | None = None, job: str | None = None
                      ) -> httpx.Response:
        headers = self._headers()
        params = {k: v for k, v in (query or {}).items() if v is not None}
        try:
            response = await self.http.request(method, path, json=body, params=params,
                                               headers=headers)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise error_from(response, target=self.target, job=job)
        return response

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        return (await self.request("GET", path, **kwargs)).json()

    # ---- the API, one method per call -------------------------------------

    async def templates(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await self.get_json("/api/v1/templates"))["templates"]
        return found

    async def submit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        job: dict[str, Any] = (await self.request("POST", "/api/v1/jobs", body=body)).json()
        return job

    async def list_page(self, *, status: str | None = None, template: str | None = None,
                        owner: str | None = None, limit: int = 50, cursor: str | None = None
                        ) -> tuple[list[dict[str, Any]], str | None]:
        page = await self.get_json("/api/v1/jobs", query={
            "status": status, "template": template, "owner": owner, "limit": limit,
            "cursor": cursor})
        return page["jobs"], page["next_cursor"]

    async def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get_json(f"/api/v1/jobs/{job_id}", job=job_id)
        return found

    async def cancel(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = (await self.request(
            "POST", f"/api/v1/jobs/{job_id}/cancel", job=job_id)).json()
        return job

    async def pin(self, job_id: str, pinned: bool) -> dict[str, Any]:
        """The job after `POST` (pin) or `DELETE` (unpin) of its pin."""
        job: dict[str, Any] = (await self.request(
            "POST" if pinned else "DELETE", f"/api/v1/jobs/{job_id}/pin", job=job_id)).json()
        return job

    async def delete(self, job_id: str) -> None:
        await self.request("DELETE", f"/api/v1/jobs/{job_id}", job=job_id)

    async def retry(self, job_id: str) -> str:
        """The new attempt's id. The native API has no retry; the jobs dialect's
        does (a new job linked by `retry_of`, resuming where the template allows)."""
        answer = await self.request("POST", f"/api/jobs/{job_id}/retry", job=job_id)
        new_id: str = answer.json()["newJobId"]
        return new_id

    async def events_page(self, job_id: str, after: int) -> tuple[list[dict[str, Any]],
                                                                   int | None]:
        page = await self.get_json(f"/api/v1/jobs/{job_id}/events",
                                   query={"after": after}, job=job_id)
        return page["events"], page["next_after"]

    async def log_lines(self, job_id: str, *, after: int, until: int,
                        streams: tuple[str, ...], on_line: Callable[[str, str], None]) -> None:
        """Hand `on_line(stream, line)` each log line with after < seq <= until, in
        order, from the plain-text log (far cheaper for the server than events)."""
        query: dict[str, Any] = {"streams": 1, "after": after, "until": until}
        if len(streams) == 1:
            query["stream"] = streams[0]
        try:
            async with self.http.stream("GET", f"/api/v1/jobs/{job_id}/logs", params=query,
                                        headers=self._headers()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from(response, target=self.target, job=job_id)
                rest = ""
                async for text in response.aiter_text():
                    *complete, rest = (rest + text).split("\n")  # a line may hold a \r
                    for tagged in complete:
                        stream, _, line = tagged.partition("] ")
                        on_line(stream.removeprefix("["), line)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None

    async def resolve(self, text: str) -> str:
        """The full id for a job id or a unique prefix of one (ids are listed newest first)."""
        wanted = text.strip().lower()
        full = parse_job_id(wanted)
        if full is not None:
            return full
        if not _HEX_PREFIX.match(wanted):
            raise CliError(f"job {text} not found (not a job id)", EXIT_NOT_FOUND)
        matches: list[str] = []
        cursor: str | None = None
        while True:
            jobs, cursor = await self.list_page(limit=PREFIX_PAGE, cursor=cursor)
            matches += [j["id"] for j in jobs if j["id"].startswith(wanted)]
            if len(matches) > 1:
                raise CliError(f"job id prefix {text} is ambiguous: it starts "
                               f"{', '.join(matches[:3])}{' ...' if len(matches) > 3 else ''}"
                               "; give more of the id", EXIT_USAGE)
            if cursor is None:
                break
        if not matches:
            raise CliError(f"job {text} not found", EXIT_NOT_FOUND)
        return matches[0]

    # ---- the live stream ----------------------------------------------------

    async def follow(self, job_id: str, after: int,
                     on_event: Callable[[dict[str, Any]], None]) -> int:
        """Hand every event after seq `after` to `on_event`, in order, once each,
        until the job's `finished` (or `deleted`); reconnect across drops.
        Returns the last seq handed on."""
        cursor = after
        delay = RECONNECT_FIRST
        failing_since: float | None = None  # the first failed attempt since a good one
        lost = False  # a loss was reported, and no reconnection since
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=STREAM_READ_TIMEOUT)
        while True:
            try:
                async with aconnect_sse(
                        self.http, "GET", f"/api/v1/jobs/{job_id}/stream", timeout=timeout,
                        headers={**self._headers(), "Last-Event-ID": str(cursor)}) as source:
                    response = source.response
                    if lost and response.status_code < 400:
                        self._note(f"reconnected to {self.target.url}; resuming after seq "
                                   f"{cursor}")
                        lost = False
                    if response.status_code == 204:  # finished, nothing after the cursor
                        return cursor
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from(response, target=self.target, job=job_id)
                    failing_since = None
                    async for sse in source.aiter_sse():
                        if not sse.id.isdigit() or int(sse.id) <= cursor:
                            continue
                        event = sse.json()
                        cursor = int(sse.id)
                        delay = RECONNECT_FIRST
                        on_event(event)
                        if event.get("type") in END_TYPES:
                            return cursor
                # The body ended before the job did (the server stopping, a proxy).
                self._note(f"the stream from {self.target.url} ended early; reconnecting "
                           f"to resume after seq {cursor}")
                lost = True
            except (httpx.TransportError, SSEError) as exc:
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    if not lost:
                        self._note(f"lost the stream from {self.target.url} "
                                   f"({str(exc) or type(exc).__name__}); reconnecting (for up "
                                   f"to {self.reconnect_for:g}s) to resume after seq {cursor}")
                    lost = True
                elif now - failing_since > self.reconnect_for:
                    raise self.unreachable(exc) from None
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def watch_jobs(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` for every event of the caller's jobs (GET /api/v1/events,
        the server's live stream of them), reconnecting across drops, until cancelled."""
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=STREAM_READ_TIMEOUT)
        delay = RECONNECT_FIRST
        while True:
            try:
                async with aconnect_sse(self.http, "GET", "/api/v1/events", timeout=timeout,
                                        headers=self._headers()) as source:
                    response = source.response
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from(response, target=self.target)
                    on_change()  # (re)connected: what changed meanwhile is unknown
                    delay = RECONNECT_FIRST
                    async for _ in source.aiter_sse():
                        on_change()
            except (httpx.TransportError, SSEError):
                pass
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _note(self, text: str) -> None:
        if self.on_reconnect is not None:
            self.on_reconnect(text)
