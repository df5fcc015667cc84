// Talking to the lrlab API: the stored key, JSON calls, and event streams read with fetch().
//
// The key lives in localStorage and goes out as `Authorization: Bearer <key>` on every call. A 401 opens
// the key prompt once (concurrent calls wait on the same prompt) and the call is retried with the new key;
// a 401 changes nothing on the server, so retrying a POST is safe. EventSource cannot send headers, so
// streams are fetched too and parsed here as text/event-stream.

const KEY_STORAGE = "lrlab.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && Array.isArray(body.detail) ? body.detail : [];
    const text = detail.length
      ? detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ")
      : `HTTP ${status}`;
    super(text);
    this.status = status;
    this.detail = detail;
  }
}

export function storedKey() {
  return localStorage.getItem(KEY_STORAGE);
}

export function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  showKeyState();
}

export function showKeyState() {
  const state = document.getElementById("key-state");
  if (state) state.hidden = !storedKey();
}

let pendingPrompt = null;

/** Show the key prompt; resolves once a key has been entered and stored. */
function askForKey(message) {
  if (pendingPrompt) return pendingPrompt;
  const modal = document.getElementById("key-prompt");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-message").textContent = message;
  modal.hidden = false;
  input.value = "";
  input.focus();
  pendingPrompt = new Promise((resolve) => {
    form.addEventListener(
      "submit",
      (event) => {
        event.preventDefault();
        localStorage.setItem(KEY_STORAGE, input.value.trim());
        modal.hidden = true;
        pendingPrompt = null;
        showKeyState();
        resolve();
      },
      { once: true },
    );
  });
  return pendingPrompt;
}

function headers(extra) {
  const out = { ...extra };
  const key = storedKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

/** fetch() with the key; on a 401, ask for a key and try again with it. */
async function authorizedFetch(path, init) {
  for (;;) {
    const sent = storedKey();
    const resp = await fetch(path, { ...init, headers: headers(init.headers) });
    if (resp.status !== 401) return resp;
    await askForKey(
      sent ? "That key was refused (unknown or revoked). Enter another." : "This server requires an API key.",
    );
  }
}

/** A JSON call to the API; throws ApiError (with the field-naming `detail`) on any 4xx/5xx. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await authorizedFetch(path, init);
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/**
 * Read a server-sent event stream until the server ends it, calling onEvent(type, data) per event with its
 * `data:` lines parsed as JSON. Comments (keep-alives) are skipped.
 */
export async function streamEvents(path, onEvent, { signal } = {}) {
  const resp = await authorizedFetch(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + value).replace(/\r\n/g, "\n"); // joined first: a CRLF may straddle two chunks
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      dispatch(buffer.slice(0, end), onEvent);
      buffer = buffer.slice(end + 2);
    }
  }
}

function dispatch(block, onEvent) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (data.length) onEvent(type, JSON.parse(data.join("\n")));
}
