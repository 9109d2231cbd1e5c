// The job list: one page of GET /api/v1/jobs, kept live by GET /api/v1/events
// (sse.js). Rules: no polling. The events stream is opened first; when it is open the
// list is read, then every event moves its job on (`applyEvent`, by seq, so an
// event the list already reflects changes nothing); events that arrive while
// the list is being read wait for it. A job the page does not know yet is read
// once. When the stream ends (the server dropped a laggard, or restarted) it
// is opened again and the list is read again. Filters go to the server;
// "More" follows `next_cursor`.

import {api, session} from "./session.js";
import {applyEvent} from "./jobstate.js";
import {SseStream} from "./sse.js";
import {$, el, fmtDuration, fmtTime, jobDuration, progressBar, progressPct, setProgress,
        shortId, statusBadge, TERMINAL} from "./util.js";

const PAGE = 50;
const MAX_WAITING = 5000; // events held while the list loads; more means read it again

export class JobList {
  constructor(root, {onSelect}) {
    this.root = root;
    this.onSelect = onSelect;
    this.jobs = new Map();
    this.rows = new Map();
    this.order = [];
    this.cursor = null;
    this.waiting = null; // events that arrived while the list was being read
    this.fetching = new Map(); // job id -> its events that came while it was read
    this.selected = null;
    this.source = null;
    this.body = $("#job-rows", root);
    this.state = $("#live-state");
    this.more = $("#more", root);
    this.more.addEventListener("click", () => this.loadMore());
    for (const id of ["#filter-status", "#filter-template"]) {
      $(id, root).addEventListener("change", () => this.reload());
    }
    this.frame = 0;
    this.dirty = new Set();
    this.generation = 0;
  }

  get filters() {
    return {status: $("#filter-status", this.root).value,
            template: $("#filter-template", this.root).value};
  }

  setTemplates(names) {
    const select = $("#filter-template", this.root);
    select.replaceChildren(el("option", {value: "", text: "all templates"}),
                           ...names.map((n) => el("option", {value: n, text: n})));
  }

  start() {
    this.root.classList.toggle("admin", session.isAdmin);
    this.connect();
  }

  connect() {
    this.stop();
    this.setState("connecting");
    this.source = new SseStream("/api/v1/events", {
      onOpen: () => { this.setState("live"); this.reload(); },
      onEvents: (events) => { for (const e of events) this.onEvent(JSON.parse(e.data)); },
      onEnd: (why) => this.setState(why === "dropped" ? "reconnecting" : "offline"),
    });
  }

  stop() {
    if (this.source) this.source.close();
    this.source = null;
  }

  setState(state) {
    this.state.dataset.state = state;
    this.state.textContent = state;
  }

  query(cursor) {
    const q = new URLSearchParams({limit: String(PAGE)});
    const {status, template} = this.filters;
    if (status) q.set("status", status);
    if (template) q.set("template", template);
    if (cursor) q.set("cursor", cursor);
    return `/api/v1/jobs?${q}`;
  }

  async reload() {
    this.waiting = this.waiting || [];
    const generation = ++this.generation;
    let page;
    try {
      page = await api(this.query(null));
    } catch (e) {
      if (generation !== this.generation) return;
      this.waiting = null;
      this.root.dataset.error = e.message;
      return;
    }
    if (generation !== this.generation) return; // a newer read (other filters) wins
    delete this.root.dataset.error;
    this.jobs.clear();
    this.order = [];
    this.add(page.jobs);
    this.cursor = page.next_cursor;
    const waiting = this.waiting;
    this.waiting = null;
    this.render();
    for (const e of waiting) this.onEvent(e);
  }

  async loadMore() {
    if (!this.cursor) return;
    const page = await api(this.query(this.cursor));
    this.add(page.jobs);
    this.cursor = page.next_cursor;
    this.render();
  }

  add(jobs) {
    for (const job of jobs) {
      if (this.jobs.has(job.id)) continue;
      this.jobs.set(job.id, job);
      this.order.push(job.id);
    }
  }

  // A job the page just made (the submit answer): shown now, kept live by the stream.
  upsert(job) {
    if (this.merge(job)) this.render();
  }

  // Keep the newer of two readings of a job (the higher last_seq); true if shown anew.
  merge(job) {
    const known = this.jobs.get(job.id);
    if (known) {
      if (job.last_seq > known.last_seq) {
        this.jobs.set(job.id, job);
        this.markDirty(job.id);
      }
      return false;
    }
    if (!this.matches(job)) return false;
    this.jobs.set(job.id, job);
    this.order.unshift(job.id);
    this.order.sort((a, b) => (this.jobs.get(b).created_at > this.jobs.get(a).created_at ? 1 : -1));
    return true;
  }

  matches(job) {
    const {status, template} = this.filters;
    return (!status || job.status === status) && (!template || job.template === template);
  }

  onEvent(e) {
    if (this.waiting) {
      this.waiting.push(e);
      if (this.waiting.length > MAX_WAITING) this.waiting.length = 0;
      return;
    }
    const early = this.fetching.get(e.job_id);
    if (early) {
      if (early.length < MAX_WAITING) early.push(e);
      return;
    }
    const job = this.jobs.get(e.job_id);
    if (!job) {
      if (e.type !== "deleted") this.fetchNew(e.job_id, e);
      return;
    }
    if (e.type === "deleted") {
      this.remove(e.job_id);
      return;
    }
    if (applyEvent(job, e)) {
      if (!this.matches(job)) this.remove(job.id);
      else this.markDirty(job.id);
    }
  }

  // Read a job the list does not have; its events that arrive meanwhile wait for it.
  async fetchNew(id, first) {
    const early = [first];
    this.fetching.set(id, early);
    let job = null;
    try {
      job = await api(`/api/v1/jobs/${id}`);
    } catch {
      // Deleted meanwhile, or not ours after all: nothing to show.
    } finally {
      this.fetching.delete(id);
    }
    if (job && this.merge(job)) this.render();
    for (const e of early) if (this.jobs.has(id)) this.onEvent(e);
  }

  remove(id) {
    this.jobs.delete(id);
    this.order = this.order.filter((x) => x !== id);
    this.render();
  }

  markDirty(id) {
    this.dirty.add(id);
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        for (const dirty of this.dirty) this.updateRow(dirty);
        this.dirty.clear();
      });
    }
  }

  select(id) {
    this.selected = id;
    for (const [rowId, tr] of this.rows) tr.classList.toggle("selected", rowId === id);
  }

  render() {
    this.rows.clear();
    const rows = this.order.map((id) => {
      const tr = this.makeRow(this.jobs.get(id));
      this.rows.set(id, tr);
      return tr;
    });
    this.body.replaceChildren(...rows);
    if (!rows.length) {
      this.body.append(el("tr", {class: "empty"}, el("td", {colspan: 8, text: "No jobs yet."})));
    }
    this.more.hidden = !this.cursor;
    this.select(this.selected);
  }

  makeRow(job) {
    const tr = el("tr", {dataset: {id: job.id}, tabindex: 0,
                         onclick: () => this.onSelect(job.id),
                         onkeydown: (e) => { if (e.key === "Enter") this.onSelect(job.id); }});
    tr.append(el("td", {class: "status"}), el("td", {class: "template"}),
              el("td", {class: "id mono"}), el("td", {class: "owner"}),
              el("td", {class: "created"}), el("td", {class: "started"}),
              el("td", {class: "duration"}),
              el("td", {class: "progress"}, progressBar(null, job.status)));
    this.fill(tr, job);
    return tr;
  }

  updateRow(id) {
    const tr = this.rows.get(id), job = this.jobs.get(id);
    if (tr && job) this.fill(tr, job);
  }

  fill(tr, job) {
    tr.dataset.status = job.status;
    tr.querySelector(".status").replaceChildren(statusBadge(job.status));
    tr.querySelector(".template").textContent = job.template;
    tr.querySelector(".id").textContent = shortId(job.id);
    tr.querySelector(".id").title = job.id;
    tr.querySelector(".owner").textContent = job.owner;
    tr.querySelector(".created").textContent = fmtTime(job.created_at);
    tr.querySelector(".started").textContent = fmtTime(job.started_at);
    tr.querySelector(".duration").textContent = fmtDuration(jobDuration(job));
    const pct = progressPct(job);
    const bar = tr.querySelector(".bar");
    setProgress(bar, pct, job.status);
    bar.title = job.progress && job.progress.message ? job.progress.message : "";
  }

  // Running jobs' durations move with the clock (no request is made).
  tick() {
    for (const [id, tr] of this.rows) {
      const job = this.jobs.get(id);
      if (job && job.started_at && !TERMINAL.has(job.status)) {
        tr.querySelector(".duration").textContent = fmtDuration(jobDuration(job));
      }
    }
  }
}
