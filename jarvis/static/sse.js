// Server-Sent Events read from a fetch body: EventSource cannot POST.

// Yields {event, data, id} for each event of a text/event-stream body; onBytes runs on
// every chunk, heartbeats included, so a caller can tell a quiet stream from a dead one.
export async function* readEvents(body, onBytes = () => {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onBytes();
      buffer += value;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        // a lone \r at the end may be the first half of \r\n
        if (!match || (match[0] === "\r" && match.index === buffer.length - 1)) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n"), id };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
        else if (field === "id") id = text;
      }
    }
  } finally {
    // a caller that stops early closes the connection; after the end this does nothing
    reader.cancel().catch(() => {});
  }
}
