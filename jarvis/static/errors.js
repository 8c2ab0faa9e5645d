// Error codes from the server (and from the page itself) in words a person can act on.

export function explainError(error) {
  const code = error?.code || "";
  const raw = error?.message || "";
  const message = raw && raw[0].toUpperCase() + raw.slice(1);
  if (error?.status === 401) {
    // the server's message is written for API clients; a person in the page just needs to sign in again
    return { title: "Signed out", detail: "Your sign-in has ended, perhaps in another tab." };
  }
  if (error?.status === 403) return { title: "Not allowed", detail: message };
  switch (code) {
    case "upstream_unavailable":
      return { title: "Ollama is not reachable", detail: message };
    case "model_not_found":
      return { title: "Model not found", detail: message || "Pick another model, or pull this one with `ollama pull`." };
    case "at_capacity": {
      const wait = error.retryAfter ? `Try again in ${plural(error.retryAfter, "second")}.` : "Try again shortly.";
      return { title: "The server is busy", detail: `Every answer slot is in use. ${wait}` };
    }
    case "too_many_streams":
      return { title: "Too many answers at once", detail: message };
    case "upstream_timeout":
    case "connect_timeout":
    case "first_token_timeout":
    case "idle_timeout":
      return { title: "The model stopped responding", detail: message };
    case "upstream_error":
      return { title: "The model reported an error", detail: message };
    case "upstream_http_error":
    case "upstream_bad_response":
      return { title: "Ollama sent an error", detail: message };
    case "upstream_disconnected":
      return { title: "Ollama closed the connection mid-answer", detail: message };
    case "image_refused":
      return { title: "Image not attached", detail: message };
    case "unsupported":
      return { title: "The model cannot do that", detail: message };
    case "prompt_too_large":
      return { title: "The message is too long", detail: message };
    case "not_found":
      return { title: "This chat no longer exists", detail: "It may have been deleted in another tab." };
    case "connection_lost":
      return {
        title: "Connection lost",
        detail: "The connection to the Jarvis server dropped mid-answer. The text so far is kept; send again to retry.",
      };
    case "network":
      return { title: "Cannot reach the Jarvis server", detail: message };
    default:
      return { title: "Something went wrong", detail: message };
  }
}

export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// Server messages quote commands in backticks; show those as code, the rest as text.
export function withCode(text) {
  const fragment = document.createDocumentFragment();
  text.split("`").forEach((part, i) => {
    if (i % 2 === 0) {
      fragment.append(part);
    } else {
      const code = document.createElement("code");
      code.textContent = part;
      fragment.append(code);
    }
  });
  return fragment;
}

// The title in words, unless the server's message already starts with it.
export function errorParts(error) {
  const { title, detail } = explainError(error);
  if (detail && detail.toLowerCase().startsWith(title.toLowerCase())) return { title: "", detail };
  return { title, detail };
}
