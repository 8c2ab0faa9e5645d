// The chat list's groups by date and its rename field. Titles are only ever set as text.

import { api, sessionPath } from "./api.js";

const DAY_MS = 86400000;
export const TITLE_MAX = 200; // as the server bounds a title

// Which heading a chat last written at `seconds` goes under, seen from `now`.
export function groupOf(seconds, now = new Date()) {
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
  const at = seconds * 1000;
  if (at >= midnight) return "Today";
  if (at >= midnight - DAY_MS) return "Yesterday";
  if (at >= midnight - 7 * DAY_MS) return "Previous 7 days";
  return "Older";
}

// The list items with a heading before each run of chats from the same group; sessions are newest first.
export function withGroups(sessions, items, now = new Date()) {
  const out = [];
  let last = null;
  sessions.forEach((session, i) => {
    const group = groupOf(session.updated_at, now);
    if (group !== last) {
      const heading = document.createElement("li");
      heading.className = "session-group";
      heading.setAttribute("role", "presentation");
      heading.textContent = group;
      out.push(heading);
      last = group;
    }
    out.push(items[i]);
  });
  return out;
}

// An input in place of the title: Enter or leaving it saves, Escape gives up.
// `done(session | null)` gets the renamed session from the server, or null when nothing changed.
export function renameField(session, done, failed) {
  const input = document.createElement("input");
  input.type = "text";
  input.className = "session-rename";
  input.value = session.title || "";
  input.maxLength = TITLE_MAX;
  input.setAttribute("aria-label", "Chat title");
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    if (!save || !title || title === session.title) {
      done(null);
      return;
    }
    try {
      done(await api(sessionPath(session.id), { method: "PATCH", body: { title } }));
    } catch (err) {
      failed(err);
    }
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      finish(true);
    } else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation(); // Escape here leaves the field, not the answer or the drawer
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  return input;
}
