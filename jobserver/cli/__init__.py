"""The `jobserver` command: the server (`serve`, `token`) and a client for it.

    __init__   main(): parse, run one command, turn a CliError into one line
    parser     the grammar (argparse)
    local      serve and token: this machine's server, not its API
    settings   the login file and JOBSERVER_URL / JOBSERVER_TOKEN
    client     HTTP (httpx) and the resumable SSE stream (httpx-sse)
    params     name=value words typed by the template's params
    commands   one coroutine per client command
    follow     logs -f, wait, and the live status line's feed
    output     tables, colour, times, the status line

Rules: a client command runs in one `trio.run`; what it prints for scripts goes
to stdout, everything for the person (errors, notes, the status line) to
stderr; an error is one line `jobserver: ...` and an exit code from client.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import trio

from .client import Client, CliError
from .commands import COMMANDS, Context
from .output import Style, wants_colour
from .parser import build_parser
from .settings import SettingsError, resolve

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "submit" and not any(w.startswith("-") for w in extra):
        args.params += extra  # name=value words after an option (argparse stops at one)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in (None, "serve", "token", "progress-token"):
        # The server's modules (quart, hypercorn) load only for the server's
        # commands: a client command starts in a fraction of the time.
        from .local import LOCAL_COMMANDS

        return LOCAL_COMMANDS[args.command](args)
    try:
        return trio.run(_client_command, args)
    except BaseException as raised:
        exc = _unwrap(raised)
        if isinstance(exc, CliError):
            print(f"jobserver: {exc.message}", file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, KeyboardInterrupt):
            # Ctrl-C ends a watch as it ends `watch(1)`; anything else was interrupted.
            return 0 if getattr(args, "watch", False) else EXIT_INTERRUPTED
        if isinstance(exc, BrokenPipeError):
            # `jobserver logs ID | head`: the reader has what it wanted.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        raise


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside nurseries' groups of one (trio wraps what a
    nursery's body raises)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _client_command(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.url)
    except SettingsError as exc:
        raise CliError(str(exc)) from None

    def reconnecting(text: str) -> None:
        print(f"jobserver: {text}", file=sys.stderr, flush=True)

    options = {"reconnect_for": args.reconnect_for} if hasattr(args, "reconnect_for") else {}
    async with Client.open(target, on_reconnect=reconnecting, **options) as client:
        ctx = Context(args=args, client=client,
                      out=Style(wants_colour(args.color, sys.stdout)),
                      err=Style(wants_colour(args.color, sys.stderr)),
                      terminal=sys.stdout.isatty(),
                      progress=not args.json and wants_colour(args.color, sys.stderr))
        return await COMMANDS[args.command](ctx)
