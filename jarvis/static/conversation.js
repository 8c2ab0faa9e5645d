// The conversation on screen: drawn whole when a chat opens, then changed message by message,
// with repaints coalesced to one per animation frame however fast tokens arrive.

import { el } from "./dom.js";
import { messageElement, paint, textOf } from "./message.js";
import { copyCode, copyText } from "./message-tools.js";
import { state, viewOf } from "./state.js";

// The message each element was drawn from: a repaint of any other copy (one the stored history
// has since replaced, under the same key) would draw stale data over the new.
const drawnFrom = new WeakMap();

function draw(msg) {
  const li = messageElement(msg);
  paint(li, msg);
  state.rendered.set(msg.key, li);
  drawnFrom.set(li, msg);
  return li;
}

export function renderConversation() {
  const view = state.currentId ? viewOf(state.currentId) : { messages: [] };
  state.rendered.clear();
  const items = view.messages.map(draw);
  el.messages.replaceChildren(...items);
  el.empty.hidden = items.length > 0;
  scrollToEnd(true);
}

export function appendMessage(sessionId, msg) {
  viewOf(sessionId).messages.push(msg);
  if (sessionId !== state.currentId) return;
  el.messages.append(draw(msg));
  el.empty.hidden = true;
}

export function removeMessage(sessionId, msg) {
  const view = viewOf(sessionId);
  view.messages = view.messages.filter((m) => m !== msg);
  const li = state.rendered.get(msg.key);
  if (li && sessionId === state.currentId) {
    li.remove();
    state.rendered.delete(msg.key);
    el.empty.hidden = view.messages.length > 0;
  }
}

const pending = new Set();
let frame = 0;

// Coalesces repaints to one per animation frame, however fast tokens arrive.
export function repaint(msg) {
  pending.add(msg);
  if (frame) return;
  frame = requestAnimationFrame(flushRepaints);
}

function flushRepaints() {
  frame = 0;
  const stick = nearEnd();
  for (const msg of pending) {
    const li = state.rendered.get(msg.key);
    if (li && drawnFrom.get(li) === msg) paint(li, msg);
  }
  pending.clear();
  if (stick) scrollToEnd();
}

function nearEnd() {
  const c = el.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 120;
}

export function scrollToEnd(force = false) {
  if (force || nearEnd()) el.conversation.scrollTop = el.conversation.scrollHeight;
}


// Copy under a message copies its text as written; Copy on a code block, the code.
export function setupConversation() {
  el.messages.addEventListener("click", (e) => {
    const button = e.target.closest("button.copy");
    if (!button) return;
    if (button.classList.contains("copy-message")) {
      const li = button.closest(".msg");
      copyText(button, textOf(li), li.querySelector(".bubble, .msg-content"));
    } else {
      copyCode(button);
    }
  });
}
