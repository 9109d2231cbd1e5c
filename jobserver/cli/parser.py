"""The command line's grammar (argparse): the server's commands and the client's.

Rules: `jobserver [serve flags]` with no command serves, as it always has;
every client command takes `--url`, `--json` and `--color` after its name.
The token is never a flag (see settings.py).
"""

from __future__ import annotations

import argparse
from importlib import metadata

from ..auth import DEFAULT_TTL, ROLES
from .client import RECONNECT_FOR

EPILOG = """\
client commands talk to the server at --url, else $JOBSERVER_URL, else the URL
saved by `jobserver login`, with the token in $JOBSERVER_TOKEN or saved by login.
Job ids may be shortened to any unique prefix.

exit codes: 0 done, 1 refused by the server, 2 a bad argument or param,
66 no such job, 69 no server at the URL, 77 no valid token, 124 wait timed out;
wait and --wait exit with the job's own exit code."""


def version() -> str:
    try:
        return metadata.version("jobserver")
    except metadata.PackageNotFoundError:
        return "unknown"


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", dest="data_dir", help="database and keys (default "
                   "$XDG_DATA_HOME/jobserver, else ~/.local/share/jobserver)")
    p.add_argument("--config", dest="config_file", help="TOML file with [server] settings "
                   "and [templates.*]")
    p.add_argument("--slots", type=int, help="jobs run at once (default 4)")
    p.add_argument("--database-url", dest="database_url", help="postgresql://... : keep jobs "
                   "in PostgreSQL (default: SQLite in the data directory)")


def _client_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the server (default $JOBSERVER_URL, the login file, "
                        "or http://127.0.0.1:8000)")
    common.add_argument("--json", action="store_true", help="JSON for scripts")
    common.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour and the live status line (auto: on a terminal)")
    return common


def _follow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="stream the job's log "
                   "until it ends")
    p.add_argument("--wait", action="store_true", help="wait for the end and exit with "
                   "the job's own exit code")


def _reconnect_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reconnect-for", type=float, default=RECONNECT_FOR, metavar="SECONDS",
                   help=f"keep reconnecting a lost stream this long (default {RECONNECT_FOR:g})")


def _job_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="a job id, or any unique prefix of one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobserver", description="Run commands as jobs and watch them live.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jobserver {version()}")
    _server_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _server_flags(sub.add_parser("serve", help="run the server (the default)"))
    tok = sub.add_parser("token", help="print a JWT signed with the data dir's key")
    tok.add_argument("--sub", required=True, help="the user name")
    tok.add_argument("--role", choices=ROLES, default="user")
    tok.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="lifetime in seconds")
    tok.add_argument("--data-dir", dest="data_dir")
    tok.add_argument("--config", dest="config_file")
    tok.add_argument("--new-key", action="store_true", help="make a signing key when the "
                     "data dir has none (a running server keeps using its own)")
    prog = sub.add_parser("progress-token", help="print a live-dialect progress JWT for a job "
                          "(signed with the data dir's progress key)")
    prog.add_argument("job_id", metavar="JOB_ID")
    prog.add_argument("--data-dir", dest="data_dir")
    prog.add_argument("--config", dest="config_file")

    common = _client_flags()

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], description=help)

    p = add("submit", "run a template: submit TEMPLATE name=value ...")
    p.add_argument("template")
    p.add_argument("params", nargs="*", metavar="name=value",
                   help="a param, typed by the template's declaration")
    p.add_argument("--param-file", metavar="FILE", help="a JSON object of params ('-': stdin)")
    _follow_flags(p)
    _reconnect_flag(p)

    p = add("run", "run a command as an ad-hoc job (admins): run -- ARGV...")
    p.add_argument("argv", nargs="*", metavar="ARGV")
    _follow_flags(p)
    _reconnect_flag(p)

    p = add("ls", "list jobs, newest first")
    p.add_argument("--status", help="QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED")
    p.add_argument("--template")
    p.add_argument("--owner", help="one user's jobs (admins see everyone's)")
    p.add_argument("--limit", type=int, default=50, help="jobs per page (1-500, default 50)")
    p.add_argument("--cursor", help="the next page, as the previous one printed")
    p.add_argument("--all", action="store_true", help="every page")
    p.add_argument("--watch", action="store_true", help="keep the list on screen, redrawn "
                   "as the server reports each change, until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="with --watch, also redraw "
                   "this often (durations; default 2)")

    _job_id(add("show", "a job's record"))

    p = add("logs", "a job's log (stdout to stdout, stderr to stderr)")
    _job_id(p)
    p.add_argument("-f", "--follow", action="store_true", help="follow live until the job "
                   "ends; resumes by seq across dropped connections and server restarts")
    p.add_argument("--since", type=int, default=0, metavar="SEQ",
                   help="only events after this seq")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines so far")
    p.add_argument("--stdout", action="store_true", help="only the stdout lines")
    p.add_argument("--stderr", action="store_true", help="only the stderr lines")
    _reconnect_flag(p)

    p = add("wait", "wait for a job to end; exit with its exit code")
    _job_id(p)
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up (exit 124)")
    _reconnect_flag(p)

    add("cancel", "cancel jobs").add_argument("ids", nargs="+", metavar="ID")
    p = add("retry", "run a failed or cancelled job again, as a new job")
    _job_id(p)
    _follow_flags(p)
    _reconnect_flag(p)
    add("rm", "delete jobs and their logs").add_argument("ids", nargs="+", metavar="ID")
    add("pin", "keep jobs from retention").add_argument("ids", nargs="+", metavar="ID")
    add("unpin", "let retention remove jobs again").add_argument("ids", nargs="+", metavar="ID")
    add("templates", "the templates you may run, with their params").add_argument(
        "name", nargs="?")
    add("login", "check and keep a server URL and token (the token is read from stdin)")
    return parser
