// The answers streaming into the page: one run per answer read, from the prompt's own response
// or from the session's live stream (a rejoin), with a watchdog for a link gone silent, resumed
// after a break for as long as the server streams the answer.

import { ApiError, errorOf, request, sessionPath } from "./api.js";
import { repaint } from "./conversation.js";
import { announce, refreshControls } from "./dom.js";
import { explainError } from "./errors.js";
import { LABELS } from "./message.js";
import { readEvents } from "./sse.js";
import { LIVE, liveOf, notify, state, viewOf } from "./state.js";
import { noteThinking, thinkingOver } from "./thinking.js";
import { charCount } from "./toolcalls.js";

const SILENCE_MS = 45000; // the server writes a heartbeat every few seconds; this long silent is a dead link
const RESUME_FIRST_MS = 250; // the first wait before resuming a broken answer
const RESUME_MAX_MS = 4000; // the longest, after tries that brought nothing

function newRun(sessionId, message, user) {
  const run = { sessionId, message, user, controller: new AbortController(), ended: false, abandoned: false, lastId: null };
  if (!state.live.has(sessionId)) state.live.set(sessionId, new Set());
  state.live.get(sessionId).add(run);
  run.lastBytes = Date.now();
  run.watchdog = setInterval(() => {
    if (Date.now() - run.lastBytes > SILENCE_MS) run.controller.abort();
  }, 1000);
  refreshControls();
  notify("runs");
  return run;
}

function endRun(run) {
  clearInterval(run.watchdog);
  state.live.get(run.sessionId)?.delete(run);
  clearTimeout(run.stopTimer);
  refreshControls();
}

// Streams the answer to a prompt (POST `path` with `body`) into `answer`. Resolves to
// {refused, abandoned}: the error the server turned the prompt away with before streaming
// (nothing was stored), and whether the page gave the run up (a delete, a sign-out).
export async function streamAnswer(sessionId, user, answer, path, body) {
  const run = newRun(sessionId, answer, user);
  let refused = null;
  try {
    const response = await request(sessionPath(sessionId, path), {
      method: "POST",
      body,
      signal: run.controller.signal,
    });
    if (!response.ok) {
      refused = await errorOf(response);
      return { refused, abandoned: false };
    }
    if ((await read(run, response)) === "broken") await resume(run);
    if (!run.ended) throw new ApiError(0, "connection_lost", "");
  } catch (err) {
    if (!run.abandoned && answer.status === "pending" && !run.ended && err.code === "network") refused = err;
    else if (!run.abandoned && !run.ended) finish(run, "disconnected", { code: "connection_lost", message: "" });
  } finally {
    endRun(run);
  }
  return { refused, abandoned: run.abandoned };
}

// An answer another tab (or this one, before a reload) started: attach to it and show it live.
// Resolves to true once the run is over and the page should show the stored answer; null when
// there is nothing to attach to.
export function rejoin(sessionId) {
  const answer = viewOf(sessionId).messages.find(
    (m) => m.role === "assistant" && LIVE.has(m.status) && m.id != null && !state.attached.has(m.id),
  );
  if (!answer || liveOf(sessionId).some((s) => s.message === answer)) return null;
  state.attached.add(answer.id);
  const messages = viewOf(sessionId).messages;
  const user = messages[messages.indexOf(answer) - 1] || null;
  const run = newRun(sessionId, answer, user);
  return follow(run, null)
    .then((how) => how === "broken" && resume(run))
    .finally(() => endRun(run))
    .then(() => !run.abandoned);
}

// The connection broke mid-answer: resume it where it broke off (Last-Event-ID) for as long as
// the server streams the answer, again and again. Each try waits first, RESUME_FIRST_MS, twice
// as long after a try that brought no event, up to RESUME_MAX_MS, and RESUME_FIRST_MS again
// after one that did. Gives up when the server has said nothing for SILENCE_MS, tries included.
async function resume(run) {
  let wait = RESUME_FIRST_MS;
  let heard = Date.now();
  while (!run.ended && !run.abandoned && run.lastId && Date.now() - heard < SILENCE_MS) {
    run.controller = new AbortController(); // a stop, a delete or a sign-out aborts the wait too
    if (!(await pause(wait, run.controller.signal))) return;
    const from = run.lastId;
    const began = (run.lastBytes = Date.now()); // the watchdog times this try's own silence
    if ((await follow(run, from)) === "gone") return;
    if (run.lastBytes > began) heard = run.lastBytes;
    wait = run.lastId !== from ? RESUME_FIRST_MS : Math.min(wait * 2, RESUME_MAX_MS);
  }
}

// true after `ms`, false at once if `signal` aborts first
function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(true), ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve(false)), { once: true });
  });
}

// Reads the session's live answer into the run, from after lastId (or from its start). Says how
// it went: "over" (the answer ended, or a newer one took its place), "gone" (the server streams
// no such answer, or will not say: 204, 404, signed out) or "broken" (the connection failed or
// closed mid-answer, or the server is busy: worth another try).
async function follow(run, lastId) {
  let response;
  try {
    response = await request(sessionPath(run.sessionId, "/stream"), {
      signal: run.controller.signal,
      headers: lastId ? { "Last-Event-ID": lastId } : {},
    });
  } catch {
    return "broken";
  }
  if (response.status === 429 || response.status >= 500) return "broken";
  if (response.status !== 200) return "gone";
  if (!lastId) run.replay = true; // the answer comes again from its first token
  return read(run, response);
}

// Reads an answer's events into the run: "over" or "broken", as follow() says; what was read stays.
async function read(run, response) {
  const seen = () => (run.lastBytes = Date.now());
  try {
    for await (const event of readEvents(response.body, seen)) {
      if (event.id) run.lastId = event.id;
      if (handleEvent(run, event) === "other") {
        run.controller.abort(); // a newer answer of this session: the history shows it
        return "over";
      }
    }
  } catch {
    return run.ended ? "over" : "broken";
  }
  return run.ended ? "over" : "broken";
}

function handleEvent(run, { event, data }) {
  let payload;
  try {
    payload = JSON.parse(data);
  } catch {
    return; // every payload is JSON; anything else is not ours
  }
  const answer = run.message;
  const user = run.user;
  if (event === "start") {
    if (answer.id != null && payload.message_id !== answer.id) return "other";
    answer.id = payload.message_id;
    answer.trace_id = payload.trace_id;
    answer.stream = payload.trace_id; // the text that follows grows this stream's: see renderMarkdown
    viewOf(run.sessionId).started = (viewOf(run.sessionId).started || 0) + 1; // see loadHistory
    if (payload.model) answer.model = payload.model;
    answer.status = "streaming";
    if (run.replay) {
      // a rejoin sends the answer again from its first event
      Object.assign(answer, { content: "", thinking: "", thinkingFrom: null, thinkingMs: null, tool_calls: null });
      run.replay = false;
    }
    if (user) {
      user.id = payload.user_message_id;
      user.status = "completed";
      repaint(user);
    }
    notify("started"); // the title comes from the first prompt
  } else if (event === "status") {
    answer.progress = payload;
    answer.status = payload.state === "queued" ? "queued" : "streaming";
    answer.position = payload.position;
  } else if (event === "thinking") {
    if (answer.status !== "streaming") answer.status = "streaming";
    answer.progress = null;
    noteThinking(answer, payload.text || "");
  } else if (event === "token") {
    if (answer.status !== "streaming") answer.status = "streaming";
    answer.progress = null;
    thinkingOver(answer);
    answer.content += payload.text || "";
  } else if (event === "tool_call") {
    if (answer.status !== "streaming") answer.status = "streaming";
    answer.progress = null;
    thinkingOver(answer);
    // where in the text the model made it, counted as the stored answer's "at" counts
    answer.tool_calls = [...(answer.tool_calls || []), { ...payload, at: charCount(answer.content || "") }];
  } else if (event === "tool_result") {
    const { id, ...result } = payload;
    answer.tool_calls = (answer.tool_calls || []).map((c) => (c.id === id ? { ...c, result } : c));
  } else if (event === "end") {
    finish(run, payload.status || "completed", payload.error || null, payload.meta || null);
    return;
  }
  repaint(answer);
}

export function finish(run, status, error, meta = null) {
  const answer = run.message;
  run.ended = true;
  thinkingOver(answer);
  answer.status = status;
  answer.error = error;
  answer.progress = null;
  if (meta) answer.meta = meta;
  answer.supersededLocally = false;
  answer.keepLive = run.sessionId === state.currentId && status !== "superseded";
  repaint(answer);
  refreshControls();
  if (run.sessionId !== state.currentId) return;
  if (status === "completed") announce("Answer complete.");
  else if (status !== "superseded") {
    const { title } = error ? explainError(error) : { title: "" };
    announce(`Answer ${LABELS[status] ? LABELS[status].toLowerCase() : status}. ${title}`);
  }
}
