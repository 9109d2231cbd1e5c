"""`python -m jobserver.progress`: report to the job server from a shell script.

    python -m jobserver.progress AT OF [MESSAGE] [--step NAME]
    python -m jobserver.progress --step NAME --status running
    python -m jobserver.progress --result '{"message": "done"}'
    python -m jobserver.progress --error CODE MESSAGE [--remediation TEXT]

Rules: writes exactly one JSON line to the fd named by JOBSERVER_CONTROL_FD (one
`write`, so lines from several writers never interleave). Reporting is best
effort: outside a job (no JOBSERVER_CONTROL_FD), or when the server has stopped
listening, it prints a note on stderr and exits 0, so `set -e` scripts go on.
Bad arguments exit 2. Imports nothing heavy: it runs once per report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

CONTROL_ENV = "JOBSERVER_CONTROL_FD"
STATUSES = ("pending", "running", "succeeded", "failed", "skipped")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobserver.progress",
        description="Report progress, a step, a result or an error to the job server.")
    p.add_argument("at", nargs="?", type=float, help="units done")
    p.add_argument("of", nargs="?", type=float, help="units in all")
    p.add_argument("message", nargs="?", help="what is happening")
    p.add_argument("--step", metavar="NAME", help="the step (with --status, or of the progress)")
    p.add_argument("--status", type=str.lower, choices=STATUSES, help="the step's new status")
    p.add_argument("--result", metavar="JSON", help="the job's result, a JSON object")
    p.add_argument("--error", nargs=2, metavar=("CODE", "MESSAGE"), help="report an error")
    p.add_argument("--remediation", metavar="TEXT", help="what to do about the error")
    return p


def message(argv: list[str]) -> dict[str, Any]:
    """The control message the arguments ask for (exits 2 on bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.result is not None:
        try:
            result = json.loads(args.result)
        except ValueError as exc:
            parser.error(f"--result is not valid JSON: {exc}")
        if not isinstance(result, dict):
            parser.error("--result must be a JSON object, like '{\"message\": \"done\"}'")
        return {"result": result}
    if args.error is not None:
        error = {"code": args.error[0], "message": args.error[1]}
        if args.remediation:
            error["remediation"] = args.remediation
        return {"error": error, **({"step": args.step} if args.step else {})}
    if args.status is not None:
        if not args.step:
            parser.error("--status needs --step NAME")
        return {"step": args.step, "status": args.status}
    if args.at is None or args.of is None:
        parser.error("give AT OF [MESSAGE], or one of --step/--status, --result, --error")
    out: dict[str, Any] = {"progress": {"at": _num(args.at), "of": _num(args.of)}}
    if args.message:
        out["message"] = args.message
    if args.step:
        out["step"] = args.step
    return out


def _num(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def main(argv: list[str] | None = None) -> int:
    line = json.dumps(message(sys.argv[1:] if argv is None else argv)) + "\n"
    raw = os.environ.get(CONTROL_ENV)
    if not raw:
        print(f"jobserver.progress: {CONTROL_ENV} is not set (not running as a job); "
              "nothing reported", file=sys.stderr)
        return 0
    try:
        os.write(int(raw), line.encode())
    except (ValueError, OSError) as exc:
        print(f"jobserver.progress: cannot report on {CONTROL_ENV}={raw}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
