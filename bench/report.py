"""Presenting results: text tables of medians and ratios, JSON, and a PNG plot.

Rules: reads only the results dict built by bench/__main__.py; a missing
target or a skipped bench shows as "-" or its skip reason, never an error.
Ratios are "A÷B" of medians measured side by side in the same run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Fan-out ratios worth a column: (numerator, denominator), issue 4's targets first.
FANOUT_RATIOS = (("jobserver", "cbatch"), ("jobserver", "c"), ("jobserver", "fastapi"),
                 ("fastapi", "c"), ("quart", "c"))


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _note(text: str, width: int = 100) -> str:
    """One line of a (possibly multi-line) note, cut to `width` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    line = lines[-1]
    return line if len(line) <= width else line[:width - 3] + "..."


def _ratio(top: float | None, bottom: float | None) -> str:
    if not top or not bottom:
        return "-"
    ratio = top / bottom
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.4f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """Columns right-aligned, except where `align` has "l" at the column's index."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if align[i:i + 1] == "l" else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def fanout_tables(fanout: dict[str, Any]) -> str:
    labels: dict[str, str] = fanout["labels"]
    keys = list(labels)
    summary = fanout["summary"]
    ratios = [(a, b) for a, b in FANOUT_RATIOS
              if any(a in v and b in v for v in summary["throughput"].values())]
    out = ["Fan-out: messages delivered/s (N subscribers x events/s), median of "
           f"{fanout['settings']['runs']} run(s)"]
    out.append("  " + "; ".join(f"{k} = {v}" for k, v in labels.items()))
    rows = []
    for cell, values in summary["throughput"].items():
        n, burst = cell.split("/")
        rows.append([n, burst, *(_num(values.get(k)) for k in keys),
                     *(_ratio(values.get(a), values.get(b)) for a, b in ratios)])
    out.append(table(["N", "burst", *keys, *(f"{a}/{b}" for a, b in ratios)], rows))
    lat_rows = [[k, str(v["n"]), _num(v["msgs_per_s"]), _num(v["p50_ms"], 2),
                 _num(v["p99_ms"], 2), _num(v["max_ms"], 2)]
                for k, v in summary["latency"].items()]
    if lat_rows:
        s = fanout["settings"]
        out.append(f"\nFan-out latency, event produced -> arrival at the subscriber's socket, "
                   f"N={s['latency_n']}, {s['latency_rate']:,.0f} msgs/s, median of runs")
        out.append(table(["target", "N", "msgs/s", "p50 ms", "p99 ms", "max ms"], lat_rows,
                         "l"))
    out += [f"  skipped {k}: {_note(why)}" for k, why in fanout["skipped"].items()]
    if summary.get("incomplete_rounds"):
        out.append(f"  note: in {summary['incomplete_rounds']} measured round(s) some subscriber "
                   "did not get in or did not get every event (see the JSON)")
    if summary.get("disturbed_rounds"):
        out.append(f"  note: {summary['disturbed_rounds']} measured round(s) ran while other "
                   f"processes used > {fanout['max_other_load']} cores (see the JSON)")
    return "\n".join(out)


def measures_table(title: str, unit: str, measures: dict[str, Any],
                   ratios: Sequence[tuple[str, str]] = ()) -> str:
    rows = []
    for name, m in measures.items():
        rows.append([name, _num(m.get("median")) if "median" in m else "skipped",
                     " ".join(_num(v) for v in m.get("runs", [])) or _note(m.get("skipped", ""))])
    for a, b in ratios:
        top, bottom = measures.get(a, {}).get("median"), measures.get(b, {}).get("median")
        rows.append([f"{a} / {b}", _ratio(top, bottom), ""])
    return f"{title}\n" + table(["measure", f"median {unit}", "runs / note"], rows, "lrl")


def render(results: dict[str, Any]) -> str:
    parts = [f"Machine: {results['machine']['summary']}"]
    if "fanout" in results:
        parts.append(fanout_tables(results["fanout"]))
    if "idle" in results:
        rows = [[k, _num(v.get("connections")), _num(v.get("bytes_per_connection")),
                 _note(v.get("skipped", ""))] for k, v in results["idle"].items()]
        parts.append("Idle subscribers: server RSS per connection\n"
                     + table(["target", "connections", "bytes/conn", "note"], rows, "lrrl"))
    for key, (title, unit, ratios) in SECTIONS.items():
        if key in results:
            parts.append(measures_table(title, unit, results[key], ratios))
    if "rest" in results:
        parts.append(rest_table(results["rest"]))
    if "live" in results:
        from .live import live_table
        parts.append(live_table(results["live"]))
    return "\n\n".join(parts)


def rest_table(rest: dict[str, Any]) -> str:
    title = ("REST: requests/s with wrk (1 thread, 32 keep-alive connections, or 1 where "
             "named), median run")
    if "skipped" in rest:
        return f"{title}\n  skipped: {_note(rest['skipped'])}"
    measured = {k: v for k, v in rest.items() if "skipped" not in v}
    endpoints = list(next(iter(measured.values()), {}))
    keys = list(measured)
    pairs = [(a, b) for a, b in REST_RATIOS if {a, b} <= set(keys)]
    rows = []
    for endpoint in endpoints:
        medians = {k: measured[k][endpoint]["median"] for k in keys}
        rows.append([endpoint, *(_num(medians[k]["requests_per_s"]) for k in keys),
                     *(_num(medians[k]["p99_ms"], 2) for k in keys),
                     *(_ratio(medians[a]["requests_per_s"], medians[b]["requests_per_s"])
                       for a, b in pairs)])
    headers = ["endpoint", *(f"{k} req/s" for k in keys), *(f"{k} p99 ms" for k in keys),
               *(f"{a}/{b}" for a, b in pairs)]
    notes = [f"  skipped {k}: {_note(v['skipped'])}" for k, v in rest.items() if "skipped" in v]
    return "\n".join([title, table(headers, rows, "l"), *notes])


# The frameworks against each other, then what jobserver adds to its own.
REST_RATIOS = (("jobserver", "starlette"), ("quart", "starlette"), ("jobserver", "quart"))

SECTIONS: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    "logs": ("Log throughput: lines/s", "lines/s", (("jobserver", "seq | wc -l"),
                                                   ("jobserver on PostgreSQL", "jobserver"))),
    "multiplex": ("Multiplex fan-out, 1,000 connections: messages/s", "msgs/s",
                  (("multiplex tasks", "logs"),)),
    "spawn": ("Spawn rate: jobs/s, submit to finished", "jobs/s",
              (("jobserver", "xargs -P2"), ("jobserver", "tsp"), ("tsp", "xargs -P2"))),
}


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def plot(results: dict[str, Any], path: Path) -> bool:
    """A PNG of fan-out throughput (and latency if measured); False if nothing to plot."""
    fanout = results.get("fanout")
    if not fanout or not fanout["summary"]["throughput"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    summary, labels = fanout["summary"], fanout["labels"]
    cells = list(summary["throughput"])
    keys = [k for k in labels if any(k in summary["throughput"][c] for c in cells)]
    has_latency = bool(summary["latency"])
    fig, axes = plt.subplots(1, 2 if has_latency else 1, figsize=(13 if has_latency else 9, 5),
                             squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        values = [summary["throughput"][c].get(key, 0.0) for c in cells]
        ax.bar([x + i * width for x in range(len(cells))], values, width, label=labels[key])
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(cells))])
    ax.set_xticklabels([f"N={c.split('/')[0]}\nburst {c.split('/')[1]}" for c in cells])
    ax.set_ylabel("messages delivered / s (median)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k"))
    ax.set_title("Fan-out throughput")
    ax.legend(fontsize="small")
    if has_latency:
        ax = axes[0][1]
        lat = summary["latency"]
        names = list(lat)
        ax.bar([x - 0.2 for x in range(len(names))], [lat[k]["p50_ms"] for k in names], 0.4,
               label="p50")
        ax.bar([x + 0.2 for x in range(len(names))], [lat[k]["p99_ms"] for k in names], 0.4,
               label="p99")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([labels.get(k, k) for k in names], fontsize="small")
        first = next(iter(lat.values()))
        ax.set_title(f"Latency at N={first['n']}, {first['msgs_per_s']:,.0f} msgs/s")
        ax.set_ylabel("ms")
        ax.legend(fontsize="small")
    fig.suptitle(results["machine"]["summary"], fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
