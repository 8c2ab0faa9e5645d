// An answer's tool calls as compact blocks: the tool's name, its arguments as pretty JSON, and its
// result when a tool message in the history answers the call. Everything is set as text.

import { icon } from "./markdown.js";

const WRENCH = "M14.7 6.3a4 4 0 0 0-5.4 5.4L4 17l3 3 5.3-5.3a4 4 0 0 0 5.4-5.4l-2.5 2.5-2.4-.6-.6-2.4z";

// The calls of an answer: live from the stream, or as stored (meta.tool_calls).
export const callsOf = (msg) => msg.tool_calls || msg.meta?.tool_calls || [];

// Gives each answer the results of its calls (tool messages that follow it, matched by call id);
// a matched tool message is drawn inside its call's block, not on its own.
export function linkToolResults(messages) {
  let answer = null;
  for (const m of messages) {
    if (m.role === "assistant") {
      answer = m;
      answer.toolResults = {};
    } else if (m.role === "tool") {
      const id = m.meta?.tool_call_id;
      m.shownInCall = Boolean(answer && id && callsOf(answer).some((c) => c.id === id));
      if (m.shownInCall) answer.toolResults[id] = m.content || "";
    } else {
      answer = null;
    }
  }
}

// JSON text made readable; text that is not JSON as it came
export function pretty(text) {
  if (typeof text !== "string") return JSON.stringify(text ?? {}, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function section(label, text, className) {
  const part = document.createElement("div");
  part.className = `tool-part ${className}`;
  const name = document.createElement("span");
  name.className = "tool-label";
  name.textContent = label;
  const pre = document.createElement("pre");
  pre.tabIndex = 0; // a long one scrolls: the keyboard can reach it
  pre.textContent = text;
  part.append(name, pre);
  return part;
}

function block(name, argumentsText, result) {
  const box = document.createElement("div");
  box.className = "tool-call";
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", `Tool call: ${name}`);
  const head = document.createElement("div");
  head.className = "tool-head";
  const title = document.createElement("code");
  title.className = "tool-name";
  title.textContent = name;
  head.append(icon(WRENCH), document.createTextNode("Called "), title);
  box.append(head, section("Arguments", pretty(argumentsText), "tool-arguments"));
  if (result != null) box.append(section("Result", pretty(result), "tool-result"));
  return box;
}

// Draws the calls of `msg` (and their results) before `before`; redrawn only when they change.
export function paintToolCalls(body, msg, before) {
  const calls = callsOf(msg);
  const results = msg.toolResults || {};
  const key = JSON.stringify([calls, results]);
  let list = body.querySelector(":scope > .tool-calls");
  if (!calls.length) {
    list?.remove();
    return;
  }
  if (!list) {
    list = document.createElement("div");
    list.className = "tool-calls";
    before.before(list);
  }
  if (list.dataset.painted === key) return;
  list.dataset.painted = key;
  list.replaceChildren(...calls.map((c) => block(c.name || "tool", c.arguments, results[c.id])));
}

// A tool message no call on screen asked for: its result on its own.
export function toolMessageElement(li, msg) {
  li.hidden = Boolean(msg.shownInCall);
  const name = msg.meta?.name || "tool";
  const box = document.createElement("div");
  box.className = "tool-call tool-alone";
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", `Tool result: ${name}`);
  const head = document.createElement("div");
  head.className = "tool-head";
  const title = document.createElement("code");
  title.className = "tool-name";
  title.textContent = name;
  head.append(icon(WRENCH), document.createTextNode("Result of "), title);
  box.append(head, section("Result", pretty(msg.content || ""), "tool-result"));
  li.replaceChildren(box);
}
