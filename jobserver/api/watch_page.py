"""The jobs dialect's watch page, `/jobs/{id}/watch`: one job followed live.

Rules: the page is static, so nothing from the request is ever written into
it; only its own script runs (allowed by its hash, `WATCH_PAGE_CSP`), and it
talks only to this origin. `?token=` on the page's URL is handed on to the
job document and the stream (EventSource sends no headers). The page reads
`GET /api/jobs/{id}` once for the steps, then follows `/api/jobs/{id}/events`
and draws what a person wants to see: the status, an overall progress bar,
each step with its state, progress and errors, the output or the errors at
the end. Each received event is also kept, in arrival order, as an
`<li data-id data-event>` under "Events" (what the browser test compares with
an SSE parser's reading). The page's state is on `<body data-state>`:
"open", then "done" after job-completed / job-failed.
"""

from __future__ import annotations

import base64
import hashlib

WATCH_SCRIPT = """
const id = location.pathname.split("/")[2];
const token = new URLSearchParams(location.search).get("token");
const query = token ? `?token=${encodeURIComponent(token)}` : "";
const base = `/api/jobs/${encodeURIComponent(id)}`;
const $ = (x) => document.getElementById(x);
const steps = new Map();
function make(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function step(name) {
  if (!steps.has(name)) {
    const li = make("li", "step Pending");
    const bar = make("div", "bar"), fill = make("div", "fill");
    bar.append(fill);
    li.append(make("span", "mark"), make("span", "name", name), make("span", "state", "Pending"),
              bar, make("span", "pct", ""), make("div", "errors"));
    $("steps").append(li);
    steps.set(name, {li, fill, status: "Pending", pct: 0});
  }
  return steps.get(name);
}
function setStep(name, status, pct) {
  const s = step(name);
  if (status) { s.status = status; s.li.className = `step ${status}`;
                s.li.querySelector(".state").textContent = status; }
  if (status === "Succeeded") pct = 100;
  if (pct !== undefined && pct !== null) { s.pct = pct; s.fill.style.width = `${pct}%`;
                                           s.li.querySelector(".pct").textContent = `${pct}%`; }
  overall();
}
function overall(pct) {
  if (pct === undefined) {
    const all = [...steps.values()];
    if (!all.length) return;
    pct = all.reduce((n, s) => n + (s.status === "Skipped" ? 100 : s.pct), 0) / all.length;
  }
  $("fill").style.width = `${pct}%`;
  $("pct").textContent = `${Math.round(pct)}%`;
}
function setStatus(status) {
  $("status").textContent = status;
  $("status").className = `badge ${status}`;
}
function problems(list) {
  for (const e of list || []) {
    const li = make("li", "", `${e.code || "error"}: ${e.message || ""}`);
    if (e.remediation) li.append(make("div", "remedy", `→ ${e.remediation}`));
    $("problems").append(li);
  }
}
function output(value) {
  if (value === null || value === undefined) return;
  const rows = typeof value === "object" ? Object.entries(value) : [["output", value]];
  for (const [k, v] of rows) {
    const tr = make("tr");
    const text = typeof v === "object" ? JSON.stringify(v) : String(v);
    tr.append(make("th", "", k), make("td", "", text));
    $("output").append(tr);
  }
}
const handlers = {
  "job-status": (d) => setStatus(d.status),
  "step-status": (d) => setStep(d.step, d.status),
  "step-progress": (d) => setStep(d.step, null, d.progressPct),
  "step-error": (d) => { const s = step(d.step);
                         s.li.querySelector(".errors").textContent = d.message || d.code; },
  "job-log": () => {},  // the lines stay in "Events received"
  "warning": () => {},
  "job-cancelled": (d) => setStatus(d.status),
  "job-completed": (d) => { setStatus(d.status); overall(100); output(d.output); },
  "job-failed": (d) => { setStatus(d.status); problems(d.errors); },
};
function follow() {
  const list = $("events");
  const source = new EventSource(`${base}/events${query}`);
  source.onopen = () => { document.body.dataset.state = "open"; };
  source.onerror = () => {
    document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
  };
  for (const name of Object.keys(handlers)) {
    source.addEventListener(name, (e) => {
      const li = document.createElement("li");
      li.dataset.id = e.lastEventId;
      li.dataset.event = name;
      li.textContent = e.data;
      list.appendChild(li);
      $("count").textContent = String(list.childElementCount);
      handlers[name](JSON.parse(e.data));
      if (name === "job-completed" || name === "job-failed") {
        source.close();
        document.body.dataset.state = "done";
        document.title = JSON.parse(e.data).status;
      }
    });
  }
}
$("title").textContent = `job ${id}`;
fetch(base + query).then((r) => (r.ok ? r.json() : null)).catch(() => null).then((doc) => {
  if (doc) {
    setStatus(doc.status);
    for (const s of doc.steps || []) setStep(s.name, s.status, s.progressPct);
    if (typeof doc.progressPct === "number" && !steps.size) overall(doc.progressPct);
  }
  follow();
});
"""

WATCH_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:760px;color:#1d2125}
h1{font-size:18px;display:flex;gap:10px;align-items:center}
.badge{font-size:12px;padding:0 8px;border-radius:10px;background:#e5e7eb}
.badge.Running{background:#dbeafe;color:#2563eb}.badge.Succeeded{background:#dcfce7;color:#15803d}
.badge.Failed{background:#fee2e2;color:#b91c1c}.badge.Cancelled{background:#e5e7eb;color:#6b7280}
.badge.Queued{background:#fef3c7;color:#b45309}
.overall{display:flex;gap:10px;align-items:center}
.bar{height:10px;background:#e5e7eb;border-radius:5px;overflow:hidden;flex:1}
.fill{height:100%;width:0;background:#2563eb;transition:width .3s}
ol.steps{list-style:none;padding:0}
.step{display:grid;grid-template-columns:20px 140px 90px 1fr 48px;gap:8px;align-items:center;
padding:3px 0}
.step .mark::before{content:"\\25CB"}.step.Running .mark::before{content:"\\25D0";color:#2563eb}
.step.Succeeded .mark::before{content:"\\2713";color:#15803d}
.step.Failed .mark::before{content:"\\2717";color:#b91c1c}
.step.Skipped .mark::before{content:"\\21B7"}
.step.Succeeded .fill{background:#22c55e}.step.Failed .fill{background:#ef4444}
.step.Pending,.step.Skipped{color:#6b7280}.pct{text-align:right;font-size:12px;color:#6b7280}
.errors{grid-column:2/-1;color:#b91c1c;font-size:12px}.remedy{color:#6b7280}
#problems{color:#b91c1c}th{text-align:left;color:#6b7280;font-weight:500;padding-right:12px}
details{margin-top:2em;color:#6b7280}
#events li{font:12px ui-monospace,monospace;word-break:break-all}
"""

WATCH_PAGE = ("""<!doctype html>
<html><head><meta charset="utf-8"><title>job</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>""" + WATCH_STYLE + """</style>
</head><body data-state="connecting">
<h1><span id="title">job</span><span id="status" class="badge">connecting</span></h1>
<div class="overall"><div class="bar"><div class="fill" id="fill"></div></div>
<span id="pct"></span></div>
<ol class="steps" id="steps"></ol><ul id="problems"></ul><table id="output"></table>
<details><summary>Events received (<span id="count">0</span>)</summary>
<ol id="events"></ol></details>
<script>""" + WATCH_SCRIPT + "</script></body></html>\n")

# Only the page's own script runs (allowed by its hash); it may talk to this origin.
WATCH_PAGE_CSP = ("default-src 'self'; style-src 'unsafe-inline'; script-src 'sha256-"
                  + base64.b64encode(hashlib.sha256(WATCH_SCRIPT.encode()).digest()).decode()
                  + "'")
