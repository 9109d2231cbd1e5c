"""Command line: `python -m jobserver [serve] [flags]`, `python -m jobserver token` and
`python -m jobserver progress-token JOB_ID`."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from .auth import ROLES, KeyRing, progress_key
from .config import Config, ConfigError, load_config
from .core.ids import parse_job_id
from .core.timefmt import iso_ms
from .server import Server, serve

FIRST_TOKEN_TTL = 7 * 24 * 3600
# Collect the youngest generation every 50,000 allocations, not 700: a chatty
# job allocates an event per line, nearly all freed by reference counting, and
# the default thresholds spend a fifth of the log path walking live objects.
GC_THRESHOLDS = (50_000, 20, 100)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobserver", description="Run commands as jobs and "
                                     "watch them live.")
    sub = parser.add_subparsers(dest="command")
    for p in (parser, sub.add_parser("serve", help="run the server (the default)")):
        p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
        p.add_argument("--data-dir", dest="data_dir", help="database and keys (default "
                       "./jobserver-data)")
        p.add_argument("--config", dest="config_file", help="TOML file with [server] settings "
                       "and [templates.*]")
        p.add_argument("--slots", type=int, help="jobs run at once (default 4)")
    tok = sub.add_parser("token", help="print a JWT signed with the data dir's key")
    tok.add_argument("--sub", required=True, help="the user name")
    tok.add_argument("--role", choices=ROLES, default="user")
    tok.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    tok.add_argument("--data-dir", dest="data_dir")
    tok.add_argument("--config", dest="config_file")
    prog = sub.add_parser("progress-token", help="print a live-dialect progress JWT for a job")
    prog.add_argument("job_id", metavar="JOB_ID")
    prog.add_argument("--data-dir", dest="data_dir")
    prog.add_argument("--config", dest="config_file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags: dict[str, Any] = {k: getattr(args, k, None)
                             for k in ("host", "port", "data_dir", "config_file", "slots")}
    try:
        config = load_config(flags)
    except ConfigError as exc:
        print(f"jobserver: {exc}", file=sys.stderr)
        return 2
    if config.progress_jwt_secret is not None:
        try:
            progress_key(config.progress_jwt_secret)
        except ValueError as exc:
            print(f"jobserver: OSEH_PROGRESS_JWT_SECRET: {exc}", file=sys.stderr)
            return 2
    if args.command == "progress-token":
        return _progress_token(config, args.job_id)
    if args.command == "token":
        if args.ttl <= 0:
            print("jobserver: --ttl must be positive", file=sys.stderr)
            return 2
        print(KeyRing.for_config(config).issue(args.sub, args.role, ttl=args.ttl))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    first_start = not (config.data_dir / "signing.key").exists()
    gc.set_threshold(*GC_THRESHOLDS)
    trio.run(_serve_until_signal, config, first_start)
    return 0


def _progress_token(config: Config, raw_id: str) -> int:
    """The job's id, the token's expiry, then the token (last, for `| tail -1`)."""
    job_id = parse_job_id(raw_id)
    if job_id is None:
        print(f"jobserver: not a job id: {raw_id!r}", file=sys.stderr)
        return 2
    token, expires = KeyRing.for_config(config).issue_progress(
        job_id, ttl=config.progress_token_ttl)
    print(f"job_uid: {job_id}\nexpires_at: {iso_ms(expires)}\n{token}")
    return 0


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
    data_dir = Path(server.config.data_dir).resolve()
    print(f"jobserver listening on {server.url}", flush=True)
    print(f"data directory: {data_dir}", flush=True)
    if first_start:
        token = server.keyring.issue("admin", "admin", ttl=FIRST_TOKEN_TTL)
        print(f"admin token (valid 7 days): {token}", flush=True)
    else:
        print(f"make a token: {sys.executable} -m jobserver token --sub NAME "
              f"--role admin|user --data-dir {data_dir}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
