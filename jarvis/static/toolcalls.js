// An answer's tool calls as compact blocks, where in its text the model made them: "Using NAME…"
// while a tool runs, then "Used NAME" with the result (or the error) collapsed below. The name, the
// arguments and the result are set as text, never HTML: a tool's output is untrusted.

import { icon, make } from "./make.js";
import { renderMarkdown } from "./markdown.js";
import { LIVE } from "./state.js";

const WRENCH = "M14.7 6.3a4 4 0 0 0-5.4 5.4L4 17l3 3 5.3-5.3a4 4 0 0 0 5.4-5.4l-2.5 2.5-2.4-.6-.6-2.4z";
const RUNNING = "M12 3a9 9 0 1 0 9 9"; // a three-quarter circle, turned by the stylesheet
const FAILED = "M12 3 2 21h20L12 3zm0 6v6m0 3v.5";
const BRIEF_CHARS = 80; // how much of the arguments or the result a closed block shows

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

// What a call gave back: {content, is_error, duration_ms} from Jarvis (streamed or stored), or a
// tool message's text (a client's tool, sent back through a compatible API); null while none.
function resultOf(msg, call) {
  if (call.result) return call.result;
  const text = msg.toolResults?.[call.id];
  return text == null ? null : { content: text, is_error: false };
}

// where "at" puts a call: it counts characters (code points, as the server does), the page's
// strings count UTF-16 units; a call without it (a client's tool call) follows the text
const positions = new WeakMap(); // call -> its index in the text, once the text before it is all there

function indexOf(text, call) {
  if (call.at == null || typeof call.at !== "number") return text.length;
  if (positions.has(call)) return positions.get(call);
  let i = 0;
  for (let n = 0; n < call.at && i < text.length; n++) {
    const unit = text.charCodeAt(i);
    i += unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length ? 2 : 1;
  }
  if (i < text.length || call.at === 0) positions.set(call, i);
  return i;
}

// Counts the characters of `text` as "at" does: the place of a call made now, live.
export const charCount = (text) => text.length - (text.match(/[\ud800-\udbff][\udc00-\udfff]/g) || []).length;

// The answer's steps: each the text up to a place where the model made calls, and those calls.
function stepsOf(msg) {
  const text = msg.content || "";
  const steps = [];
  let from = 0;
  for (const call of callsOf(msg)) {
    const to = Math.min(Math.max(from, indexOf(text, call)), text.length);
    const last = steps.at(-1);
    if (last && last.to === to) last.calls.push(call);
    else steps.push({ from, to, calls: [call] });
    from = to;
  }
  return steps;
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

// one line of at most BRIEF_CHARS: what a closed part shows of what it holds
function brief(text) {
  let line = String(text).replace(/\s+/g, " ").trim();
  try {
    line = JSON.stringify(JSON.parse(text)); // compact JSON
  } catch {
    // not JSON: the text, on one line
  }
  return line.length > BRIEF_CHARS ? `${line.slice(0, BRIEF_CHARS - 1)}…` : line;
}

const seconds = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);

// A collapsed part of a block: its label and a one-line glimpse; opened, all of it.
function part(label, text, className) {
  const box = document.createElement("details");
  box.className = `tool-part ${className}`;
  const summary = document.createElement("summary");
  const name = document.createElement("span");
  name.className = "tool-label";
  name.textContent = label;
  const glimpse = document.createElement("span");
  glimpse.className = "tool-brief";
  glimpse.textContent = brief(text);
  summary.append(name, glimpse);
  const pre = document.createElement("pre");
  pre.tabIndex = 0; // a long one scrolls: the keyboard can reach it
  pre.textContent = pretty(text);
  box.append(summary, pre);
  return box;
}

function resultPart(result) {
  const label = result.is_error ? "Error" : "Result";
  const box = part(result.duration_ms != null ? `${label} · ${seconds(result.duration_ms)}` : label, result.content ?? "", "tool-result");
  if (result.is_error) box.dataset.error = "true";
  return box;
}

function head(name, state, ended) {
  const top = document.createElement("div");
  top.className = "tool-head";
  const title = document.createElement("code");
  title.className = "tool-name";
  title.textContent = name;
  const what = (verb, tail = "") => {
    const span = document.createElement("span");
    span.append(`${verb} `, title, tail);
    return span;
  };
  if (state === "running") {
    const spin = icon(RUNNING);
    spin.classList.add("tool-spinner");
    top.append(spin, what("Using", "…"));
  } else if (state === "unanswered") {
    top.append(icon(WRENCH), what("Called"));
    if (ended !== "completed") {
      const note = document.createElement("span");
      note.className = "tool-note";
      note.textContent = `no result: the answer ${ended === "stopped" ? "was stopped" : "ended"} first`;
      top.append(note);
    }
  } else {
    top.append(icon(state === "error" ? FAILED : WRENCH), what("Used"));
    if (state === "error") {
      const note = document.createElement("span");
      note.className = "tool-note";
      note.textContent = "failed";
      top.append(note);
    }
  }
  return top;
}

const drawnResult = new WeakMap(); // a call's block -> the result drawn in it
const SAME = ["content", "is_error", "duration_ms"];

// Draws one call into `box`, in place: a part the reader opened stays open as the call goes on.
function paintCall(box, call, result, live, ended) {
  const name = call.name || "tool";
  const state = result ? (result.is_error ? "error" : "done") : live ? "running" : "unanswered";
  const key = JSON.stringify([name, state, ended, call.arguments]);
  if (box.dataset.painted !== key) {
    box.dataset.painted = key;
    box.dataset.state = state;
    box.setAttribute("aria-label", `Tool call: ${name}`);
    box.setAttribute("aria-busy", String(state === "running"));
    const top = head(name, state, ended);
    const args = box.querySelector(":scope > .tool-arguments");
    if (box.firstElementChild?.matches(".tool-head")) box.firstElementChild.replaceWith(top);
    else box.prepend(top);
    if (!args) top.after(part("Arguments", call.arguments ?? "{}", "tool-arguments"));
  }
  const shown = box.querySelector(":scope > .tool-result");
  const was = drawnResult.get(box);
  if (result && !(shown && was && SAME.every((k) => was[k] === result[k]))) {
    const fresh = resultPart(result);
    drawnResult.set(box, result);
    if (shown) shown.replaceWith(fresh);
    else box.append(fresh);
  } else if (!result) {
    shown?.remove();
  }
}

function newStep() {
  return make("div", { className: "msg-step" }, make("div", { className: "msg-part markdown" }), make("div", { className: "tool-calls" }));
}

const callKey = (call, j) => String(call.id ?? `#${j}`); // a block stays the same call's

const partText = new WeakMap(); // a step's text element -> the text it was drawn from

// Draws the answer's steps (its text up to each place it called tools, and those calls) before
// `content`, in place; returns where in the text the part after the last calls begins.
export function paintSteps(body, msg, content) {
  const steps = stepsOf(msg);
  let box = body.querySelector(":scope > .msg-steps");
  if (!steps.length) {
    box?.remove();
    return 0;
  }
  if (!box) {
    box = document.createElement("div");
    box.className = "msg-steps";
    content.before(box);
  }
  while (box.children.length > steps.length) box.lastElementChild.remove();
  const live = LIVE.has(msg.status) && !msg.supersededLocally;
  const ended = msg.supersededLocally && live ? "superseded" : msg.status || "completed";
  steps.forEach((step, i) => {
    const shown = box.children[i] || box.appendChild(newStep());
    const text = shown.querySelector(".msg-part");
    const said = (msg.content || "").slice(step.from, step.to);
    if (partText.get(text) !== said) {
      renderMarkdown(text, said);
      partText.set(text, said);
    }
    text.hidden = !said.trim();
    const list = shown.querySelector(".tool-calls");
    const ids = step.calls.map(callKey);
    for (const old of [...list.children]) if (!ids.includes(old.dataset.callId)) old.remove();
    step.calls.forEach((call, j) => {
      let block = list.children[j];
      if (!block || block.dataset.callId !== ids[j]) {
        block = document.createElement("div");
        block.className = "tool-call";
        block.setAttribute("role", "group");
        block.dataset.callId = ids[j];
        list.children[j] ? list.children[j].before(block) : list.append(block);
      }
      paintCall(block, call, resultOf(msg, call), live, ended);
    });
  });
  return steps.at(-1).to;
}

// true while the answer waits on a tool: no cursor then, the block says what runs
export function toolRunning(msg) {
  const calls = callsOf(msg);
  return calls.length > 0 && !resultOf(msg, calls.at(-1)) && LIVE.has(msg.status) && !msg.supersededLocally;
}

// A tool message no call on screen asked for: its result on its own.
export function toolMessageElement(li, msg) {
  li.hidden = Boolean(msg.shownInCall);
  const name = msg.meta?.name || "tool";
  const box = document.createElement("div");
  box.className = "tool-call tool-alone";
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", `Tool result: ${name}`);
  const top = document.createElement("div");
  top.className = "tool-head";
  const title = document.createElement("code");
  title.className = "tool-name";
  title.textContent = name;
  const what = document.createElement("span");
  what.append("Result of ", title);
  top.append(icon(WRENCH), what);
  box.append(top, part("Result", msg.content || "", "tool-result"));
  li.replaceChildren(box);
}
