// Server-Sent Events read with fetch() instead of EventSource.
// Rules: the token goes in the Authorization header (never in a URL); the
// reader hands over raw events ({type, id, data}, data not decoded) a chunk at
// a time, so a consumer that cannot keep up decodes only what it will show;
// resuming sends `Last-Event-ID` (the last `id:` seen); a dropped stream is
// opened again after a pause that doubles up to MAX_DELAY; a 204 (nothing
// more to send), a 401 or any other refusal ends it for good.

import {session} from "./session.js";

const FIRST_DELAY = 1000;
const MAX_DELAY = 15000;

export class SseStream {
  constructor(url, {onOpen = () => {}, onEvents, onEnd = () => {}} = {}) {
    this.url = url;
    this.onOpen = onOpen;
    this.onEvents = onEvents;
    this.onEnd = onEnd;
    this.lastId = null;
    this.closed = false;
    this.controller = null;
    this.delay = FIRST_DELAY;
    this.run();
  }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    while (!this.closed) {
      const outcome = await this.once().catch(() => "dropped");
      if (this.closed) return;
      if (outcome !== "dropped") {
        this.closed = true;
        this.onEnd(outcome);
        return;
      }
      this.onEnd("dropped");
      await new Promise((resolve) => setTimeout(resolve, this.delay));
      this.delay = Math.min(MAX_DELAY, this.delay * 2);
    }
  }

  // One connection: "done" (204), "refused" (401), "HTTP n", or "dropped".
  async once() {
    this.controller = new AbortController();
    const headers = {"Authorization": `Bearer ${session.token}`, "Accept": "text/event-stream"};
    if (this.lastId !== null) headers["Last-Event-ID"] = this.lastId;
    const r = await fetch(this.url, {headers, signal: this.controller.signal, cache: "no-store"});
    if (r.status === 204) return "done";
    if (r.status === 401) {
      window.dispatchEvent(new CustomEvent("jobserver:unauthorized"));
      return "refused";
    }
    if (!r.ok) return `HTTP ${r.status}`;
    this.delay = FIRST_DELAY;
    this.onOpen();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done || this.closed) return "dropped";
      buffer += value.includes("\r") ? value.replace(/\r\n?/g, "\n") : value;
      const cut = buffer.lastIndexOf("\n\n");
      if (cut < 0) continue;
      const events = this.parse(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (events.length) this.onEvents(events);
    }
  }

  parse(text) {
    const events = [];
    for (const block of text.split("\n\n")) {
      let type = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment (keep-alive)
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") type = value;
        else if (field === "id") id = value;
      }
      if (id !== null) this.lastId = id;
      if (data.length) events.push({type, id, data: data.join("\n")});
    }
    return events;
  }
}
