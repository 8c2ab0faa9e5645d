// The Jarvis chat page. Plain ES module: no build step, no inline code, works under
// "default-src 'self'". Model output is rendered as Markdown and sanitised before it
// touches the DOM; user text is only ever set as textContent.

import { ApiError, api, errorOf, request, sessionPath } from "./api.js";
import { errorParts, explainError, plural, withCode } from "./errors.js";
import { icon, renderMarkdown } from "./markdown.js";
import { copyCode, copyMessageButton, copyText, stamp } from "./message-tools.js";
import { setupSearch } from "./search.js";
import { setupSettings } from "./settings.js";
import { readEvents } from "./sse.js";
import { renameField, withGroups } from "./sidebar.js";
import { setupVersions, versionTools, versionsKey } from "./versions.js";

const $ = (id) => document.getElementById(id);

const el = {
  app: $("app"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  openSidebar: $("open-sidebar"),
  closeSidebar: $("close-sidebar"),
  newChat: $("new-chat"),
  sessionList: $("session-list"),
  search: $("search"),
  searchResults: $("search-results"),
  chatMenu: $("chat-menu"),
  renameChat: $("rename-chat"),
  chatSettings: $("chat-settings"),
  exportMd: $("export-md"),
  exportJson: $("export-json"),
  importChat: $("import-chat"),
  backend: $("backend"),
  backendText: $("backend-text"),
  account: $("account"),
  accountInitial: $("account-initial"),
  accountName: $("account-name"),
  signOut: $("sign-out"),
  title: $("chat-title"),
  model: $("model"),
  conversation: $("conversation"),
  empty: $("empty"),
  messages: $("messages"),
  notice: $("notice"),
  noticeTitle: $("notice-title"),
  noticeDetail: $("notice-detail"),
  noticeClose: $("notice-close"),
  noticeAction: $("notice-action"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  announcer: $("announcer"),
};

const MODEL_KEY = "jarvis.model";
const STOP_GRACE_MS = 8000; // a stop the server never confirms is ended here
const POLL_MS = 1000; // refresh a session another tab is streaming into
const HEALTH_MS = 30000;
const MIN_SPEED_SPAN_S = 0.1; // the shortest streaming time a speed is shown for
const SILENCE_MS = 45000; // the server writes a heartbeat every few seconds; this long silent is a dead link

const LABELS = {
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

const LIVE = new Set(["pending", "queued", "streaming"]);

const state = {
  sessions: [], // as GET /api/sessions lists them, newest first
  currentId: null,
  confirming: null, // the session whose delete waits for a second click
  // a chat list fetched before a delete or a new chat may arrive after it
  deleted: new Set(),
  unlisted: new Set(), // chats made here that no list has shown yet
  making: null, // the chat New chat asked for, until the server answers
  renaming: null, // the session whose title is being edited
  views: new Map(), // session id -> {messages: [...]}
  live: new Map(), // session id -> Set of running streams
  rendered: new Map(), // message key -> <li>, for the session on screen only
  models: [],
  defaultModel: "",
  pollTimer: null,
  attached: new Set(), // message ids this tab has rejoined (or found over), so it asks once
  nextKey: 1,
};

const newKey = () => `local-${state.nextKey++}`;

function viewOf(sessionId) {
  if (!state.views.has(sessionId)) state.views.set(sessionId, { messages: [] });
  return state.views.get(sessionId);
}

function liveOf(sessionId) {
  return [...(state.live.get(sessionId) || [])].filter((s) => !s.ended);
}

function showNotice(error) {
  const { title, detail } = errorParts(error);
  el.noticeTitle.textContent = title;
  el.noticeTitle.hidden = !title;
  el.noticeDetail.replaceChildren(withCode(detail));
  el.noticeAction.hidden = error?.status !== 401;
  el.notice.hidden = false;
}

function hideNotice() {
  el.notice.hidden = true;
}

function announce(text) {
  el.announcer.textContent = "";
  // a fresh text node is announced even when it repeats the last one
  requestAnimationFrame(() => (el.announcer.textContent = text));
}

function messageElement(msg) {
  const li = document.createElement("li");
  li.className = `msg msg-${msg.role}`;
  if (msg.role === "user") {
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const foot = document.createElement("div");
    foot.className = "msg-foot";
    li.append(bubble, foot);
  } else {
    const avatar = document.createElement("div");
    avatar.className = "avatar";
    const img = document.createElement("img");
    img.src = "/static/favicon.svg";
    img.alt = "";
    avatar.append(img);
    const body = document.createElement("div");
    body.className = "msg-body";
    const meta = document.createElement("div");
    meta.className = "msg-meta";
    const content = document.createElement("div");
    content.className = "msg-content markdown";
    const foot = document.createElement("div");
    foot.className = "msg-foot";
    body.append(meta, content, foot);
    li.append(avatar, body);
  }
  return li;
}

const renderedText = new WeakMap(); // content element -> the text its HTML was made from
const messageText = new WeakMap(); // message <li> -> its text as written, for Copy

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

function continueButton() {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "continue";
  button.title = "Ask the model to carry on where the answer was cut";
  button.append(icon("M5 12h12M13 6l6 6-6 6"), document.createTextNode("Continue"));
  return button;
}

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

function paint(li, msg) {
  const status = shownStatus(msg);
  li.dataset.status = status;
  if (msg.id != null) li.dataset.id = String(msg.id);
  messageText.set(li, msg.content);
  if (msg.role === "user") {
    const bubble = li.querySelector(".bubble");
    if (bubble.textContent !== msg.content) bubble.textContent = msg.content;
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
  const streaming = LIVE.has(msg.status) && !msg.supersededLocally;
  if (streaming) {
    // the answer being written is announced when it is done, not token by token
    content.setAttribute("aria-live", "polite");
    content.setAttribute("aria-busy", "true");
  } else {
    content.removeAttribute("aria-busy");
    if (!msg.keepLive) content.removeAttribute("aria-live");
  }
  if (renderedText.get(content) !== msg.content) {
    renderMarkdown(content, msg.content);
    renderedText.set(content, msg.content);
  }
  let cursor = content.querySelector(".cursor");
  if (streaming && msg.status === "streaming") {
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
  const body = li.querySelector(".msg-body");
  if (!msg.content && !msg.error && !LIVE.has(msg.status)) {
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

function renderConversation() {
  const view = state.currentId ? viewOf(state.currentId) : { messages: [] };
  state.rendered.clear();
  const items = view.messages.map((msg) => {
    const li = messageElement(msg);
    paint(li, msg);
    state.rendered.set(msg.key, li);
    return li;
  });
  el.messages.replaceChildren(...items);
  el.empty.hidden = items.length > 0;
  scrollToEnd(true);
}

function appendMessage(sessionId, msg) {
  viewOf(sessionId).messages.push(msg);
  if (sessionId !== state.currentId) return;
  const li = messageElement(msg);
  paint(li, msg);
  state.rendered.set(msg.key, li);
  el.messages.append(li);
  el.empty.hidden = true;
}

function removeMessage(sessionId, msg) {
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
function repaint(msg) {
  pending.add(msg);
  if (frame) return;
  frame = requestAnimationFrame(flushRepaints);
}

function flushRepaints() {
  frame = 0;
  const stick = nearEnd();
  for (const msg of pending) {
    const li = state.rendered.get(msg.key);
    if (li) paint(li, msg);
  }
  pending.clear();
  if (stick) scrollToEnd();
}

function nearEnd() {
  const c = el.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 120;
}

function scrollToEnd(force = false) {
  if (force || nearEnd()) el.conversation.scrollTop = el.conversation.scrollHeight;
}

function sessionTitle(session) {
  return (session && session.title) || "New chat";
}

function renderSessions() {
  const hadFocus = el.sessionList.contains(document.activeElement);
  let items = state.sessions.map((session) => {
    const li = document.createElement("li");
    li.className = "session";
    li.dataset.id = session.id;
    if (session.id === state.confirming) {
      li.append(confirmBox(session));
      return li;
    }
    if (session.id === state.renaming) {
      li.append(renameBox(session));
      return li;
    }
    const active = session.id === state.currentId;
    li.classList.toggle("is-active", active);

    const open = document.createElement("button");
    open.type = "button";
    open.className = "session-open";
    if (active) open.setAttribute("aria-current", "page");
    const title = document.createElement("span");
    title.className = "session-title";
    title.textContent = sessionTitle(session);
    open.append(title);
    if (liveOf(session.id).length) {
      const dot = document.createElement("span");
      dot.className = "session-live";
      dot.title = "Answering";
      open.append(dot);
    }
    open.addEventListener("click", () => openSession(session.id));
    open.addEventListener("dblclick", () => startRename(session.id));
    open.title = "Double-click to rename";

    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "session-action session-rename-button";
    rename.setAttribute("aria-label", `Rename chat: ${sessionTitle(session)}`);
    rename.title = "Rename chat";
    rename.append(icon("M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4"));
    rename.addEventListener("click", () => startRename(session.id));

    const del = document.createElement("button");
    del.type = "button";
    del.className = "session-action session-delete";
    del.setAttribute("aria-label", `Delete chat: ${sessionTitle(session)}`);
    del.title = "Delete chat";
    del.append(icon("M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3"));
    del.addEventListener("click", () => {
      state.confirming = session.id;
      renderSessions();
      el.sessionList.querySelector(".confirm-delete")?.focus();
    });

    li.append(open, rename, del);
    return li;
  });
  if (items.length) items = withGroups(state.sessions, items);
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "session-empty";
    li.textContent = "No chats yet.";
    items.push(li);
  }
  el.sessionList.replaceChildren(...items);
  if (hadFocus) el.sessionList.querySelector(".confirm-delete")?.focus();
  el.sessionList.querySelector(".session-rename")?.focus();
  const current = state.sessions.find((s) => s.id === state.currentId);
  el.chatMenu.hidden = !current;
  if (!current) showSettings();
  if (current) {
    el.exportMd.href = sessionPath(current.id, "/export?format=md");
    el.exportJson.href = sessionPath(current.id, "/export?format=json");
  }
  el.title.textContent = sessionTitle(current);
  document.title = current && current.title ? `${current.title} · Jarvis` : "Jarvis";
}

function startRename(id) {
  state.confirming = null;
  state.renaming = id;
  renderSessions();
  el.sessionList.querySelector(".session-rename")?.select();
}

function renameBox(session) {
  const end = (renamed) => {
    state.renaming = null;
    if (renamed) {
      session.title = renamed.title;
      announce("Chat renamed.");
    }
    renderSessions();
  };
  return renameField(session, end, (err) => {
    end(null);
    showNotice(err);
  });
}

function confirmBox(session) {
  const box = document.createElement("div");
  box.className = "session-confirm";
  const question = document.createElement("span");
  question.textContent = "Delete this chat?";
  const yes = document.createElement("button");
  yes.type = "button";
  yes.className = "confirm-delete";
  yes.textContent = "Delete";
  yes.setAttribute("aria-label", `Confirm delete: ${sessionTitle(session)}`);
  const no = document.createElement("button");
  no.type = "button";
  no.textContent = "Cancel";
  yes.addEventListener("click", () => deleteSession(session.id));
  no.addEventListener("click", () => {
    state.confirming = null;
    renderSessions();
  });
  box.append(question, yes, no);
  return box;
}

async function loadSessions() {
  const data = await api("/api/sessions");
  const listed = (data.sessions || []).filter((s) => !state.deleted.has(s.id));
  for (const s of listed) state.unlisted.delete(s.id);
  state.sessions = [...state.sessions.filter((s) => state.unlisted.has(s.id)), ...listed];
  renderSessions();
}

async function refreshSessions() {
  try {
    await loadSessions();
  } catch {
    // the list is refreshed again after the next answer
  }
}

async function newChat() {
  closeSidebar();
  hideNotice();
  const view = state.currentId && state.views.get(state.currentId);
  if (state.making || (view && view.messages.length === 0)) {
    el.prompt.focus();
    return;
  }
  // a prompt sent before the server answers waits for this chat and goes into it
  state.making = api("/api/sessions", { method: "POST" }).then((session) => {
    state.sessions.unshift(session);
    state.unlisted.add(session.id);
    state.views.set(session.id, { messages: [] });
    state.making = null;
    openSession(session.id); // shows it at once; its (empty) history follows
  });
  try {
    await state.making;
  } catch (err) {
    state.making = null;
    showNotice(err);
  }
}

async function openSession(id) {
  closeSidebar();
  hideNotice();
  state.currentId = id;
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  renderSessions();
  renderConversation();
  refreshControls();
  el.prompt.focus();
  await loadHistory(id);
}

// Fetches a session's messages (unless given) and merges in the answers this tab is still streaming.
async function loadHistory(id, fetched = null) {
  let data = fetched;
  try {
    // an answer that started while the copy was on its way may be missing from it: ask again
    for (let tries = 1; !data; tries++) {
      const started = viewOf(id).started;
      data = await api(sessionPath(id));
      if (viewOf(id).started !== started && tries < 3) data = null;
    }
  } catch (err) {
    if (id !== state.currentId) return;
    if (err.code === "not_found") {
      forgetSession(id);
      await openFallback();
    }
    showNotice(err);
    return;
  }
  const old = viewOf(id).messages;
  const byId = new Map(old.filter((m) => m.id != null).map((m) => [String(m.id), m]));
  const merged = (data.messages || []).map((m) => {
    const local = byId.get(String(m.id));
    // a local copy is newer while this tab streams it, or until the server has stored its end
    if (local && (liveOf(id).some((s) => s.message === local) || (m.status === "streaming" && !LIVE.has(local.status)))) {
      return local;
    }
    return { ...m, key: local ? local.key : `m-${m.id}` };
  });
  const seen = new Set(merged.map((m) => m.key));
  for (const m of old) if (m.id == null && !seen.has(m.key)) merged.push(m); // sent, not yet started
  viewOf(id).messages = merged;
  if (id !== state.currentId) return;
  showSettings(data.settings, id);
  renderConversation();
  rejoin(id);
  schedulePoll(id);
}

// An answer another tab (or this one, before a reload) started: attach to it and show it live.
function rejoin(sessionId) {
  const answer = viewOf(sessionId).messages.find(
    (m) => m.role === "assistant" && LIVE.has(m.status) && m.id != null && !state.attached.has(m.id),
  );
  if (!answer || liveOf(sessionId).some((s) => s.message === answer)) return;
  state.attached.add(answer.id);
  const messages = viewOf(sessionId).messages;
  const user = messages[messages.indexOf(answer) - 1] || null;
  const run = newRun(sessionId, answer, user);
  follow(run, null).finally(() => {
    endRun(run);
    if (!run.abandoned) loadHistory(sessionId);
  });
}

// Reads the session's live answer into run.message, from after lastId (or from its start);
// false when the server has no live answer (204) or will not say.
async function follow(run, lastId) {
  let response;
  try {
    response = await request(sessionPath(run.sessionId, "/stream"), {
      signal: run.controller.signal,
      headers: lastId ? { "Last-Event-ID": lastId } : {},
    });
  } catch {
    return false;
  }
  if (response.status !== 200) return false;
  if (!lastId) run.replay = true; // the answer comes again from its first token
  try {
    await readRun(run, response);
  } catch {
    // the connection broke again: what was read stays
  }
  return true;
}

function newRun(sessionId, message, user) {
  const run = { sessionId, message, user, controller: new AbortController(), ended: false, abandoned: false, lastId: null };
  if (!state.live.has(sessionId)) state.live.set(sessionId, new Set());
  state.live.get(sessionId).add(run);
  run.lastBytes = Date.now();
  run.watchdog = setInterval(() => {
    if (Date.now() - run.lastBytes > SILENCE_MS) run.controller.abort();
  }, 1000);
  refreshControls();
  renderSessions();
  return run;
}

function endRun(run) {
  clearInterval(run.watchdog);
  state.live.get(run.sessionId)?.delete(run);
  clearTimeout(run.stopTimer);
  refreshControls();
}

async function readRun(run, response) {
  const seen = () => (run.lastBytes = Date.now());
  for await (const event of readEvents(response.body, seen)) {
    if (event.id) run.lastId = event.id;
    if (handleEvent(run, event) === "other") {
      run.controller.abort(); // a newer answer of this session: the history shows it
      return;
    }
  }
}

// Another tab (or a stream from before a reload) may be writing into this session.
function schedulePoll(id) {
  clearTimeout(state.pollTimer);
  const foreign = viewOf(id).messages.some(
    (m) => m.status === "streaming" && !liveOf(id).some((s) => s.message === m),
  );
  if (foreign) state.pollTimer = setTimeout(() => id === state.currentId && loadHistory(id), POLL_MS);
}

async function openFallback() {
  const next = state.sessions[0];
  if (next) {
    await openSession(next.id);
    return;
  }
  state.currentId = null;
  history.replaceState(null, "", location.pathname);
  renderSessions();
  renderConversation();
  refreshControls();
}

// A chat deleted here or elsewhere: gone from the list for good, whatever list arrives later.
function forgetSession(id) {
  state.deleted.add(id);
  state.unlisted.delete(id);
  state.views.delete(id);
  state.sessions = state.sessions.filter((s) => s.id !== id);
}

async function deleteSession(id) {
  state.confirming = null;
  try {
    // stop first, so the answer ends as stopped rather than as a torn connection
    if (liveOf(id).length) await api(sessionPath(id, "/stop"), { method: "POST" }).catch(() => null);
    await api(sessionPath(id), { method: "DELETE" });
  } catch (err) {
    if (err.code !== "not_found") {
      showNotice(err);
      renderSessions();
      return;
    }
  }
  for (const stream of state.live.get(id) || []) {
    stream.abandoned = true;
    stream.controller.abort();
  }
  state.live.delete(id);
  forgetSession(id);
  announce("Chat deleted.");
  if (id === state.currentId) await openFallback();
  else renderSessions();
}

// Sends `text` (the composer's, unless given) as the next prompt of the chat on screen.
async function send(text = el.prompt.value) {
  const typed = text === el.prompt.value;
  if (!text.trim()) return;
  hideNotice();
  if (state.making) await state.making.catch(() => null); // New chat was pressed: the prompt goes there
  let sessionId = state.currentId;
  if (!sessionId) {
    try {
      const session = await api("/api/sessions", { method: "POST" });
      state.sessions.unshift(session);
      state.unlisted.add(session.id);
      sessionId = session.id;
      state.currentId = session.id;
      history.replaceState(null, "", `#${encodeURIComponent(session.id)}`);
      renderSessions();
    } catch (err) {
      showNotice(err);
      return;
    }
  }
  const session = state.sessions.find((s) => s.id === sessionId);
  if (session && !session.title) {
    session.title = text.trim().split("\n")[0].slice(0, 60);
    renderSessions();
  }
  // the server supersedes the running answer; show it at once
  const previous = liveOf(sessionId);
  for (const stream of previous) {
    stream.message.supersededLocally = true;
    repaint(stream.message);
  }
  const model = el.model.value || undefined;
  const now = Date.now() / 1000;
  if (session) {
    session.updated_at = now;
    state.sessions = [session, ...state.sessions.filter((s) => s !== session)];
  }
  const user = { key: newKey(), role: "user", content: text, status: "sending", created_at: now };
  const answer = { key: newKey(), role: "assistant", content: "", status: "pending", model, error: null, created_at: now };
  appendMessage(sessionId, user);
  appendMessage(sessionId, answer);
  scrollToEnd(true);
  if (typed) {
    el.prompt.value = "";
    autosize();
  }
  await streamAnswer(sessionId, user, answer, { content: text, model }, previous);
}

async function streamAnswer(sessionId, user, answer, body, previous, path = "/messages") {
  const run = newRun(sessionId, answer, user);
  try {
    const response = await request(sessionPath(sessionId, path), {
      method: "POST",
      body,
      signal: run.controller.signal,
    });
    if (!response.ok) {
      await refused(sessionId, user, answer, body.content, previous, await errorOf(response));
      return;
    }
    try {
      await readRun(run, response);
    } catch (err) {
      if (run.abandoned || !run.lastId) throw err;
    }
    // the connection broke mid-answer: rejoin where it broke off, if the server still streams it
    if (!run.ended && run.lastId && !run.abandoned) {
      run.controller = new AbortController();
      run.lastBytes = Date.now();
      await follow(run, run.lastId);
    }
    if (!run.ended) throw new ApiError(0, "connection_lost", "");
  } catch (err) {
    if (run.abandoned) return;
    if (answer.status === "pending" && !run.ended && err.code === "network") {
      await refused(sessionId, user, answer, body.content, previous, err);
      return;
    }
    if (!run.ended) finish(run, "disconnected", { code: "connection_lost", message: "" });
  } finally {
    endRun(run);
    if (!run.abandoned) {
      refreshSessions();
      refreshHealth();
    }
  }
}

// A new version in place of the messages from `msg` on: its answer regenerated, or the prompt
// edited to `text` and answered. The old versions stay on the server, behind ‹ i/n ›.
async function newVersion(msg, text = null) {
  const sessionId = state.currentId;
  const view = viewOf(sessionId);
  const at = view.messages.indexOf(msg);
  const parent = view.messages[at - 1];
  if (at < 0 || (parent && parent.id == null)) return;
  hideNotice();
  const previous = liveOf(sessionId); // the server supersedes the running answer; show it at once
  for (const stream of previous) {
    stream.message.supersededLocally = true;
    repaint(stream.message);
  }
  const model = el.model.value || undefined;
  const now = Date.now() / 1000;
  const user = text === null ? parent : { key: newKey(), role: "user", content: text, status: "sending", created_at: now };
  const answer = { key: newKey(), role: "assistant", content: "", status: "pending", model, error: null, created_at: now };
  view.messages = [...view.messages.slice(0, at), ...(text === null ? [] : [user]), answer];
  renderConversation();
  const [path, body] =
    text === null
      ? [`/messages/${msg.id}/regenerate`, { model }]
      : ["/messages", { content: text, model, parent_id: parent ? parent.id : null }];
  await streamAnswer(sessionId, user, answer, body, previous, path);
  if (sessionId === state.currentId) await loadHistory(sessionId); // the versions, as stored
}

async function showVersion(messageId) {
  const sessionId = state.currentId;
  const top = el.conversation.scrollTop; // the reader stays where they were
  try {
    const data = await api(sessionPath(sessionId, "/leaf"), { method: "POST", body: { message_id: messageId } });
    await loadHistory(sessionId, data);
    el.conversation.scrollTop = top;
  } catch (err) {
    showNotice(err);
  }
}

// The server turned the prompt away before streaming: nothing was stored.
async function refused(sessionId, user, answer, text, previous, error) {
  removeMessage(sessionId, user);
  removeMessage(sessionId, answer);
  for (const stream of previous) {
    stream.message.supersededLocally = false;
    repaint(stream.message);
  }
  if (sessionId === state.currentId) {
    if (text && !el.prompt.value) {
      el.prompt.value = text;
      autosize();
    }
    showNotice(error);
  }
  if (error.code === "not_found") await loadHistory(sessionId);
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
    viewOf(run.sessionId).started = (viewOf(run.sessionId).started || 0) + 1; // see loadHistory
    if (payload.model) answer.model = payload.model;
    answer.status = "streaming";
    if (run.replay) {
      answer.content = ""; // a rejoin sends the answer again from its first token
      run.replay = false;
    }
    if (user) {
      user.id = payload.user_message_id;
      user.status = "completed";
      repaint(user);
    }
    refreshSessions(); // the title comes from the first prompt
  } else if (event === "status") {
    answer.progress = payload;
    answer.status = payload.state === "queued" ? "queued" : "streaming";
    answer.position = payload.position;
  } else if (event === "token") {
    if (answer.status !== "streaming") answer.status = "streaming";
    answer.progress = null;
    answer.content += payload.text || "";
  } else if (event === "end") {
    finish(run, payload.status || "completed", payload.error || null, payload.meta || null);
    return;
  }
  repaint(answer);
}

function finish(run, status, error, meta = null) {
  const answer = run.message;
  run.ended = true;
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

async function stop() {
  const sessionId = state.currentId;
  const running = liveOf(sessionId);
  if (!sessionId || !running.length) return;
  el.stop.disabled = true;
  try {
    await api(sessionPath(sessionId, "/stop"), { method: "POST" });
  } catch (err) {
    showNotice(err);
  }
  // the end event normally arrives at once; never leave the page waiting on it
  for (const run of running) {
    run.stopTimer = setTimeout(() => {
      if (run.ended) return;
      finish(run, "stopped", null);
      run.abandoned = true;
      run.controller.abort();
      loadHistory(sessionId);
    }, STOP_GRACE_MS);
  }
  el.prompt.focus();
}

// The server names the signed-in user in a meta tag; with no accounts there is none, and no sign-out.
function showAccount() {
  const name = document.querySelector('meta[name="jarvis-user"]')?.content;
  if (!name) return;
  el.accountName.textContent = name;
  el.accountInitial.textContent = [...name][0].toUpperCase();
  el.account.title = `Signed in as ${name}`;
  el.account.hidden = false;
}

async function signOut() {
  el.signOut.disabled = true;
  clearTimeout(state.pollTimer);
  const live = [...state.live.keys()].filter((id) => liveOf(id).length);
  const runs = live.flatMap(liveOf);
  // abandoned runs refresh nothing when they end: signed out, a refresh would only be refused
  for (const run of runs) run.abandoned = true;
  // stop first, so running answers end as stopped rather than as torn connections
  await Promise.all(live.map((id) => api(sessionPath(id, "/stop"), { method: "POST" }).catch(() => null)));
  for (const run of runs) run.controller.abort();
  try {
    await api("/logout", { method: "POST" });
  } catch (err) {
    el.signOut.disabled = false;
    showNotice(err);
    if (state.currentId) loadHistory(state.currentId); // the stopped answers, as stored
    return;
  }
  location.replace("/login");
}

function refreshControls() {
  const streaming = state.currentId ? liveOf(state.currentId).length > 0 : false;
  el.stop.hidden = !streaming;
  el.stop.disabled = !streaming;
  el.send.disabled = !el.prompt.value.trim();
  el.send.setAttribute("aria-label", streaming ? "Send message (replaces the current answer)" : "Send message");
}

function autosize() {
  el.prompt.style.height = "auto";
  el.prompt.style.height = `${Math.min(el.prompt.scrollHeight, 240)}px`;
  refreshControls();
}

function openSidebarPanel() {
  el.app.classList.add("sidebar-open");
  el.scrim.hidden = false;
  el.openSidebar.setAttribute("aria-expanded", "true");
  el.newChat.focus();
}

function closeSidebar() {
  if (!el.app.classList.contains("sidebar-open")) return;
  el.app.classList.remove("sidebar-open");
  el.scrim.hidden = true;
  el.openSidebar.setAttribute("aria-expanded", "false");
}

async function loadModels() {
  let data;
  try {
    data = await api("/api/models");
  } catch (err) {
    const option = new Option("Default model", "");
    el.model.replaceChildren(option);
    el.model.title = explainError(err).detail;
    return;
  }
  state.models = (data.models || []).map((m) => m.name).filter(Boolean);
  state.defaultModel = data.default || "";
  const names = [...state.models];
  const fallback = names.find((n) => n === state.defaultModel) || names.find((n) => n === `${state.defaultModel}:latest`);
  if (state.defaultModel && !fallback) names.unshift(state.defaultModel);
  el.model.replaceChildren(...names.map((name) => modelOption(name, data)));
  const saved = localStorage.getItem(MODEL_KEY);
  el.model.value = names.includes(saved) ? saved : fallback || state.defaultModel || names[0] || "";
  el.model.title = "";
}

// with several model hosts, each option says which hosts have the model and whether they answer
function modelOption(name, data) {
  const option = new Option(name, name);
  const where = (data.models || []).find((m) => m.name === name)?.hosts;
  if (!data.hosts || !where) return option;
  const hosts = data.hosts.filter((h) => where.includes(h.url));
  const up = hosts.filter((h) => h.state === "up").length;
  option.text = `${name} (${up}/${hosts.length} ${hosts.length === 1 ? "host" : "hosts"} up)`;
  option.title = hosts.map((h) => `${h.url}: ${h.state}, ${plural(h.live, "answer")}`).join("\n");
  return option;
}

async function refreshHealth() {
  try {
    const health = await api("/healthz");
    const backend = { local: "Local model", hosts: "Model hosts" }[health.backend] || "Ollama";
    const ok = Boolean(health.upstream_ok);
    el.backend.dataset.state = ok ? "ok" : "down";
    el.backendText.textContent = `${backend} · ${health.model || "no model"}${ok ? "" : " (unreachable)"}`;
    el.backend.title =
      `${backend} ${ok ? "is answering" : "is not reachable"}` +
      (health.active_streams ? `; ${plural(health.active_streams, "answer")} streaming` : "") +
      (health.hosts || []).map((h) => `\n${h.url}: ${h.state}, ${plural(h.live, "answer")}`).join("");
  } catch {
    el.backend.dataset.state = "down";
    el.backendText.textContent = "Server not reachable";
    el.backend.title = "";
  }
}

el.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});

el.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  } else if (e.key === "Escape" && !el.stop.hidden) {
    e.preventDefault();
    stop();
  }
});

el.prompt.addEventListener("input", autosize);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && el.app.classList.contains("sidebar-open")) {
    closeSidebar();
    el.openSidebar.focus();
  }
});
el.stop.addEventListener("click", stop);
el.signOut.addEventListener("click", signOut);
el.newChat.addEventListener("click", newChat);
el.noticeClose.addEventListener("click", () => {
  hideNotice();
  el.prompt.focus();
});
el.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, el.model.value));
el.openSidebar.addEventListener("click", openSidebarPanel);
el.closeSidebar.addEventListener("click", closeSidebar);
el.scrim.addEventListener("click", closeSidebar);
el.messages.addEventListener("click", (e) => {
  if (e.target.closest("button.continue")) {
    send("Continue"); // the cut answer is in the context the server sends
    return;
  }
  const button = e.target.closest("button.copy");
  if (!button) return;
  if (button.classList.contains("copy-message")) {
    const li = button.closest(".msg");
    copyText(button, messageText.get(li) || "", li.querySelector(".bubble, .msg-content"));
  } else {
    copyCode(button);
  }
});
setupVersions(el.messages, {
  messageOf: (li) => viewOf(state.currentId).messages.find((m) => state.rendered.get(m.key) === li),
  show: showVersion,
  regenerate: (answer) => newVersion(answer),
  resend: (prompt, text) => newVersion(prompt, text),
});
setupSearch({
  input: el.search,
  results: el.searchResults,
  list: el.sessionList,
  open: (id) => openSession(id),
  failed: showNotice,
});
// a chosen action closes the menu, a download included (it leaves the page where it is)
el.chatMenu.querySelector(".chat-menu-items").addEventListener("click", () => (el.chatMenu.open = false));
el.renameChat.addEventListener("click", () => {
  if (!state.currentId) return;
  openSidebarPanel();
  startRename(state.currentId);
});
el.importChat.addEventListener("change", importChat);
const showSettings = setupSettings({
  button: el.chatSettings,
  current: () => state.currentId,
  saved: () => announce("Chat settings saved; they apply from the next prompt."),
});

async function importChat() {
  const file = el.importChat.files[0];
  el.importChat.value = "";
  if (!file) return;
  try {
    let body;
    try {
      body = JSON.parse(await file.text());
    } catch {
      throw new ApiError(400, "bad_request", "That file is not JSON: import a chat exported as JSON.");
    }
    const session = await api("/api/sessions/import", { method: "POST", body });
    await loadSessions();
    announce("Chat imported.");
    await openSession(session.id);
  } catch (err) {
    showNotice(err);
  }
}
window.addEventListener("hashchange", () => {
  const id = decodeURIComponent(location.hash.slice(1));
  if (id && id !== state.currentId && state.sessions.some((s) => s.id === id)) openSession(id);
});

async function start() {
  // the server trades ?token= for a cookie before it serves this page; never keep one in the address bar
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname + location.hash);
  showAccount();
  el.prompt.focus();
  refreshControls();
  loadModels();
  refreshHealth();
  setInterval(refreshHealth, HEALTH_MS);
  try {
    await loadSessions();
  } catch (err) {
    if (err.status === 401) {
      location.replace("/login"); // signed out since this page was served
      return;
    }
    showNotice(err);
    return;
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.sessions.find((s) => s.id === wanted) || state.sessions[0];
  if (first) await openSession(first.id);
  else await openFallback();
  document.body.dataset.ready = "true";
}

start();
