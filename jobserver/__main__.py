"""Command line: `python -m jobserver [serve] [flags]` and `python -m jobserver token`."""

from __future__ import annotations

import argparse
import gc
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from .auth import ROLES, KeyRing
from .config import Config, ConfigError, load_config
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
                       "$XDG_DATA_HOME/jobserver, else ~/.local/share/jobserver)")
        p.add_argument("--config", dest="config_file", help="TOML file with [server] settings "
                       "and [templates.*]")
        p.add_argument("--slots", type=int, help="jobs run at once (default 4)")
    tok = sub.add_parser("token", help="print a JWT signed with the data dir's key")
    tok.add_argument("--sub", required=True, help="the user name")
    tok.add_argument("--role", choices=ROLES, default="user")
    tok.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    tok.add_argument("--data-dir", dest="data_dir")
    tok.add_argument("--config", dest="config_file")
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
    if args.command == "token":
        if args.ttl <= 0:
            print("jobserver: --ttl must be positive", file=sys.stderr)
            return 2
        print(KeyRing.load_or_create(config.data_dir).issue(args.sub, args.role, ttl=args.ttl))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    first_start = not (config.data_dir / "signing.key").exists()
    gc.set_threshold(*GC_THRESHOLDS)
    trio.run(_serve_until_signal, config, first_start)
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
    make_token = shlex.join([sys.executable, "-m", "jobserver", "token", "--sub", "admin",
                             "--role", "admin", "--data-dir", str(data_dir)])
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
    lines.append(f"make a token: {make_token}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
