// The gateway's REST API from the browser: the API key (kept in this tab's localStorage),
// JSON calls, and a job's live stream read with fetch (EventSource cannot send the key),
// resumed after a dropped connection with Last-Event-ID: nothing lost or repeated.

const KEY_STORAGE = "agentbus.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  localStorage.setItem(KEY_STORAGE, key);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  const init = { method, headers };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(response.status, data.error || `${response.status} ${response.statusText}`);
  }
  return data;
}

function parseEvent(block) {
  const event = { id: null, event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const name = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (name === "id") event.id = value;
    else if (name === "event") event.event = value;
    else if (name === "data") event.data += value;
  }
  return event.data ? event : null;
}

// Calls onItem(kind, item) for every partial result of the job until its final one;
// returns a function that stops reading.
export function streamJob(jobId, onItem, { retryMs = 1000 } = {}) {
  let lastId = null;
  let stopped = false;
  let controller = null;
  const run = async () => {
    while (!stopped) {
      controller = new AbortController();
      const headers = { Authorization: `Bearer ${apiKey()}` };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      try {
        const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/stream`, {
          headers, signal: controller.signal,
        });
        if (response.status === 404 || response.status === 401 || response.status === 403) {
          await new Promise((r) => setTimeout(r, retryMs));
          continue;
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = parseEvent(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (!event) continue;
            if (event.id !== null) lastId = event.id;
            const item = JSON.parse(event.data);
            onItem(event.event, item);
            if (["completed", "failed", "canceled", "error"].includes(event.event)) {
              stopped = true;
              return;
            }
          }
        }
      } catch (err) {
        if (stopped) return;
      }
      if (!stopped) await new Promise((r) => setTimeout(r, retryMs));
    }
  };
  run();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}
