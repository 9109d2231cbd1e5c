// The run form, made from a template's typed params (GET /api/v1/templates).
// Rules: every field is checked in the page as the server would (type,
// required, min/max, choices, length); a pattern is the server's to check (it
// is a Python regular expression). A refusal from the server names its field
// (`params.NAME`): the message stays on that field until the user changes it.

import {api} from "./session.js";
import {$, el} from "./util.js";

const MAX_STRING = 4096;

export class RunForm {
  constructor(root, {onSubmitted}) {
    this.root = root;
    this.onSubmitted = onSubmitted;
    this.templates = [];
    this.select = $("#run-template", root);
    this.fields = $("#run-fields", root);
    this.about = $("#run-about", root);
    this.error = $("#run-error", root);
    this.select.addEventListener("change", () => this.build());
    root.addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
  }

  async load() {
    const {templates} = await api("/api/v1/templates");
    this.templates = templates;
    this.select.replaceChildren(...templates.map((t) => el("option", {value: t.name, text: t.name})));
    this.build();
    return templates.map((t) => t.name);
  }

  get template() {
    return this.templates.find((t) => t.name === this.select.value);
  }

  build() {
    const t = this.template;
    this.setError(null);
    this.fields.replaceChildren();
    if (!t) return;
    const steps = t.steps.length ? ` · steps: ${t.steps.join(" → ")}` : "";
    this.about.textContent = (t.description || "") + steps;
    for (const p of t.params) this.fields.append(this.field(p));
    if (!t.params.length) this.fields.append(el("p", {class: "hint", text: "No parameters."}));
  }

  field(p) {
    const id = `param-${p.name}`;
    let input;
    if (p.type === "bool") {
      input = el("input", {type: "checkbox", id, checked: p.default === true});
    } else if (p.type === "choice") {
      input = el("select", {id}, (p.required || p.default !== undefined ? [] : [el("option", {value: "", text: "—"})]),
                 p.choices.map((c) => el("option", {value: c, text: c, selected: c === p.default})));
    } else {
      const numeric = p.type === "int" || p.type === "float";
      input = el("input", {id, type: numeric ? "number" : "text", min: p.min, max: p.max,
                           step: p.type === "int" ? 1 : numeric ? "any" : undefined,
                           maxlength: numeric ? undefined : MAX_STRING,
                           placeholder: p.description || ""});
      if (p.default !== undefined) input.value = String(p.default);
    }
    input.name = p.name;
    input.dataset.field = `params.${p.name}`;
    const message = el("div", {class: "field-error", id: `${id}-error`, role: "alert"});
    input.setAttribute("aria-describedby", message.id);
    const clear = () => this.setFieldError(input, null);
    input.addEventListener("input", clear);
    input.addEventListener("change", clear);
    const bounds = [p.min !== undefined ? `≥ ${p.min}` : "", p.max !== undefined ? `≤ ${p.max}` : ""]
      .filter(Boolean).join(", ");
    const pattern = p.pattern ? `matching ${p.pattern}` : "";
    const hint = [p.type, bounds, pattern, p.description].filter(Boolean).join(" · ");
    return el("div", {class: `field ${p.type}`, dataset: {param: p.name}},
              el("label", {for: id}, p.name, p.required ? el("span", {class: "req", text: " *"}) : null),
              input, el("div", {class: "hint", text: hint}), message);
  }

  // The params to send, or null after marking the fields that are wrong.
  collect() {
    const params = {};
    let ok = true;
    for (const p of this.template.params) {
      const input = this.fields.querySelector(`[data-field="params.${CSS.escape(p.name)}"]`);
      const [value, problem] = read(p, input);
      this.setFieldError(input, problem);
      if (problem) ok = false;
      else if (value !== undefined) params[p.name] = value;
    }
    return ok ? params : null;
  }

  async submit() {
    const t = this.template;
    if (!t) return;
    this.setError(null);
    const params = this.collect();
    if (params === null) return;
    const button = $("button[type=submit]", this.root);
    button.disabled = true;
    try {
      const job = await api("/api/v1/jobs", {method: "POST", body: {template: t.name, params}});
      this.onSubmitted(job);
    } catch (e) {
      const input = e.field ? this.fields.querySelector(`[data-field="${CSS.escape(e.field)}"]`) : null;
      if (input) this.setFieldError(input, e.message, {fromServer: true});
      else this.setError(e.message);
    } finally {
      button.disabled = false;
    }
  }

  setFieldError(input, message, {fromServer = false} = {}) {
    const box = input.closest(".field");
    const out = box.querySelector(".field-error");
    out.textContent = message || "";
    box.classList.toggle("invalid", Boolean(message));
    input.setAttribute("aria-invalid", message ? "true" : "false");
    if (fromServer) box.dataset.server = "1"; else delete box.dataset.server;
    if (message && fromServer) input.focus();
  }

  setError(message) {
    this.error.textContent = message || "";
    this.error.hidden = !message;
  }
}

// [value, problem]: value undefined means "not given" (the server's default applies).
function read(p, input) {
  if (p.type === "bool") return [input.checked, null];
  const raw = input.value.trim();
  if (input.validity && input.validity.badInput) {
    return [undefined, `must be ${p.type === "int" ? "an integer" : "a number"}`];
  }
  if (raw === "") {
    if (p.required && p.default === undefined) return [undefined, "is required"];
    return [undefined, null];
  }
  if (p.type === "choice") {
    return p.choices.includes(raw) ? [raw, null] : [undefined, `must be one of ${p.choices.join(", ")}`];
  }
  if (p.type === "int" || p.type === "float") {
    const n = Number(raw);
    if (!Number.isFinite(n)) return [undefined, `must be ${p.type === "int" ? "an integer" : "a number"}`];
    if (p.type === "int" && !Number.isInteger(n)) return [undefined, "must be an integer"];
    if (p.min !== undefined && n < p.min) return [undefined, `must be at least ${p.min}`];
    if (p.max !== undefined && n > p.max) return [undefined, `must be at most ${p.max}`];
    return [n, null];
  }
  if (input.value.length > MAX_STRING) return [undefined, `is longer than ${MAX_STRING} characters`];
  return [input.value, null];
}
