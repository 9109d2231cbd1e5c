// The page's entry: the session, the three parts (run form, job list, job
// view) and the address: `#job=ID` shows a job. No build step: ES modules,
// served from the package, nothing fetched from anywhere else.

import {session} from "./session.js";
import {JobList} from "./jobs.js";
import {JobView} from "./job.js";
import {RunForm} from "./form.js";
import {$} from "./util.js";

const list = new JobList($("#list"), {onSelect: (id) => show(id)});
const view = new JobView($("#job"), {onOpen: (id) => show(id), onGone: () => show(null)});
const form = new RunForm($("#run"), {
  onSubmitted: (job) => { list.upsert(job); show(job.id); },
});

function show(id) {
  const target = id ? `#job=${id}` : "#";
  if (location.hash !== target) history.pushState(null, "", id ? target : location.pathname);
  route();
}

function route() {
  const id = new URLSearchParams(location.hash.slice(1)).get("job");
  list.select(id);
  if (!id) view.close();
  else if (view.root.dataset.job !== id) view.open(id);
}

function signIn(message) {
  list.stop();
  document.body.dataset.session = "none";
  $("#signin-message").textContent = message || "";
}

async function begin() {
  document.body.dataset.session = "open";
  $("#who").textContent = `${session.sub} (${session.role})`;
  try {
    list.setTemplates(await form.load());
  } catch (e) {
    if (e.status !== 401) $("#run-error").textContent = e.message;
    return;
  }
  list.start();
  route();
}

$("#signin").addEventListener("submit", (e) => {
  e.preventDefault();
  session.set($("#signin-token").value.trim());
  $("#signin-token").value = "";
  if (session.token) begin();
});
$("#signout").addEventListener("click", () => { session.set(null); view.close(); signIn(""); });
window.addEventListener("jobserver:unauthorized", () => {
  session.set(null);
  view.close();
  signIn("The server refused the token (missing, expired or revoked). Make a new one with " +
         "the command below, or open the link the server printed.");
});
window.addEventListener("popstate", route);
window.addEventListener("hashchange", route);
setInterval(() => { list.tick(); view.tick(); }, 1000);

if (session.load()) begin();
else signIn("");
