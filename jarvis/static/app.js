// The Jarvis chat page. Plain ES modules: no build step, no inline code, works under
// "default-src 'self'". Model output is rendered as Markdown and sanitised before it
// touches the DOM; user text is only ever set as textContent. This module wires the others
// and starts the page:
//   state.js         what the page knows (the one mutable object)
//   dom.js           the page's elements, the notice, the announcer, the buttons
//   message.js       one message's element and painting
//   conversation.js  the conversation on screen, repainted once per frame
//   connection.js    the answers streaming in, and rejoining them
//   chats.js         the chat list, the chat on screen and its history
//   composer.js      sending, new versions and Stop
//   models.js        the model picker and the model server's status
//   thinking.js      what the model thought, collapsed above its answer
//   toolcalls.js     an answer's tool calls and their results, where in its text they were made
//   settings.js      a chat's own settings (tool-settings.js: the tools it offers)
//   attachments.js   images attached to a prompt (button, paste, drop) and shown on it

import { api, sessionPath } from "./api.js";
import { loadHistory, loadSessions, openFallback, openSession, refreshSessions, renderSessions, setupChats } from "./chats.js";
import { setupComposer } from "./composer.js";
import { setupConversation } from "./conversation.js";
import { closeSidebar, el, hideNotice, openSidebarPanel, refreshControls, showNotice } from "./dom.js";
import { loadModels, refreshHealth, setupModels } from "./models.js";
import { changes, liveOf, state } from "./state.js";

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
    await api("logout", { method: "POST" });
  } catch (err) {
    el.signOut.disabled = false;
    showNotice(err);
    if (state.currentId) loadHistory(state.currentId); // the stopped answers, as stored
    return;
  }
  location.replace("login");
}

function setup() {
  setupConversation();
  setupComposer();
  setupChats();
  setupModels();
  changes.addEventListener("runs", renderSessions);
  changes.addEventListener("started", refreshSessions);
  el.signOut.addEventListener("click", signOut);
  el.noticeClose.addEventListener("click", () => {
    hideNotice();
    el.prompt.focus();
  });
  el.openSidebar.addEventListener("click", openSidebarPanel);
  el.closeSidebar.addEventListener("click", closeSidebar);
  el.scrim.addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && el.app.classList.contains("sidebar-open")) {
      closeSidebar();
      el.openSidebar.focus();
    }
  });
}

async function start() {
  // the server trades ?token= for a cookie before it serves this page; never keep one in the address bar
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname + location.hash);
  setup();
  showAccount();
  el.prompt.focus();
  refreshControls();
  loadModels();
  refreshHealth();
  try {
    await loadSessions();
  } catch (err) {
    if (err.status === 401) {
      location.replace("login"); // signed out since this page was served
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
