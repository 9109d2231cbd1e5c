// Small helpers shared by the page's modules: DOM building, times, durations.
// Rules: text from the server only ever goes in through textContent (never
// innerHTML); styles only by class or CSSOM (the page's CSP has no inline style).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

export function parseTime(iso) {
  return iso ? Date.parse(iso) : null;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit",
                                                  hour12: false});
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return "—";
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60), rest = Math.round(s % 60);
  if (m < 60) return `${m} m ${String(rest).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${String(m % 60).padStart(2, "0")} m`;
}

// How long a job ran (or has been running, or waited when still queued).
export function jobDuration(job, now = Date.now()) {
  const started = parseTime(job.started_at), done = parseTime(job.completed_at);
  if (started === null) return null;
  return (done ?? now) - started;
}

export function progressPct(job) {
  const p = job.progress;
  if (!p) return job.status === "SUCCEEDED" ? 100 : null;
  if (typeof p.pct === "number") return Math.max(0, Math.min(100, p.pct));
  if (p.of) return Math.max(0, Math.min(100, 100 * p.at / p.of));
  return null;
}

// A progress bar: <div class="bar"><div class="fill"></div></div>; null pct: indeterminate.
export function progressBar(pct, status) {
  const fill = el("div", {class: "fill"});
  const bar = el("div", {class: `bar ${status || ""}`, role: "progressbar",
                         "aria-valuemin": 0, "aria-valuemax": 100}, fill);
  setProgress(bar, pct, status);
  return bar;
}

export function setProgress(bar, pct, status) {
  const fill = bar.firstChild;
  bar.className = `bar ${status || ""}${pct === null ? " unknown" : ""}`;
  if (pct === null) {
    bar.removeAttribute("aria-valuenow");
    fill.style.width = status === "RUNNING" ? "" : "0%";
  } else {
    bar.setAttribute("aria-valuenow", String(Math.round(pct)));
    fill.style.width = `${pct}%`;
  }
}

export function statusBadge(status) {
  return el("span", {class: `badge ${status}`, text: status.toLowerCase()});
}

export function shortId(id) {
  return id.slice(0, 8);
}
