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

from ..auth import SIGNING_KEY_FILE, KeyRing
from ..config import Config, ConfigError, load_config
from ..server import Server, serve
from .client import EXIT_FAILED, EXIT_USAGE

FIRST_TOKEN_TTL = 7 * 24 * 3600
# Collect the youngest generation every 50,000 allocations, not 700: a chatty
# job allocates an event per line, nearly all freed by reference counting, and
# the default thresholds spend a fifth of the log path walking live objects.
GC_THRESHOLDS = (50_000, 20, 100)
SERVER_FLAGS = ("host", "port", "data_dir", "config_file", "slots")


def _config(args: argparse.Namespace) -> Config | None:
    flags: dict[str, Any] = {k: getattr(args, k, None) for k in SERVER_FLAGS}
    try:
        return load_config(flags)
    except ConfigError as exc:
        print(f"jobserver: {exc}", file=sys.stderr)
        return None


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
    print(KeyRing.load_or_create(config.data_dir).issue(args.sub, args.role, ttl=args.ttl))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    first_start = not (config.data_dir / SIGNING_KEY_FILE).exists()
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
    data_dir = Path(server.config.data_dir).resolve()
    print(f"jobserver listening on {server.url}", flush=True)
    print(f"data directory: {data_dir}", flush=True)
    if first_start:
        token = server.keyring.issue("admin", "admin", ttl=FIRST_TOKEN_TTL)
        print(f"admin token (valid 7 days): {token}", flush=True)
    else:
        print(f"make a token: {sys.executable} -m jobserver token --sub NAME "
              f"--role admin|user --data-dir {data_dir}", flush=True)
