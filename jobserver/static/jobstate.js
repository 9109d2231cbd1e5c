// A job record (as GET /api/v1/jobs/{id} shows it) moved on by its events.
// Rules: the record's `last_seq` is what it already reflects: an event at or
// before it changes nothing (a list read after the stream opened may be newer
// than events still arriving), so applying is idempotent and ordered by seq.

const STEP_DONE = new Set(["Succeeded", "Failed", "Skipped", "Cancelled"]);

// Apply `e` to `job` in place; true when anything changed.
export function applyEvent(job, e) {
  if (e.seq <= (job.last_seq || 0)) return false;
  job.last_seq = e.seq;
  switch (e.type) {
    case "queued":
      job.status = "QUEUED";
      break;
    case "started":
      job.status = "RUNNING";
      job.started_at = job.started_at || e.ts;
      job.pid = e.pid;
      job.command = e.command;
      if (e.step) stepOf(job, e.step, e.ts).status = "Running";
      break;
    case "progress":
      job.progress = {pct: e.pct, at: e.at, of: e.of, message: e.message, step: e.step};
      if (e.step) stepOf(job, e.step, e.ts).progress_pct = e.pct;
      break;
    case "step": {
      const step = stepOf(job, e.name, e.ts);
      step.status = e.status;
      if (e.status === "Running") step.started_at = step.started_at || e.ts;
      if (STEP_DONE.has(e.status)) {
        step.completed_at = e.ts;
        if (e.status === "Succeeded") step.progress_pct = 100;
      }
      break;
    }
    case "result":
      job.result = e.data;
      break;
    case "error":
      job.errors = [...(job.errors || []), {code: e.code, message: e.message,
                                            remediation: e.remediation, step: e.step}];
      break;
    case "warning":
      job.warnings = [...(job.warnings || []), e.message];
      break;
    case "finished":
      job.status = e.status;
      job.outcome = e.outcome;
      job.exit_code = e.exit_code ?? null;
      job.completed_at = e.ts;
      if (e.status === "SUCCEEDED") job.result_message = e.message ?? job.result_message;
      else job.error_message = e.message ?? job.error_message;
      job.log_snippet = e.log_snippet ?? job.log_snippet;
      break;
    case "deleted":
      job.deleted = true;
      break;
    default:
      return true;
  }
  return true;
}

function stepOf(job, name, ts) {
  job.steps = job.steps || [];
  let step = job.steps.find((s) => s.name === name);
  if (!step) {
    step = {name, status: "Pending", progress_pct: 0, started_at: null, completed_at: null,
            errors: []};
    job.steps.push(step);
  }
  return step;
}
