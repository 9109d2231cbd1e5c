"""One coroutine per API command: `async def name(ctx) -> exit code`.

Rules: a command reads its arguments from `ctx.args`, talks to the server only
through `ctx.client`, prints results to stdout (people: tables and colour on a
terminal; scripts: `--json`, or plain TSV when piped) and nothing else there;
errors are raised as `CliError` and printed once, by `main`. A job id a person
typed goes through `ctx.client.resolve` (a unique prefix is enough).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import trio

from .client import EXIT_NOT_FOUND, EXIT_USAGE, Client, CliError
from .follow import LogFilter, follow_job, history, job_exit_code, summary
from .output import (
    SHORT_ID,
    Style,
    duration,
    job_duration,
    print_json,
    print_json_line,
    progress_text,
    table,
    when,
)
from .params import build
from .settings import config_path, write_login

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
EXIT_TIMEOUT = 124  # as timeout(1) exits


@dataclass(frozen=True, slots=True)
class Context:
    args: argparse.Namespace
    client: Client
    out: Style  # colour for stdout
    err: Style  # colour for stderr
    terminal: bool  # stdout is a terminal: aligned tables, short ids, local times
    progress: bool  # stderr is a terminal: a live status line while following

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))


Command = Callable[[Context], Awaitable[int]]


def note(text: str) -> None:
    """A line for the person, on stderr (stdout stays the command's result)."""
    print(text, file=sys.stderr, flush=True)


# ---- templates --------------------------------------------------------------

def _param_text(p: dict[str, Any]) -> str:
    kind = "|".join(p["choices"]) if p.get("choices") else p.get("type", "string")
    text = f"{p['name']}:{kind}"
    if "default" in p:
        text += f"={_value(p['default'])}"
    return text + ("*" if p.get("required") else "")


def _value(v: Any) -> str:
    """A value as a person would type it back: strings bare, the rest as JSON."""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


async def templates(ctx: Context) -> int:
    found = await ctx.client.templates()
    if ctx.args.name:
        found = [t for t in found if t["name"] == ctx.args.name]
        if not found:
            raise CliError(f"template {ctx.args.name} not found", EXIT_NOT_FOUND)
    if ctx.json:
        print_json(found)
        return 0
    if ctx.args.name:
        _template_detail(ctx, found[0])
        return 0
    if not ctx.terminal:
        sys.stdout.write(table([], [[t["name"], " ".join(_param_text(p) for p in t["params"]),
                                     t.get("description", "")] for t in found], aligned=False))
        return 0
    width = max(len(t["name"]) for t in found) if found else 0
    for t in found:  # the name, then its description and params, one to a line
        lines = [ctx.out.dim(t["description"])] if t.get("description") else []
        if t["params"]:
            lines.append(" ".join(_param_text(p) for p in t["params"]))
        for i, line in enumerate(lines or [""]):
            name = ctx.out.bold(t["name"].ljust(width)) if i == 0 else " " * width
            print(f"{name}  {line}".rstrip())
    return 0


def _template_detail(ctx: Context, t: dict[str, Any]) -> None:
    print(ctx.out.bold(t["name"]) + (f"  {t['description']}" if t.get("description") else ""))
    if t.get("steps"):
        print(f"steps: {' → '.join(t['steps'])}")
    for p in t["params"]:
        bounds = [f"{k} {_value(p[k])}" for k in ("min", "max") if k in p]
        extra = ", ".join([*bounds, *([f"pattern {p['pattern']}"] if "pattern" in p else [])])
        print(f"  {_param_text(p)}" + (f"  ({extra})" if extra else "")
              + (f"  {ctx.out.dim(p['description'])}" if p.get("description") else ""))


# ---- submit / run / retry ---------------------------------------------------

async def submit(ctx: Context) -> int:
    name = ctx.args.template
    found = {t["name"]: t for t in await ctx.client.templates()}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise CliError(f"template {name} not found (templates: {known})", EXIT_NOT_FOUND)
    params = build(found[name], ctx.args.params, param_file=ctx.args.param_file)
    job = await ctx.client.submit({"template": name, "params": params})
    return await _after_submit(ctx, job)


async def run(ctx: Context) -> int:
    argv = list(ctx.args.argv)
    if not argv:
        raise CliError("run needs a command: jobserver run -- ARGV...", EXIT_USAGE)
    job = await ctx.client.submit({"command": argv})
    return await _after_submit(ctx, job)


async def retry(ctx: Context) -> int:
    old = await ctx.client.resolve(ctx.args.id)
    job = await ctx.client.job(await ctx.client.retry(old))
    return await _after_submit(ctx, job)


async def _after_submit(ctx: Context, job: dict[str, Any]) -> int:
    follow, wait = ctx.args.follow, ctx.args.wait
    if ctx.json and not (follow or wait):
        print_json(job)
    elif follow and not ctx.json:
        note(f"submitted {job['id']}")  # stdout is the job's own, from here on
    elif not ctx.json:
        print(job["id"], flush=True)
    if not (follow or wait):
        return 0
    final = await follow_job(ctx.client, job, after=0,
                             lines=LogFilter(json=ctx.json, show=follow), style=ctx.err,
                             progress=ctx.progress)
    return _finish(ctx, job["id"], final, exit_code=wait)


def _finish(ctx: Context, job_id: str, final: dict[str, Any] | None, *, exit_code: bool) -> int:
    if final is None:
        note(f"jobserver: job {job_id} was deleted")
        return 1 if exit_code else 0
    if ctx.json:
        print_json_line(final)
    elif ctx.progress or exit_code or ended_badly(final):
        note(summary(final, ctx.err))
    return job_exit_code(final) if exit_code else 0


def ended_badly(job: dict[str, Any]) -> bool:
    """A followed job that did not succeed: its end is said even off a terminal
    (on stderr; `-f` still exits 0, `wait` / `--wait` exit with the job's code)."""
    return job["status"] in TERMINAL and job["status"] != "SUCCEEDED"


# ---- ls / show ---------------------------------------------------------------

def _row(ctx: Context, job: dict[str, Any], now: float) -> list[str]:
    progress = progress_text(job.get("progress")) if job["status"] == "RUNNING" else ""
    code = "" if job.get("exit_code") is None else str(job["exit_code"])
    if ctx.terminal:
        return [job["id"][:SHORT_ID], ctx.out.status(job["status"]), job["template"],
                job["owner"], when(job["created_at"], now=now),
                duration(job_duration(job, now=now)), progress or code]
    took = job_duration(job, now=now)
    return [job["id"], job["status"], job["template"], job["owner"], job["created_at"],
            "" if took is None else f"{took:.3f}", progress or code]


LS_HEADERS = ["ID", "STATUS", "TEMPLATE", "OWNER", "CREATED", "TOOK", "PROGRESS/EXIT"]


async def _ls_page(ctx: Context) -> tuple[list[dict[str, Any]], str | None]:
    a = ctx.args
    jobs: list[dict[str, Any]] = []
    cursor = a.cursor
    while True:
        page, cursor = await ctx.client.list_page(
            status=a.status, template=a.template, owner=a.owner,
            limit=a.limit, cursor=cursor)
        jobs += page
        if not a.all or cursor is None:
            return jobs, cursor


# How long `ls --watch` waits after a change for the rest of its burst.
WATCH_COALESCE = 0.1


async def ls(ctx: Context) -> int:
    if not ctx.args.watch:
        jobs, cursor = await _ls_page(ctx)
        _print_jobs(ctx, jobs, cursor)
        return 0
    # Until Ctrl-C: the list again whenever the server's stream of the user's jobs
    # says one changed (a burst of events is one redraw), and every --interval
    # seconds for the durations.
    changed = [trio.Event()]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.client.watch_jobs, lambda: changed[0].set())
        while True:
            changed[0] = trio.Event()
            jobs, cursor = await _ls_page(ctx)
            if ctx.terminal and not ctx.json:
                sys.stdout.write("\x1b[H\x1b[2J")
                print(ctx.out.dim(f"live, Ctrl-C to stop  {time.strftime('%H:%M:%S')}"))
            _print_jobs(ctx, jobs, cursor)
            if not ctx.terminal and not ctx.json:
                print()
            sys.stdout.flush()
            with trio.move_on_after(ctx.args.interval):
                await changed[0].wait()
                await trio.sleep(WATCH_COALESCE)


def _print_jobs(ctx: Context, jobs: list[dict[str, Any]], cursor: str | None) -> None:
    if ctx.json:
        page = {"jobs": jobs, "next_cursor": cursor}
        print_json_line(page) if ctx.args.watch else print_json(page)
        return
    now = time.time()
    sys.stdout.write(table(LS_HEADERS, [_row(ctx, j, now) for j in jobs],
                           aligned=ctx.terminal))
    if cursor is not None and not ctx.args.watch:
        note(f"more: the same with --cursor {cursor} (or --all)")


SHOW_FIELDS = ("template", "owner", "params", "argv", "command", "pid", "node", "exit_code",
               "outcome", "result_message", "error_message", "attempt", "retry_of",
               "parent_id", "correlation_id")


async def show(ctx: Context) -> int:
    job = await ctx.client.job(await ctx.client.resolve(ctx.args.id))
    if ctx.json:
        print_json(job)
        return 0
    rows = [["id", job["id"]], ["status", ctx.out.status(job["status"])]]
    if job.get("progress"):
        p = job["progress"]
        rows.append(["progress", " ".join(x for x in (progress_text(p), p.get("message") or "")
                                          if x)])
    for key in SHOW_FIELDS:
        if job.get(key) not in (None, {}, [], ""):
            rows.append([key, _value(job[key])])
    for key in ("created_at", "started_at", "completed_at"):
        if job.get(key):
            rows.append([key.removesuffix("_at"), f"{when(job[key])}  {ctx.out.dim(job[key])}"])
    if job.get("started_at"):
        rows.append(["took", duration(job_duration(job))])
    for step in job.get("steps", ()):
        rows.append([f"step {step['name']}", ctx.out.status(step["status"].upper())])
    if job.get("result"):
        rows.append(["result", _value(job["result"])])
    for error in job.get("errors", ()):
        rows.append(["error", f"{error.get('code', '')}: {error.get('message', '')}"])
    for warning in job.get("warnings", ()):
        rows.append(["warning", warning])
    rows = [[key, value.replace("\n", "\\n")] for key, value in rows]  # one line each
    sys.stdout.write(table(["FIELD", "VALUE"], rows, aligned=True).split("\n", 1)[1])
    if job.get("log_snippet"):
        print(ctx.out.dim("last lines:"))
        print(job["log_snippet"])
    return 0


# ---- logs / wait -------------------------------------------------------------

def _log_filter(ctx: Context) -> LogFilter:
    a = ctx.args
    streams = tuple(s for s, only in (("stdout", a.stdout), ("stderr", a.stderr)) if only)
    return LogFilter(streams=streams or ("stdout", "stderr"), json=ctx.json)


async def logs(ctx: Context) -> int:
    a = ctx.args
    if (a.tail is not None and a.tail < 0) or a.since < 0:
        raise CliError("--tail and --since take a number 0 or more", EXIT_USAGE)
    job = await ctx.client.job(await ctx.client.resolve(a.id))
    lines = _log_filter(ctx)
    after = a.since
    if not (a.follow and ctx.json and a.tail is None):
        # The stored part from the plain-text log (far quicker than the stream's
        # history for a long log), then the stream from the seq it ended at.
        after = await history(ctx.client, job, a.since, lines, tail=a.tail)
    if not a.follow:
        return 0
    final = await follow_job(ctx.client, job, after=after, lines=lines, style=ctx.err,
                             progress=ctx.progress)
    if final is None:
        note(f"jobserver: job {job['id']} was deleted")
    elif (ctx.progress and not ctx.json) or ended_badly(final):  # stderr: for the person
        note(summary(final, ctx.err))
    return 0


async def wait(ctx: Context) -> int:
    job = await ctx.client.job(await ctx.client.resolve(ctx.args.id))
    final: dict[str, Any] | None = job
    timeout = ctx.args.timeout if ctx.args.timeout is not None else float("inf")
    with trio.move_on_after(timeout) as scope:
        if job["status"] not in TERMINAL:
            final = await follow_job(ctx.client, job, after=job["last_seq"],
                                     lines=LogFilter(show=False), style=ctx.err,
                                     progress=ctx.progress)
    if scope.cancelled_caught:
        note(f"jobserver: job {job['id'][:SHORT_ID]} still not done after "
                  f"{ctx.args.timeout:g}s")
        return EXIT_TIMEOUT
    return _finish(ctx, job["id"], final, exit_code=True)


# ---- cancel / rm / pin -------------------------------------------------------

async def cancel(ctx: Context) -> int:
    for text in ctx.args.ids:
        job = await ctx.client.cancel(await ctx.client.resolve(text))
        if ctx.json:
            print_json_line(job)
        elif job["status"] in TERMINAL:  # a queued job is cancelled at once
            print(f"{job['id']} {ctx.out.status(job['status'])}")
        else:  # a running one is told to stop; `wait` shows how it ends
            print(f"{job['id']} cancel requested ({ctx.out.status(job['status'])})")
    return 0


async def rm(ctx: Context) -> int:
    for text in ctx.args.ids:
        job_id = await ctx.client.resolve(text)
        await ctx.client.delete(job_id)
        if ctx.json:
            print_json_line({"id": job_id, "deleted": True})
        else:
            print(f"{job_id} deleted")
    return 0


async def pin(ctx: Context) -> int:
    return await _set_pinned(ctx, True)


async def unpin(ctx: Context) -> int:
    return await _set_pinned(ctx, False)


async def _set_pinned(ctx: Context, pinned: bool) -> int:
    for text in ctx.args.ids:
        job = await ctx.client.pin(await ctx.client.resolve(text), pinned)
        if ctx.json:
            print_json_line(job)
        else:
            print(f"{job['id']} {'pinned' if job['pinned'] else 'unpinned'}")
    return 0


# ---- login -------------------------------------------------------------------

def _read_token() -> tuple[str, str]:
    """The token and where it came from (for "the token from ... was refused")."""
    if sys.stdin.isatty():
        return getpass.getpass("token: ").strip(), "the prompt"
    return sys.stdin.readline().strip(), "standard input"


async def login(ctx: Context) -> int:
    """Check the URL and token against the server, then keep them (mode 0600)."""
    token, source = _read_token()
    if not token:
        raise CliError("no token given (paste it, or pipe it in: "
                       "echo $TOKEN | jobserver login --url URL)", EXIT_USAGE)
    target = ctx.client.target
    async with Client.open(type(target)(url=target.url, token=token,
                                        token_source=source)) as check:
        await check.templates()
    path = config_path()
    write_login(path, url=target.url, token=token)
    claims = _claims(token)
    if ctx.json:
        print_json({"url": target.url, "config": str(path), "sub": claims.get("sub"),
                    "role": claims.get("role"), "exp": claims.get("exp")})
        return 0
    who = f" as {claims['sub']} ({claims.get('role', 'user')})" if "sub" in claims else ""
    if isinstance(claims.get("exp"), int):
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(claims["exp"]))
        who += f", token valid until {until}"
    print(f"logged in to {target.url}{who}; saved in {path}")
    return 0


def _claims(token: str) -> dict[str, Any]:
    """What the token says about itself (the server has just accepted it)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims


COMMANDS: dict[str, Command] = {
    "templates": templates, "submit": submit, "run": run, "retry": retry, "ls": ls,
    "show": show, "logs": logs, "wait": wait, "cancel": cancel, "rm": rm, "pin": pin,
    "unpin": unpin, "login": login,
}
