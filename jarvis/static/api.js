// Same-origin calls to the Jarvis HTTP API; errors become ApiError with the server's code.
// Paths are relative to the page ("api/sessions", never "/api/sessions"), so Jarvis also works
// under a sub-path such as /jarvis/ behind a proxy.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export function request(path, { method = "GET", body, signal, headers: extra = {} } = {}) {
  const headers = { Accept: "application/json", ...extra };
  if (method !== "GET") headers["X-Requested-With"] = "jarvis";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    signal,
  }).catch((err) => {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "The Jarvis server did not answer. Check that it is running, then try again.");
  });
}

export async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `The server answered ${response.status} ${response.statusText}.`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message, retryAfterSeconds(response.headers.get("Retry-After")));
}

function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(1, Math.ceil((when - Date.now()) / 1000));
}

export async function api(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export const sessionPath = (id, tail = "") => `api/sessions/${encodeURIComponent(id)}${tail}`;
