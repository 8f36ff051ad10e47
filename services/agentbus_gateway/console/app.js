// The agentbus web console: jobs (every job the key may see, newest first, with live
// status and progress), a job's page (partial results streaming in, the final summary, the
// archived event timeline, a cancel button), the running workers, the dead letters with
// replay, and the tenants (limits, use, queues).
import { ApiError, apiKey, call, setApiKey, streamJob } from "./api.js";

const JOBS_SHOWN = 100;
const POLL_MS = 1000;
const view = document.getElementById("view");
let cleanup = [];

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) el.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function every(ms, fn) {
  fn();
  const timer = setInterval(fn, ms);
  cleanup.push(() => clearInterval(timer));
}

function percent(progress) {
  return `${Math.round((progress || 0) * 100)}%`;
}

function statusCell(job) {
  return h("span", { class: `status ${job.status}`, "data-testid": "status" }, job.status);
}

function showError(where, err) {
  where.replaceChildren(h("p", { class: "error" }, err instanceof ApiError ? err.message : String(err)));
}

// --- jobs ------------------------------------------------------------------------------

function jobsView() {
  const message = h("p", { class: "muted", "data-testid": "upload-message" });
  const file = h("input", { type: "file", name: "file", "data-testid": "file" });
  const text = h("textarea", { name: "text", placeholder: "…or paste a document here" });
  const priority = h("select", { name: "priority" },
    ["normal", "high", "low"].map((p) => h("option", { value: p }, p)));
  const submit = async (event) => {
    event.preventDefault();
    try {
      let reply;
      if (file.files.length) {
        const form = new FormData();
        form.append("file", file.files[0]);
        form.append("priority", priority.value);
        reply = await call("POST", "/v1/jobs", form);
      } else {
        reply = await call("POST", "/v1/jobs", { text: text.value, priority: priority.value });
      }
      location.hash = `#/jobs/${reply.job_id}`;
    } catch (err) {
      showError(message, err);
    }
  };
  const rows = h("tbody", { "data-testid": "jobs" });
  const note = h("p", { class: "muted", "data-testid": "jobs-message" });
  const filter = h("select", { name: "status", "data-testid": "status-filter" },
    h("option", { value: "" }, "any status"),
    ["accepted", "running", "reducing", "completed", "failed", "canceled"].map((s) => h("option", { value: s }, s)));
  const table = h("table", {},
    h("thead", {}, h("tr", {}, ["job", "title", "status", "progress", "tenant", "created", "updated"].map((c) => h("th", {}, c)))),
    rows);
  view.replaceChildren(
    h("section", {}, h("h2", {}, "Submit a document"),
      h("form", { class: "upload", onsubmit: submit }, file, text,
        h("div", { class: "bar" }, h("label", {}, "priority ", priority),
          h("button", { type: "submit", "data-testid": "submit" }, "Submit")), message)),
    h("section", {}, h("h2", {}, "Jobs ", h("label", { class: "muted" }, "show ", filter)), note, table),
  );
  // every job the key may see (its tenant's; every tenant's for operate), newest first,
  // polled: GET /v1/jobs reads recent job states, one bounded call per poll
  let busy = false;
  const load = async () => {
    if (busy) return;
    busy = true;
    try {
      const query = filter.value ? `&status=${encodeURIComponent(filter.value)}` : "";
      const reply = await call("GET", `/v1/jobs?limit=${JOBS_SHOWN}${query}`);
      note.textContent = reply.jobs.length ? "" : "no jobs";
      rows.replaceChildren(...reply.jobs.map((job) => h("tr", { "data-job": job.job_id },
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.job_id)}` }, job.job_id.slice(0, 12))),
        h("td", {}, job.title), h("td", {}, statusCell(job)),
        h("td", {}, h("div", { class: "bar" }, h("progress", { max: 1, value: job.progress }),
          h("span", { "data-testid": "progress" }, percent(job.progress)))),
        h("td", {}, job.tenant), h("td", { class: "muted" }, job.created_at.slice(11, 19)),
        h("td", { class: "muted" }, job.updated_at.slice(11, 19)))));
    } catch (err) {
      showError(note, err);
    } finally {
      busy = false;
    }
  };
  filter.addEventListener("change", load);
  every(POLL_MS, load);
}

function jobView(jobId) {
  const status = h("span", { class: "status", "data-testid": "status" }, "…");
  const bar = h("progress", { max: 1, value: 0 });
  const pct = h("span", { "data-testid": "progress" }, "0%");
  const summary = h("div", { class: "summary", "data-testid": "summary", hidden: true });
  const error = h("p", { class: "error", "data-testid": "error" });
  const parts = h("div", { class: "parts", "data-testid": "parts" });
  const timeline = h("tbody");
  const cancel = h("button", {
    class: "danger", "data-testid": "cancel",
    onclick: async () => {
      cancel.disabled = true;
      try {
        await call("DELETE", `/v1/jobs/${jobId}?reason=${encodeURIComponent("canceled in the console")}`);
      } catch (err) {
        showError(error, err);
        cancel.disabled = false;
      }
    },
  }, "Cancel");
  const loadTimeline = async () => {
    try {
      const reply = await call("GET", `/v1/jobs/${jobId}/events`);
      timeline.replaceChildren(...reply.events.map((e) => h("tr", {},
        h("td", { class: "muted" }, e.ts.slice(11, 23)), h("td", {}, e.kind),
        h("td", {}, e.agent_id), h("td", { class: "muted" }, e.task_id || ""))));
    } catch (err) {
      showError(timeline, err);
    }
  };
  view.replaceChildren(
    h("section", {}, h("h2", {}, `Job ${jobId}`),
      h("div", { class: "bar" }, status, bar, pct, cancel), error),
    h("section", {}, h("h2", {}, "Summary"), summary),
    h("section", {}, h("h2", {}, "Partial results"), parts),
    h("section", {}, h("h2", {}, "Event timeline (archive) ",
      h("button", { onclick: loadTimeline }, "Refresh")),
      h("div", { class: "timeline" }, h("table", {}, timeline))),
  );
  const texts = new Map();
  const partEl = (key, label) => {
    if (!texts.has(key)) {
      const el = h("div", { class: "part" }, h("strong", {}, label), " ", h("span"));
      texts.set(key, el);
      parts.append(el);
    }
    return texts.get(key).lastChild;
  };
  const stop = streamJob(jobId, (kind, item) => {
    const key = `${item.level}-${item.index}`;
    const label = `level ${item.level} · part ${item.index}`;
    if (kind === "chunk") partEl(key, label).textContent = item.text;
    else if (kind === "delta") {
      const el = partEl(key, label);
      el.textContent = item.restart ? item.text : el.textContent + item.text;
    } else if (kind === "reduce") parts.append(h("p", { class: "muted" }, `reduce level ${item.level}: ${item.count} tasks`));
  });
  cleanup.push(stop);
  let ended = false;
  every(POLL_MS, async () => {
    if (ended) return;
    try {
      const job = await call("GET", `/v1/jobs/${jobId}`);
      status.textContent = job.status;
      status.className = `status ${job.status}`;
      bar.value = job.progress;
      pct.textContent = percent(job.progress);
      if (job.summary) {
        summary.textContent = job.summary;
        summary.hidden = false;
      }
      if (job.error) error.textContent = job.error;
      if (["completed", "failed", "canceled"].includes(job.status)) {
        ended = true;
        cancel.disabled = true;
        setTimeout(loadTimeline, 500);
      }
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) showError(error, err);
    }
  });
}

// --- workers and dead letters ------------------------------------------------------------

function workersView() {
  const rows = h("tbody");
  view.replaceChildren(h("section", {}, h("h2", {}, "Workers"), h("table", {},
    h("thead", {}, h("tr", {}, ["worker", "skill", "backend", "state", "in flight", "started"].map((c) => h("th", {}, c)))),
    rows)));
  every(2000, async () => {
    try {
      const reply = await call("GET", "/v1/workers");
      rows.replaceChildren(...reply.workers.map((w) => h("tr", { "data-worker": w.id },
        h("td", {}, w.id), h("td", {}, w.skill), h("td", {}, w.backend), h("td", {}, w.state),
        h("td", {}, `${w.in_flight} / ${w.concurrency}`), h("td", { class: "muted" }, w.started))));
    } catch (err) {
      showError(rows, err);
    }
  });
}

function dlqView() {
  const rows = h("tbody");
  const message = h("p", { class: "muted" });
  const load = async () => {
    try {
      const reply = await call("GET", "/v1/dlq");
      rows.replaceChildren(...reply.dead_letters.map((d) => h("tr", { "data-dlq": d.id },
        h("td", {}, d.id), h("td", {}, `${d.stream} ${d.subject}`), h("td", {}, d.job_id || ""),
        h("td", {}, d.deliveries), h("td", {}, d.reason),
        h("td", {}, h("button", {
          onclick: async () => {
            try {
              const r = await call("POST", `/v1/dlq/${d.id}/replay`);
              message.textContent = `replayed ${r.id} to ${r.subject} (${r.stream} seq ${r.seq})`;
              load();
            } catch (err) {
              showError(message, err);
            }
          },
        }, "Replay")))));
    } catch (err) {
      showError(message, err);
    }
  };
  view.replaceChildren(h("section", {}, h("h2", {}, "Dead letters"), message, h("table", {},
    h("thead", {}, h("tr", {}, ["id", "from", "job", "tries", "reason", ""].map((c) => h("th", {}, c)))),
    rows)));
  load();
}

function tenantsView() {
  const rows = h("tbody", { "data-testid": "tenants" });
  const message = h("p", { class: "muted" });
  view.replaceChildren(h("section", {}, h("h2", {}, "Tenants"), message, h("table", {},
    h("thead", {}, h("tr", {}, ["tenant", "weight", "in flight / cap", "queued", "jobs this minute",
      "tokens this window", "window turns in"].map((c) => h("th", {}, c)))),
    rows)));
  const limit = (v) => (v === null || v === undefined ? "-" : v);
  every(2000, async () => {
    try {
      const reply = await call("GET", "/v1/tenants");
      rows.replaceChildren(...reply.tenants.map((t) => h("tr", { "data-tenant": t.tenant },
        h("td", {}, t.tenant), h("td", {}, t.weight), h("td", {}, `${t.in_flight} / ${limit(t.max_in_flight)}`),
        h("td", {}, t.queued),
        h("td", {}, `${t.jobs_this_minute} / ${limit(t.jobs_per_minute)} (${t.over_rate})`),
        h("td", {}, `${t.tokens_this_window} / ${limit(t.token_budget)} (${t.over_budget})`),
        h("td", { class: "muted" }, `${t.window_turns_in_s} s`))));
      message.textContent = "";
    } catch (err) {
      showError(message, err);
    }
  });
}

// --- routing and the key -----------------------------------------------------------------

async function showWho() {
  const who = document.getElementById("whoami");
  if (!apiKey()) {
    who.textContent = "no key";
    return;
  }
  try {
    const me = await call("GET", "/v1/whoami");
    who.textContent = `${me.name} · ${me.tenant} · ${me.role}`;
  } catch (err) {
    who.textContent = err.message;
  }
}

function route() {
  for (const stop of cleanup) stop();
  cleanup = [];
  const hash = location.hash || "#/jobs";
  const [, page, id] = hash.split("/");
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.nav === page);
  }
  if (page === "jobs" && id) jobView(decodeURIComponent(id));
  else if (page === "workers") workersView();
  else if (page === "dlq") dlqView();
  else if (page === "tenants") tenantsView();
  else jobsView();
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(document.getElementById("api-key").value.trim());
  document.getElementById("api-key").value = "";
  showWho();
  route();
});
window.addEventListener("hashchange", route);
showWho();
route();
