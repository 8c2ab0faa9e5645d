// The chats: the list in the sidebar (open, rename, delete, import), which chat is on screen, and
// its history as the server stores it, merged with the answers this tab is still streaming.

import { ApiError, api, sessionPath } from "./api.js";
import { rejoin } from "./connection.js";
import { renderConversation } from "./conversation.js";
import { announce, closeSidebar, el, hideNotice, openSidebarPanel, refreshControls, showNotice } from "./dom.js";
import { iconButton, make } from "./make.js";
import { setupSearch } from "./search.js";
import { setupSettings } from "./settings.js";
import { renameField, withGroups } from "./sidebar.js";
import { LIVE, liveOf, state, viewOf } from "./state.js";
import { linkToolResults } from "./toolcalls.js";

const ICONS = {
  rename: "M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4",
  delete: "M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3",
};
const POLL_MS = 1000; // refresh a session another tab is streaming into

let showSettings = () => {}; // the settings chip of the chat on screen, once setupChats has run

function sessionTitle(session) {
  return (session && session.title) || "New chat";
}

export function renderSessions() {
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

    const name = sessionTitle(session);
    const rename = iconButton("session-action session-rename-button", `Rename chat: ${name}`, ICONS.rename, null, {
      title: "Rename chat",
    });
    rename.addEventListener("click", () => startRename(session.id));
    const del = iconButton("session-action session-delete", `Delete chat: ${name}`, ICONS.delete, null, {
      title: "Delete chat",
    });
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
  const question = make("span", { textContent: "Delete this chat?" });
  const label = `Confirm delete: ${sessionTitle(session)}`;
  const yes = make("button", { type: "button", className: "confirm-delete", textContent: "Delete", "aria-label": label });
  const no = make("button", { type: "button", textContent: "Cancel" });
  yes.addEventListener("click", () => deleteSession(session.id));
  no.addEventListener("click", () => {
    state.confirming = null;
    renderSessions();
  });
  return make("div", { className: "session-confirm" }, question, yes, no);
}


export async function loadSessions() {
  const data = await api("api/sessions");
  const listed = (data.sessions || []).filter((s) => !state.deleted.has(s.id));
  for (const s of listed) state.unlisted.delete(s.id);
  state.sessions = [...state.sessions.filter((s) => state.unlisted.has(s.id)), ...listed];
  renderSessions();
}

export async function refreshSessions() {
  try {
    await loadSessions();
  } catch {
    // the list is refreshed again after the next answer
  }
}

export async function newChat() {
  closeSidebar();
  hideNotice();
  const view = state.currentId && state.views.get(state.currentId);
  if (state.making || (view && view.messages.length === 0)) {
    el.prompt.focus();
    return;
  }
  // a prompt sent before the server answers waits for this chat and goes into it
  state.making = api("api/sessions", { method: "POST" }).then((session) => {
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

export async function openSession(id) {
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
export async function loadHistory(id, fetched = null) {
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
  linkToolResults(merged);
  viewOf(id).messages = merged;
  if (id !== state.currentId) return;
  showSettings(data.settings, id);
  renderConversation();
  rejoin(id)?.then((over) => over && loadHistory(id)); // then the answer as stored
  schedulePoll(id);
}

// Another tab (or a stream from before a reload) may be writing into this session.
function schedulePoll(id) {
  clearTimeout(state.pollTimer);
  const foreign = viewOf(id).messages.some(
    (m) => m.status === "streaming" && !liveOf(id).some((s) => s.message === m),
  );
  if (foreign) state.pollTimer = setTimeout(() => id === state.currentId && loadHistory(id), POLL_MS);
}

export async function openFallback() {
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

export async function deleteSession(id) {
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


// A chat for a prompt typed with none on screen: made on the server and shown at once.
export async function startChat() {
  const session = await api("api/sessions", { method: "POST" });
  state.sessions.unshift(session);
  state.unlisted.add(session.id);
  state.currentId = session.id;
  history.replaceState(null, "", `#${encodeURIComponent(session.id)}`);
  renderSessions();
  return session.id;
}

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
    const session = await api("api/sessions/import", { method: "POST", body });
    await loadSessions();
    announce("Chat imported.");
    await openSession(session.id);
  } catch (err) {
    showNotice(err);
  }
}

// Wires the sidebar, the chat menu, search, the settings dialog and the address's #chat.
export function setupChats() {
  el.newChat.addEventListener("click", newChat);
  // a chosen action closes the menu, a download included (it leaves the page where it is)
  el.chatMenu.querySelector(".chat-menu-items").addEventListener("click", () => (el.chatMenu.open = false));
  el.renameChat.addEventListener("click", () => {
    if (!state.currentId) return;
    openSidebarPanel();
    startRename(state.currentId);
  });
  el.importChat.addEventListener("change", importChat);
  setupSearch({
    input: el.search,
    results: el.searchResults,
    list: el.sessionList,
    open: (id) => openSession(id),
    failed: showNotice,
  });
  showSettings = setupSettings({
    button: el.chatSettings,
    current: () => state.currentId,
    saved: () => announce("Chat settings saved; they apply from the next prompt."),
  });
  window.addEventListener("hashchange", () => {
    const id = decodeURIComponent(location.hash.slice(1));
    if (id && id !== state.currentId && state.sessions.some((s) => s.id === id)) openSession(id);
  });
}
