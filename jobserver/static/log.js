// The log pane: a window of a job's output lines, however long the log is.
// Rules: at most WINDOW lines are in the DOM and in memory; the window follows
// the live stream ("at the tail") or sits anywhere in the history, fetched by
// seq from GET /api/v1/jobs/{id}/events in pages of PAGE. Scrolling near the
// top fetches the page before the window, near the bottom the page after it;
// what falls out of the far side is dropped. Live lines come once per
// animation frame (`take`, from job.js); while the user has scrolled up,
// following pauses, and when the window is full the live lines are counted,
// not kept. Every line is added once: a line is taken only when its seq is
// past `end`, the last seq the window covers.

import {api} from "./session.js";
import {renderAnsi} from "./ansi.js";
import {el} from "./util.js";

export const WINDOW = 3000;
export const PAGE = 1000; // the server's largest page of events
const NEAR = 300; // pixels from an edge that fetch the next page
const MAX_SHOWN_CHARS = 20000; // a longer line is cut in the view (the download has it whole)

export class LogView {
  constructor(jobId, {after, onChange}) {
    this.jobId = jobId;
    this.onChange = onChange || (() => {});
    this.end = after; // the last seq the window covers
    this.liveSeq = after; // the last seq the live stream delivered
    this.atTail = true;
    this.follow = true;
    this.jumping = false;  // jumpToEnd's own scrolls are not the user's
    this.olderDone = after === 0;
    this.pending = []; // lines taken while a page was being fetched
    this.pendingEnd = after;
    this.restartAt = null; // set when lines were skipped: the window starts again there
    this.missed = 0; // live lines not kept while away from the tail
    this.busy = false;
    this.list = el("div", {class: "lines"});
    this.pane = el("div", {class: "log", tabindex: 0}, this.list);
    this.pane.addEventListener("scroll", () => this.onScroll());
  }

  get lineCount() { return this.list.childElementCount; }
  get firstSeq() { return this.list.firstElementChild ? Number(this.list.firstElementChild.dataset.seq) : null; }
  get lastSeq() { return this.list.lastElementChild ? Number(this.list.lastElementChild.dataset.seq) : null; }

  // The log lines the live stream brought since the last frame, up to `lastSeq`
  // (the stream's position); `gap`: lines before these were skipped to keep up.
  take(lines, lastSeq, gap) {
    if (lastSeq <= this.liveSeq) return;
    this.liveSeq = lastSeq;
    if (this.atTail && gap && !this.follow) this.atTail = false; // the user is reading
    if (!this.atTail) {
      this.missed += lines.length;
      this.onChange();
      return;
    }
    if (gap) {
      this.pending = [];
      this.restartAt = (lines.length ? lines[0].seq : lastSeq + 1) - 1;
    }
    this.pending.push(...lines);
    if (this.pending.length > WINDOW) {
      this.pending = this.pending.slice(-WINDOW);
      this.restartAt = this.pending[0].seq - 1;
    }
    this.pendingEnd = lastSeq;
    this.flush();
  }

  flush() {
    if (this.busy) return; // the page being fetched comes first; its end flushes again
    if (this.restartAt !== null) {
      this.clear();
      this.end = this.restartAt;
      this.restartAt = null;
      this.olderDone = this.end === 0;
    }
    const lines = this.pending.filter((e) => e.seq > this.end);
    this.pending = [];
    if (!this.atTail || (!this.follow && this.lineCount + lines.length > WINDOW)) {
      // Away from the tail, or the user is reading a full window: count, do not add.
      this.atTail = false;
      this.missed += lines.length;
      this.onChange();
      return;
    }
    this.end = Math.max(this.end, this.pendingEnd);
    if (lines.length) this.list.append(...lines.map(row));
    if (this.follow) {
      this.trimTop(this.lineCount - WINDOW);
      this.pane.scrollTop = this.pane.scrollHeight;
    }
    this.onChange();
  }

  onScroll() {
    if (this.jumping) return;  // the page's own scrolls while it jumps to the end
    const fromBottom = this.pane.scrollHeight - this.pane.scrollTop - this.pane.clientHeight;
    const wasFollowing = this.follow;
    // Only a move away from the bottom pauses following (the page's own scrolls,
    // while a flood is skipped ahead, keep it); back at the tail's bottom resumes it.
    if (fromBottom >= 8) this.follow = false;
    else if (this.atTail) this.follow = true;
    if (this.follow !== wasFollowing) this.onChange();
    if (this.pane.scrollTop < NEAR) this.older();
    else if (fromBottom < NEAR && !this.atTail) this.newer();
  }

  // The page before the window's first line.
  async older() {
    if (this.busy || this.olderDone) return;
    this.busy = true;
    try {
      let before = this.firstSeq ?? this.end + 1;
      for (let tries = 0; tries < 8 && !this.olderDone; tries++) {
        const after = Math.max(0, before - 1 - PAGE);
        const page = await this.fetch(after, before - 1 - after);
        if (after === 0) this.olderDone = true;
        const lines = page.events.filter((e) => e.type === "log" && e.seq < before);
        if (lines.length) {
          const height = this.pane.scrollHeight;
          this.list.prepend(...lines.map(row));
          this.pane.scrollTop += this.pane.scrollHeight - height;
          const extra = this.lineCount - WINDOW;
          if (extra > 0) this.trimBottom(extra);
          break;
        }
        before = after + 1;
      }
    } finally {
      this.busy = false;
      if (this.pending.length || this.restartAt !== null) this.flush();
      this.onChange();
    }
  }

  // The page after the window's end; reaching the live stream's seq rejoins it.
  async newer() {
    if (this.busy || this.atTail) return;
    this.busy = true;
    try {
      const page = await this.fetch(this.end, PAGE);
      const events = page.events.filter((e) => e.seq > this.end);
      if (events.length) this.end = events[events.length - 1].seq;
      const lines = events.filter((e) => e.type === "log");
      if (lines.length) {
        this.list.append(...lines.map(row));
        this.trimTop(this.lineCount - WINDOW);
      }
      if (page.next_after === null && this.end >= this.liveSeq) {
        this.atTail = true;
        this.missed = 0;
      }
      if (this.follow && this.atTail) this.pane.scrollTop = this.pane.scrollHeight;
    } finally {
      this.busy = false;
      if (this.pending.length || this.restartAt !== null) this.flush();
      this.onChange();
    }
  }

  // Back to the newest lines, following them.
  async jumpToEnd() {
    if (this.busy) return;
    this.jumping = true;
    try {
      this.clear();
      this.end = Math.max(0, this.liveSeq - PAGE);
      this.olderDone = this.end === 0;
      this.atTail = false;
      this.follow = true;
      this.missed = 0;
      for (let tries = 0; tries < 8 && !this.atTail; tries++) await this.newer();
      this.pane.scrollTop = this.pane.scrollHeight;
    } finally {
      this.jumping = false;
      this.follow = true;
      this.onChange();
    }
  }

  fetch(after, limit) {
    const query = new URLSearchParams({after: String(after), limit: String(Math.max(1, limit))});
    return api(`/api/v1/jobs/${this.jobId}/events?${query}`);
  }

  trimTop(count) {
    if (count <= 0) return;
    const before = this.pane.scrollHeight;
    for (let i = 0; i < count; i++) this.list.firstElementChild.remove();
    this.olderDone = false;
    if (!this.follow) this.pane.scrollTop -= before - this.pane.scrollHeight;
  }

  trimBottom(count) {
    for (let i = 0; i < count; i++) this.list.lastElementChild.remove();
    this.end = this.lastSeq ?? this.end;
    this.atTail = false;
    this.follow = false;
  }

  clear() {
    this.list.replaceChildren();
  }
}

function row(event) {
  const line = el("div", {class: event.stream === "stderr" ? "ln err" : "ln out"});
  line.dataset.seq = event.seq;
  const text = event.line.length > MAX_SHOWN_CHARS
    ? `${event.line.slice(0, MAX_SHOWN_CHARS)} … (${event.line.length - MAX_SHOWN_CHARS} more characters)`
    : event.line;
  renderAnsi(line, text);
  return line;
}
