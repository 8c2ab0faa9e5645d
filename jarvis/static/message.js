// One message on screen: its element, and painting it from the message as the page holds it
// (text, status badge, progress, error, and the foot with time, Copy, versions and speed).
// User text is only ever set as textContent; model output goes through markdown.js.

import { errorParts, plural, withCode } from "./errors.js";
import { iconButton, make } from "./make.js";
import { renderMarkdown } from "./markdown.js";
import { copyMessageButton, stamp } from "./message-tools.js";
import { paintImages } from "./attachments.js";
import { LIVE } from "./state.js";
import { paintThinking, thoughtOf } from "./thinking.js";
import { callsOf, paintSteps, toolMessageElement, toolRunning } from "./toolcalls.js";
import { versionTools, versionsKey } from "./versions.js";

const MIN_SPEED_SPAN_S = 0.1; // the shortest streaming time a speed is shown for

export const LABELS = {
  pending: "Connecting…",
  queued: "Waiting for the model",
  streaming: "Answering",
  length: "Cut off",
  stopped: "Stopped",
  superseded: "Superseded",
  failed: "Failed",
  timeout: "Timed out",
  disconnected: "Disconnected",
  interrupted: "Interrupted",
};

// what the model does before its first token, as far as the backend can tell
const PROGRESS = {
  loading: () => "Loading the model…",
  reading: (p) => (p.tokens ? `Reading your prompt (${plural(p.tokens, "token")})…` : "Reading your prompt…"),
  waiting: () => "Waiting for the model…",
};

const EXPLAIN = {
  length: "The answer reached its length limit (this chat's answer length, or the model's) before it finished. Continue asks the model to carry on.",
  stopped: "You stopped this answer; the text so far is kept.",
  superseded: "A newer prompt replaced this answer before it finished.",
  failed: "The answer failed before it finished.",
  timeout: "The model went silent for too long, so the answer was ended.",
  disconnected: "The connection closed before the answer finished.",
  interrupted: "The server stopped before this answer finished.",
};

export function messageElement(msg) {
  const li = make("li", { className: `msg msg-${msg.role}` });
  const div = (className) => make("div", { className });
  if (msg.role === "tool") {
    toolMessageElement(li, msg);
  } else if (msg.role === "user") {
    li.append(div("bubble"), div("msg-foot"));
  } else {
    const avatar = make("div", { className: "avatar" }, make("img", { src: "static/favicon.svg", alt: "" }));
    const body = make("div", { className: "msg-body" }, div("msg-meta"), div("msg-content markdown"), div("msg-foot"));
    li.append(avatar, body);
  }
  return li;
}

const renderedText = new WeakMap(); // content element -> the text its HTML was made from
const messageText = new WeakMap(); // message <li> -> its text as written, for Copy

// The text of the message drawn in `li`, as written (not as rendered): what Copy copies.
export const textOf = (li) => messageText.get(li) || "";

// The time, Copy, the versions' tools and the speed, once the message has a time and (for an answer)
// is over; Continue under an answer cut by its length limit.
function paintFoot(li, msg, live) {
  const foot = li.querySelector(".msg-foot");
  const wanted =
    live || !msg.created_at ? "" : `${msg.created_at}|${msg.content ? 1 : 0}|${versionsKey(msg)}|${msg.status}|${msg.meta ? 1 : 0}`;
  if (foot.dataset.painted === wanted) return;
  foot.dataset.painted = wanted;
  const parts = [];
  if (msg.created_at && !live) parts.push(stamp(msg.created_at));
  if (msg.content && !live) parts.push(copyMessageButton());
  if (wanted) parts.push(...versionTools(msg));
  if (msg.status === "length" && !live) parts.push(continueButton());
  const speed = !live && msg.role === "assistant" && speedOf(msg.meta);
  if (speed) parts.push(speed);
  foot.replaceChildren(...parts);
}

const continueButton = () =>
  iconButton("continue", null, "M5 12h12M13 6l6 6-6 6", "Continue", {
    title: "Ask the model to carry on where the answer was cut",
  });

// "42.0 tokens/s · 128 tokens": answer tokens over the time from the first token to the end
function speedOf(meta) {
  const usage = meta?.usage || {};
  const timing = meta?.timing || {};
  const tokens = usage.completion_tokens;
  if (!tokens) return null;
  const span = document.createElement("span");
  span.className = "msg-speed";
  const parts = [];
  const streamed = (timing.duration_ms - timing.first_token_ms) / 1000;
  // an answer that came in one piece has no speed worth the name
  if (streamed >= MIN_SPEED_SPAN_S) parts.push(`${(tokens / streamed).toFixed(1)} tokens/s`);
  parts.push(plural(tokens, "token"));
  span.textContent = parts.join(" · ");
  const about = [`${plural(tokens, "answer token")}`];
  if (usage.prompt_tokens != null) about.unshift(plural(usage.prompt_tokens, "prompt token"));
  if (timing.first_token_ms != null) about.push(`first token after ${(timing.first_token_ms / 1000).toFixed(2)} s`);
  span.title = about.join(", ");
  return span;
}

function shownStatus(msg) {
  if (msg.supersededLocally && LIVE.has(msg.status)) return "superseded";
  return msg.status || "completed";
}

export function paint(li, msg) {
  const status = shownStatus(msg);
  li.dataset.status = status;
  if (msg.id != null) li.dataset.id = String(msg.id);
  messageText.set(li, msg.content);
  if (msg.role === "tool") return; // drawn whole by messageElement
  if (msg.role === "user") {
    const bubble = li.querySelector(".bubble");
    paintImages(li, msg, bubble);
    if (bubble.textContent !== msg.content) bubble.textContent = msg.content;
    bubble.hidden = !msg.content;
    paintFoot(li, msg, false);
    return;
  }
  const meta = li.querySelector(".msg-meta");
  const who = document.createElement("span");
  who.className = "msg-who";
  who.textContent = "Jarvis";
  const parts = [who];
  if (msg.model) {
    const model = document.createElement("span");
    model.className = "msg-model";
    model.textContent = msg.model;
    parts.push(model);
  }
  if (status !== "completed") {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = status;
    let label = LABELS[status] || status;
    if (status === "queued" && msg.position) label += ` (position ${msg.position})`;
    if (status === "streaming" && !msg.content && PROGRESS[msg.progress?.state]) label = PROGRESS[msg.progress.state](msg.progress);
    badge.textContent = label;
    if (EXPLAIN[status]) badge.title = EXPLAIN[status];
    parts.push(badge);
  }
  meta.replaceChildren(...parts);

  const content = li.querySelector(".msg-content");
  const body = li.querySelector(".msg-body");
  // the text up to the last tool calls goes with them, in steps; the text after them stays below
  const from = paintSteps(body, msg, content);
  paintThinking(body, msg, body.querySelector(":scope > .msg-steps") || content);
  const text = from ? msg.content.slice(from) : msg.content;
  const streaming = LIVE.has(msg.status) && !msg.supersededLocally;
  if (streaming) {
    // the answer being written is announced when it is done, not token by token
    content.setAttribute("aria-live", "polite");
    content.setAttribute("aria-busy", "true");
  } else {
    content.removeAttribute("aria-busy");
    if (!msg.keepLive) content.removeAttribute("aria-live");
  }
  if (renderedText.get(content) !== text) {
    // drawn incrementally while it grows; text after tool calls is a stream of its own
    renderMarkdown(content, text, { stream: from && msg.stream ? `${msg.stream}@${from}` : msg.stream });
    renderedText.set(content, text);
  }
  let cursor = content.querySelector(".cursor");
  if (streaming && msg.status === "streaming" && !thoughtOf(msg)?.live && !toolRunning(msg)) {
    if (!cursor) {
      cursor = document.createElement("span");
      cursor.className = "cursor";
      cursor.setAttribute("aria-hidden", "true");
    }
    cursor.remove(); // answers are drawn incrementally: the old cursor may still be in place
    (content.lastElementChild && !content.lastElementChild.matches(".code-block, ul, ol, table")
      ? content.lastElementChild
      : content
    ).append(cursor);
  } else if (cursor) {
    cursor.remove();
  }

  paintFoot(li, msg, LIVE.has(msg.status) && !msg.supersededLocally);
  li.querySelector(".msg-nothing")?.remove();
  li.querySelector(".msg-error")?.remove();
  if (!msg.content && !msg.error && !LIVE.has(msg.status) && !callsOf(msg).length) {
    const nothing = document.createElement("p");
    nothing.className = "msg-nothing";
    nothing.textContent = "No text was received.";
    body.querySelector(".msg-foot").before(nothing);
  }
  if (msg.error && !LIVE.has(msg.status)) {
    const { title, detail } = errorParts(msg.error);
    const box = document.createElement("div");
    box.className = "msg-error";
    if (title) {
      const strong = document.createElement("strong");
      strong.textContent = title;
      box.append(strong);
    }
    box.append(withCode(detail));
    if (msg.trace_id) {
      const trace = document.createElement("span");
      trace.className = "msg-trace";
      trace.textContent = `trace ${msg.trace_id}`;
      box.append(trace);
    }
    body.querySelector(".msg-foot").before(box);
  }
}
