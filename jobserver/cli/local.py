"""The commands that work on this machine's server, not through its API: `serve`
(the default) and `token`.

Rules: both read the server's Config (`load_config`, flags over env over TOML);
`serve` runs the server until SIGINT/SIGTERM and exits 0 after a clean stop;
`token` signs with the data directory's existing key and refuses to make one
unless asked (`--new-key`): a key made by mistake signs tokens the server,
using its own key, would refuse.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from ..auth import SIGNING_KEY_FILE, KeyRing, progress_key, token_command_line
from ..cluster import NodeFenced
from ..config import Config, ConfigError, load_config
from ..core.ids import parse_job_id
from ..core.timefmt import iso_ms
from ..datadir import StartRefused
from ..server import Server, serve
from ..store import DatabaseUnavailable, IncompatibleDatabase, WriteFenced
from .client import EXIT_FAILED, EXIT_USAGE

FIRST_TOKEN_TTL = 7 * 24 * 3600
# Collect the youngest generation every 50,000 allocations, not 700: a chatty
# job allocates an event per line, nearly all freed by reference counting, and
# the default thresholds spend a fifth of the log path walking live objects.
GC_THRESHOLDS = (50_000, 20, 100)
SERVER_FLAGS = ("host", "port", "data_dir", "config_file", "slots", "database_url")


def _config(args: argparse.Namespace) -> Config | None:
    flags: dict[str, Any] = {k: getattr(args, k, None) for k in SERVER_FLAGS}
    try:
        config = load_config(flags)
    except ConfigError as exc:
        print(f"jobserver: {exc}", file=sys.stderr)
        return None
    if config.progress_jwt_secret is not None:
        try:
            progress_key(config.progress_jwt_secret)
        except ValueError as exc:
            print(f"jobserver: OSEH_PROGRESS_JWT_SECRET: {exc}", file=sys.stderr)
            return None
    return config


def token_command(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    if args.ttl <= 0:
        print("jobserver: --ttl must be positive", file=sys.stderr)
        return EXIT_USAGE
    key = config.data_dir / SIGNING_KEY_FILE
    if not key.exists() and not args.new_key:
        print(f"jobserver: no signing key in {config.data_dir.resolve()}: is that the server's "
              "data directory? (--data-dir DIR; the server makes its key on first start; "
              "--new-key makes one here)", file=sys.stderr)
        return EXIT_FAILED
    print(KeyRing.for_config(config).issue(args.sub, args.role, ttl=args.ttl))
    return 0


def progress_token_command(args: argparse.Namespace) -> int:
    """The job's id, the token's expiry, then the token (last, for `| tail -1`)."""
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    job_id = parse_job_id(args.job_id)
    if job_id is None:
        print(f"jobserver: not a job id: {args.job_id!r}", file=sys.stderr)
        return EXIT_USAGE
    token, expires = KeyRing.for_config(config).issue_progress(
        job_id, ttl=config.progress_token_ttl)
    print(f"job_uid: {job_id}\nexpires_at: {iso_ms(expires)}\n{token}")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    first_start = not (config.data_dir / SIGNING_KEY_FILE).exists()
    gc.set_threshold(*GC_THRESHOLDS)
    unusable: list[BaseException] = []
    try:
        trio.run(_serve_until_signal, config, first_start)
    except* (IncompatibleDatabase, DatabaseUnavailable, StartRefused, NodeFenced,
             WriteFenced) as group:
        unusable.extend(_leaves(group))
    for exc in unusable:  # a database the server cannot use (or no longer may): say why
        print(f"jobserver: {exc}", file=sys.stderr)
    return EXIT_FAILED if unusable else 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for exc in group.exceptions
            for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


async def _serve_until_signal(config: Config, first_start: bool) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            # What startup built (modules, app, templates) lives as long as the
            # process: keep it out of every later collection.
            gc.freeze()
            _announce(server, first_start)
            async for _ in signals:
                print("jobserver: stopping (jobs go back to the queue) ...", file=sys.stderr,
                      flush=True)
                server.request_shutdown()
                break


def _announce(server: Server, first_start: bool) -> None:
    """What a person starting the server needs, on stdout (never through logging:
    the first start's token is shown here once and nowhere else)."""
    token = server.keyring.issue("admin", "admin", ttl=FIRST_TOKEN_TTL) if first_start else None
    for line in announcement(server.config, server.url, server.port, first_token=token):
        print(line, flush=True)


def announcement(config: Config, url: str, port: int, *, first_token: str | None) -> list[str]:
    """The start-up lines; `first_token` is given on the first start only."""
    data_dir = Path(config.data_dir).resolve()
    # A wildcard address is where the server listens, not where a browser goes.
    page = {"0.0.0.0": f"http://127.0.0.1:{port}", "::": f"http://[::1]:{port}"}.get(
        config.host, url)
    # On the first start the page's link carries the admin token in its fragment,
    # which a browser keeps to itself: it never reaches a server or its logs.
    fragment = f"#token={first_token}" if first_token is not None else ""
    lines = [f"jobserver listening on {url}",
             f"web page: {page}/{fragment}",
             f"data directory: {data_dir}"]
    if first_token is not None:
        lines.append(f"admin token (valid 7 days): {first_token}")
    if config.anonymous_loopback:
        lines.append(f"anonymous_loopback is on: a loopback client of /api/jobs that sends no "
                     f"token acts as {config.anonymous_user!r}")
    elif first_token is not None:
        lines.append("jobs dialect (/api/jobs): a client that sends no token gets 401; to let "
                     "loopback clients in without one (as the spec's curl examples expect), "
                     "start with JOBSERVER_ANONYMOUS_LOOPBACK=1 or set anonymous_loopback = "
                     "true in the config's [server] table")
    # Last, so a script reading the output knows the announcement is whole.
    lines.append(f"make a token: {token_command_line(data_dir)}")
    return lines


LOCAL_COMMANDS = {None: serve_command, "serve": serve_command, "token": token_command,
                  "progress-token": progress_token_command}
