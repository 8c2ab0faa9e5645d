// What sits under each message: when it was written, and a Copy of its whole text (or of a code block).

import { COPY_ICON, iconButton } from "./make.js";

const sameDay = (a, b) => a.toDateString() === b.toDateString();

// A <time> showing the clock time (with the date when not today); the title holds the full date.
export function stamp(seconds, now = new Date()) {
  const time = document.createElement("time");
  time.className = "msg-time";
  const at = new Date(seconds * 1000);
  time.dateTime = at.toISOString();
  const clock = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  time.textContent = sameDay(at, now) ? clock : `${at.toLocaleDateString([], { month: "short", day: "numeric" })}, ${clock}`;
  time.title = at.toLocaleString([], { dateStyle: "full", timeStyle: "medium" });
  return time;
}

export const copyMessageButton = () => iconButton("copy copy-message", "Copy message", COPY_ICON, "Copy");

export function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("code");
  if (code) copyText(button, code.textContent, code);
}

// Copies `text`, saying so on the button; where the clipboard is refused, selects `fallback` instead.
export async function copyText(button, text, fallback) {
  try {
    await navigator.clipboard.writeText(text);
    button.lastChild.textContent = "Copied";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(fallback);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.lastChild.textContent = "Press Ctrl+C";
  }
  setTimeout(() => (button.lastChild.textContent = "Copy"), 1500);
}
