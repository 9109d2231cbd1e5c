// The job view: one job's record, moved on live by its own stream
// (GET /api/v1/jobs/{id}/stream, SSE read by sse.js, resumed with
// Last-Event-ID), its steps, result and errors, the actions its state allows,
// and its log (log.js). Rules: the record is read first; the stream starts
// PAGE events before the record's last seq, so the log opens on its newest
// lines and the record only takes events past what it reflects. What the
// stream brings is applied once per animation frame, decoding at most
// LINES_KEPT log lines: a job that prints faster than a page can show skips
// ahead instead of freezing the tab. The stream is closed on `finished` /
// `deleted` and whenever another job is shown.

import {api, session} from "./session.js";
import {applyEvent} from "./jobstate.js";
import {LogView, PAGE} from "./log.js";
import {SseStream} from "./sse.js";

// Log lines drawn per frame at most: more than a screenful, far less than a
// flood. When more came since the last frame the log skips ahead to the newest.
const LINES_KEPT = 500;
import {$, el, fmtDuration, fmtTime, jobDuration, parseTime, progressBar, progressPct,
        shortId, statusBadge, TERMINAL} from "./util.js";

const STEP_MARK = {Pending: "○", Running: "◐", Succeeded: "✓", Failed: "✗", Skipped: "↷",
                   Cancelled: "■"};

export class JobView {
  constructor(root, {onOpen, onGone}) {
    this.root = root;
    this.onOpen = onOpen;
    this.onGone = onGone;
    this.job = null;
    this.stream = null;
    this.incoming = null;
    this.log = null;
    this.frame = 0;
    this.confirmDelete = false;
  }

  close() {
    if (this.stream) this.stream.close();
    this.stream = null;
    this.incoming = null;
    this.job = null;
    this.log = null;
    this.root.replaceChildren(el("div", {class: "placeholder"},
      el("p", {text: "Pick a job from the list, or run one."})));
    this.root.dataset.job = "";
  }

  async open(id) {
    this.close();
    this.root.dataset.job = id;
    let job;
    try {
      job = await api(`/api/v1/jobs/${id}`);
    } catch (e) {
      if (this.root.dataset.job !== id) return;
      this.root.replaceChildren(el("div", {class: "placeholder"}, el("p", {class: "error", text: e.message})));
      return;
    }
    if (this.root.dataset.job !== id) return; // another job was picked meanwhile
    this.job = job;
    this.confirmDelete = false;
    this.flashText = "";
    const after = Math.max(0, job.last_seq - PAGE);
    this.log = new LogView(id, {after, onChange: () => this.renderLogBar()});
    this.layout();
    this.render();
    this.incoming = {lines: [], others: [], lastSeq: after, gap: false};
    this.stream = new SseStream(`/api/v1/jobs/${id}/stream?after=${after}`, {
      onOpen: () => { this.root.dataset.stream = "open"; },
      onEvents: (events) => this.receive(events),
      onEnd: (why) => { this.root.dataset.stream = why === "dropped" ? "reconnecting" : "closed"; },
    });
  }

  // Raw events as they come, kept undecoded until the next frame; of the log lines
  // only the newest LINES_KEPT (a job printing faster than the page can show skips
  // ahead; the skipped lines are a scroll away, fetched by seq).
  receive(events) {
    const q = this.incoming;
    for (const e of events) {
      q.lastSeq = Number(e.id);
      const last = q.others[q.others.length - 1];
      if (e.type === "log") q.lines.push(e);
      else if (e.type === "progress" && last && last.type === "progress") q.others[q.others.length - 1] = e;
      else q.others.push(e);
    }
    if (q.lines.length > 2 * LINES_KEPT) {
      q.lines = q.lines.slice(-LINES_KEPT);
      q.gap = true;
    }
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.drain());
  }

  // Once a frame: the record moves on, the log takes its lines, the view is drawn.
  drain() {
    this.frame = 0;
    if (!this.job || !this.incoming) return;
    const q = this.incoming;
    this.incoming = {lines: [], others: [], lastSeq: q.lastSeq, gap: false};
    let ended = null, changed = this.ticked;
    this.ticked = false;
    for (const raw of q.others) {
      const e = JSON.parse(raw.data);
      if (applyEvent(this.job, e)) changed = true;
      if (e.type === "finished" || e.type === "deleted") ended = e.type;
    }
    const lines = q.lines.slice(-LINES_KEPT).map((raw) => JSON.parse(raw.data));
    this.log.take(lines, q.lastSeq, q.gap || q.lines.length > LINES_KEPT);
    if (ended) {
      this.stream.close();
      this.root.dataset.stream = "closed";
      this.flashText = "";
    }
    if (changed || ended) this.render();
    if (ended === "deleted") this.onGone(this.job.id);
  }

  layout() {
    const log = this.log;
    this.summary = el("div", {class: "summary"});
    this.logBar = el("div", {class: "log-bar"});
    this.root.replaceChildren(this.summary,
      el("section", {class: "log-section"}, this.logBar, log.pane));
  }

  render() {
    const job = this.job;
    if (!job) return;
    this.root.dataset.status = job.status;
    const pct = progressPct(job);
    const p = job.progress || {};
    const counts = p.of ? `${fmtNumber(p.at)} / ${fmtNumber(p.of)}` : "";
    const progressText = [pct !== null ? `${Math.round(pct)}%` : "", counts, p.message || ""]
      .filter(Boolean).join(" · ");
    this.summary.replaceChildren(
      el("header", {class: "job-head"},
        el("h2", {}, statusBadge(job.status), " ", job.template,
           el("span", {class: "mono dim", title: job.id, text: ` ${shortId(job.id)}`})),
        this.actions()),
      el("div", {class: "job-progress"}, progressBar(pct, job.status),
         el("div", {class: "progress-text", text: progressText || (TERMINAL.has(job.status) ? "" : "waiting for progress")})),
      this.facts(),
      this.steps(),
      this.outcome());
    this.renderLogBar();
  }

  actions() {
    const job = this.job;
    const box = el("div", {class: "actions"});
    if (!TERMINAL.has(job.status)) {
      box.append(el("button", {class: "cancel", onclick: () => this.act("cancel"), text: "Cancel"}));
    }
    if (job.status === "FAILED" || job.status === "CANCELLED") {
      box.append(el("button", {class: "retry", onclick: () => this.act("retry"), text: "Retry"}));
    }
    if (TERMINAL.has(job.status)) {
      box.append(el("button", {class: this.confirmDelete ? "delete confirm" : "delete",
                               onclick: () => this.act("delete"),
                               text: this.confirmDelete ? "Really delete?" : "Delete"}));
    }
    this.flash = el("span", {class: "flash", role: "status", text: this.flashText || ""});
    box.append(this.flash);
    return box;
  }

  async act(what) {
    const id = this.job.id;
    try {
      if (what === "cancel") {
        await api(`/api/v1/jobs/${id}/cancel`, {method: "POST"});
        this.say("cancelling…");
      } else if (what === "retry") {
        const answer = await api(`/api/jobs/${id}/retry`, {method: "POST"});
        this.onOpen(answer.newJobId);
      } else if (what === "delete") {
        if (!this.confirmDelete) {
          this.confirmDelete = true;
          this.render();
          return;
        }
        await api(`/api/v1/jobs/${id}`, {method: "DELETE"});
        this.onGone(id);
      }
    } catch (e) {
      this.say(e.message);
    }
  }

  say(text) {
    this.flashText = text;
    this.flash.textContent = text;
  }

  facts() {
    const job = this.job;
    const created = parseTime(job.created_at), started = parseTime(job.started_at);
    const waited = started !== null ? started - created : null;
    const rows = [
      ["owner", job.owner],
      ["created", fmtTime(job.created_at)],
      ["started", fmtTime(job.started_at)],
      ["finished", fmtTime(job.completed_at)],
      ["queued for", fmtDuration(waited)],
      ["ran for", fmtDuration(jobDuration(job))],
      ["exit code", job.exit_code ?? "—"],
      ["outcome", job.outcome ?? "—"],
      ["pid", job.pid ?? "—"],
      ["attempt", job.attempt],
    ];
    const dl = el("dl", {class: "facts"});
    for (const [k, v] of rows) dl.append(el("dt", {text: k}), el("dd", {class: `fact-${k.replace(/ /g, "-")}`, text: String(v)}));
    if (job.retry_of) dl.append(el("dt", {text: "retry of"}), el("dd", {}, this.link(job.retry_of)));
    if (job.parent_id) dl.append(el("dt", {text: "spawned by"}), el("dd", {}, this.link(job.parent_id)));
    const params = Object.entries(job.params || {});
    if (params.length) {
      dl.append(el("dt", {class: "wide", text: "params"}),
                el("dd", {class: "mono wide"}, params.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join("  ")));
    }
    if (job.command) {
      dl.append(el("dt", {class: "wide", text: "command"}),
                el("dd", {class: "mono wide command", title: job.command, text: job.command}));
    }
    return dl;
  }

  link(id) {
    return el("a", {href: `#job=${id}`, class: "mono", text: shortId(id)});
  }

  steps() {
    const steps = this.job.steps || [];
    if (!steps.length) return el("div");
    return el("section", {class: "steps"}, el("h3", {text: "Steps"}),
      el("ol", {}, steps.map((s) => {
        const started = parseTime(s.started_at), done = parseTime(s.completed_at);
        const took = started !== null ? (done ?? Date.now()) - started : null;
        return el("li", {class: `step ${s.status}`, dataset: {step: s.name, status: s.status}},
          el("span", {class: "mark", text: STEP_MARK[s.status] || "•"}),
          el("span", {class: "name", text: s.name}),
          el("span", {class: "state", text: s.status}),
          progressBar(s.status === "Succeeded" ? 100 : s.progress_pct || 0, s.status.toUpperCase()),
          el("span", {class: "took", text: took !== null ? fmtDuration(took) : ""}),
          (s.errors || []).length ? el("div", {class: "step-errors", text: s.errors.map((e) => e.message).join("; ")}) : null);
      })));
  }

  outcome() {
    const job = this.job;
    const parts = [];
    if (job.result_message && job.status === "SUCCEEDED") parts.push(el("p", {class: "ok", text: job.result_message}));
    if (job.error_message) parts.push(el("p", {class: "error", text: job.error_message}));
    if (job.result && Object.keys(job.result).length) {
      parts.push(el("h3", {text: "Result"}), valueTable(job.result));
    }
    if ((job.errors || []).length) {
      parts.push(el("h3", {text: "Errors"}), el("ul", {class: "errors"}, job.errors.map((e) =>
        el("li", {}, el("strong", {text: e.code || "error"}), e.step ? ` (${e.step})` : "", ": ",
           e.message || "", e.remediation ? el("div", {class: "remedy", text: `→ ${e.remediation}`}) : null))));
    }
    if ((job.warnings || []).length) {
      parts.push(el("h3", {text: "Warnings"}), el("ul", {class: "warnings"},
                                                  job.warnings.map((w) => el("li", {text: w}))));
    }
    return el("section", {class: "outcome"}, parts);
  }

  renderLogBar() {
    const log = this.log;
    if (!log || !this.logBar) return;
    const first = log.firstSeq, last = log.lastSeq;
    const range = first !== null ? `lines at seq ${first}–${last}` : "no output yet";
    const mode = log.atTail && log.follow ? "following"
      : log.missed ? `paused · ${log.missed} newer lines` : "paused";
    this.logBar.replaceChildren(
      el("h3", {text: "Log"}),
      el("span", {class: "dim", text: `${range} · ${mode}`}),
      el("span", {class: "legend"}, el("span", {class: "out", text: "stdout"}), " ",
         el("span", {class: "err", text: "stderr"})),
      ...(log.follow ? [] : [el("button", {class: "jump", onclick: () => log.jumpToEnd(), text: "Jump to end"})]),
      el("button", {class: "download", onclick: () => this.download(), text: "Download log"}));
    this.root.dataset.follow = log.follow ? "1" : "0";
  }

  // The whole log as a file, read with the token in a header (not in a URL).
  async download() {
    const id = this.job.id;
    const r = await fetch(`/api/v1/jobs/${id}/logs?streams=1`,
                          {headers: {"Authorization": `Bearer ${session.token}`}});
    if (!r.ok) return;
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", {href: url, download: `job-${shortId(id)}.log`});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  tick() {
    if (this.job && !TERMINAL.has(this.job.status)) {
      this.ticked = true; // durations move with the clock
      this.schedule();
    }
  }
}

function fmtNumber(n) {
  return typeof n === "number" ? String(Math.round(n * 100) / 100) : "?";
}

function valueTable(data) {
  const table = el("table", {class: "kv"});
  for (const [k, v] of Object.entries(data)) {
    table.append(el("tr", {}, el("th", {text: k}),
      el("td", {class: typeof v === "object" && v !== null ? "mono wrap" : "",
               text: typeof v === "object" && v !== null ? JSON.stringify(v, null, 1) : String(v)})));
  }
  return table;
}
