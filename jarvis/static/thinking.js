// What the model thought before it answered: a collapsed "Thinking…" above the answer while it
// thinks, "Thought for N s" after. Its text is the model's, shown as plain text (never HTML).

import { LIVE } from "./state.js";

const opened = new Set(); // message keys whose thinking the reader opened: kept across repaints

// The thinking of `msg`: live from the stream, or as stored (meta.thinking); how long it took
// (meta.thinking_ms, or the page's own clock while the answer streams); null when it thought nothing.
export function thoughtOf(msg) {
  const text = msg.thinking || msg.meta?.thinking || "";
  if (!text) return null;
  const ms = msg.meta?.thinking_ms ?? msg.thinkingMs ?? null;
  return { text, ms, live: ms == null && LIVE.has(msg.status) && !msg.supersededLocally };
}

// Notes the time thinking began, and when it ended: at the first text, tool call or end.
export function noteThinking(msg, text) {
  msg.thinking = (msg.thinking || "") + text;
  if (msg.thinkingFrom == null) msg.thinkingFrom = Date.now();
}

export function thinkingOver(msg) {
  if (msg.thinkingFrom != null && msg.thinkingMs == null) msg.thinkingMs = Date.now() - msg.thinkingFrom;
}

// "less than a second", "3.2 s" under ten seconds, "42 s" above
export function seconds(ms) {
  const s = ms / 1000;
  if (s < 1) return "less than a second";
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
}

// Draws (or updates in place, so an open one stays open) the thinking of `msg` before `before`.
export function paintThinking(body, msg, before) {
  const thought = thoughtOf(msg);
  let box = body.querySelector(":scope > .thinking");
  if (!thought) {
    box?.remove();
    return;
  }
  if (!box) {
    box = document.createElement("details");
    box.className = "thinking";
    const summary = document.createElement("summary");
    const text = document.createElement("div");
    text.className = "thinking-text";
    box.append(summary, text);
    box.open = opened.has(msg.key);
    box.addEventListener("toggle", () => (box.open ? opened.add(msg.key) : opened.delete(msg.key)));
    before.before(box);
  }
  box.dataset.live = thought.live ? "true" : "false";
  const label = thought.live ? "Thinking…" : thought.ms == null ? "Thought" : `Thought for ${seconds(thought.ms)}`;
  const summary = box.querySelector("summary");
  if (summary.textContent !== label) summary.textContent = label;
  const text = box.querySelector(".thinking-text");
  if (text.textContent !== thought.text) text.textContent = thought.text;
}
