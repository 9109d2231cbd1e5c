"""What the command line prints: colour, tables, times, and the live status line.

Rules: colour and the status line only on a terminal (`--color auto`), and
never with NO_COLOR set or TERM=dumb; piped output is plain: tab-separated rows
without a header, full ids and ISO times, so `cut`/`awk` work. The status line
(a spinner, the job's state, a bar for its own at/of) lives on stderr and is
erased before any line is written and drawn again after it, so a followed job's
stdout lines go to our stdout and its stderr lines to our stderr, each on its
own file. ANSI is written by hand here: a terminal library's live display
redraws through one stream, which would move the job's stdout onto it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
STATUS_COLOURS = {"QUEUED": "33", "RUNNING": "36", "SUCCEEDED": "32", "FAILED": "31",
                  "CANCELLED": "35"}
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
BAR_WIDTH = 24
SHORT_ID = 8


def wants_colour(choice: str, stream: TextIO, environ: Mapping[str, str] | None = None
                 ) -> bool:
    environ = os.environ if environ is None else environ
    if choice != "auto":
        return choice == "always"
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


@dataclass(frozen=True, slots=True)
class Style:
    colour: bool

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and text else text

    def status(self, status: str) -> str:
        return self.paint(status, STATUS_COLOURS.get(status, "0"))

    def dim(self, text: str) -> str:
        return self.paint(text, "2")

    def bold(self, text: str) -> str:
        return self.paint(text, "1")


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, aligned: bool) -> str:
    """Aligned columns under a header (a terminal), or header-less TSV (a pipe)."""
    if not aligned:
        return "".join("\t".join(row) + "\n" for row in rows)
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(visible_len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c + " " * (w - visible_len(c)) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(padded).rstrip() + "\n")
    return "".join(lines)


def print_json(value: Any, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def print_json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n")


def epoch(iso: str | None) -> float | None:
    return None if iso is None else dt.datetime.fromisoformat(iso).timestamp()


def when(iso: str | None, *, now: float | None = None) -> str:
    """Local time: HH:MM:SS today, else YYYY-MM-DD HH:MM."""
    ts = epoch(iso)
    if ts is None:
        return "-"
    moment = dt.datetime.fromtimestamp(ts)
    today = dt.datetime.fromtimestamp(time.time() if now is None else now).date()
    return moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def job_duration(job: Mapping[str, Any], *, now: float | None = None) -> float | None:
    start = epoch(job.get("started_at"))
    if start is None:
        return None
    end = epoch(job.get("completed_at"))
    return (end if end is not None else (time.time() if now is None else now)) - start


def progress_text(progress: Mapping[str, Any] | None) -> str:
    """`3/10 30%`, `45%`, or "" when the job reported none."""
    if not progress:
        return ""
    at, of, pct = progress.get("at"), progress.get("of"), progress.get("pct")
    if isinstance(at, (int, float)) and isinstance(of, (int, float)) and of:
        return f"{_num(at)}/{_num(of)} {at / of:.0%}"
    if isinstance(pct, (int, float)):
        return f"{pct:.0f}%"
    return ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def fraction(progress: Mapping[str, Any] | None) -> float | None:
    """How far the job says it is, 0..1, or None when unknown (a spinner)."""
    if not progress:
        return None
    at, of, pct = progress.get("at"), progress.get("of"), progress.get("pct")
    if isinstance(at, (int, float)) and isinstance(of, (int, float)) and of > 0:
        return max(0.0, min(1.0, at / of))
    if isinstance(pct, (int, float)) and pct > 0:
        return max(0.0, min(1.0, pct / 100))
    return None


def bar(part: float, width: int = BAR_WIDTH) -> str:
    """A bar in eighths of a cell: `██████▍          `."""
    eighths = round(part * width * 8)
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest] if full < width and rest else ""
    return ("█" * full + partial).ljust(width)


class StatusLine:
    """One line on a terminal's stderr showing a job's state, drawn in place.

    `write(stream, text)` puts a job's line on its own stream with the status
    line out of the way; `draw()` repaints it, on updates and on the spinner's
    tick (so a job printing many lines costs one repaint per tick, not per line)."""

    def __init__(self, out: TextIO, err: TextIO, style: Style, *, enabled: bool) -> None:
        self.out, self.err, self.style, self.enabled = out, err, style, enabled
        self.label = ""
        self.status = "QUEUED"
        self.progress: Mapping[str, Any] | None = None
        self.message = ""
        self._tick = 0
        self._shown = False

    def update(self, *, status: str | None = None, progress: Mapping[str, Any] | None = None,
               message: str | None = None) -> None:
        if status is not None:
            self.status = status
        if progress is not None:
            self.progress = progress
        if message is not None:
            self.message = message
        self.draw()

    def render(self, width: int) -> str:
        part = fraction(self.progress) if self.status == "RUNNING" else None
        spin = SPINNER[self._tick % len(SPINNER)] if self.status in ("QUEUED", "RUNNING") else " "
        pieces = [spin, self.label, self.style.status(self.status)]
        if part is not None:
            pieces += [self.style.paint(bar(part), "36"), progress_text(self.progress)]
        if self.message:
            pieces.append(self.style.dim(self.message))
        line = " ".join(p for p in pieces if p)
        # Never wrap: a wrapped line cannot be erased with one \r.
        return line if visible_len(line) < width else _ANSI.sub("", line)[:width - 1]

    def draw(self) -> None:
        if not self.enabled:
            return
        self._tick += 1
        self.out.flush()  # the job's lines first, then the status line after them
        width = shutil.get_terminal_size((80, 24)).columns
        self.err.write("\r\x1b[2K" + self.render(width))
        self.err.flush()
        self._shown = True

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.err.write("\r\x1b[2K")
            self.err.flush()
            self._shown = False

    def write(self, stream: TextIO, text: str) -> None:
        """The line goes out now; the status line comes back on the next tick."""
        if self._shown:
            self.clear()
        stream.write(text)
