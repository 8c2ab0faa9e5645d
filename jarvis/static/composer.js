// Prompts: sending one (from the composer, Continue, or as a new version of a message), what
// happens when the server turns it away, and Stop.

import { api, sessionPath } from "./api.js";
import { restoreImages, setupAttachments, takeImages } from "./attachments.js";
import { loadHistory, refreshSessions, renderSessions, startChat } from "./chats.js";
import { finish, streamAnswer } from "./connection.js";
import { appendMessage, removeMessage, renderConversation, repaint, scrollToEnd } from "./conversation.js";
import { autosize, el, hideNotice, showNotice } from "./dom.js";
import { refreshHealth } from "./models.js";
import { liveOf, newKey, state, viewOf } from "./state.js";
import { setupVersions } from "./versions.js";

const STOP_GRACE_MS = 8000; // a stop the server never confirms is ended here

// Sends `text` (the composer's, unless given) as the next prompt of the chat on screen.
async function send(text = el.prompt.value) {
  const typed = text === el.prompt.value;
  const attached = typed && el.attachments.children.length > 0;
  if (!text.trim() && !attached) return;
  hideNotice();
  if (state.making) await state.making.catch(() => null); // New chat was pressed: the prompt goes there
  let sessionId = state.currentId;
  if (!sessionId) {
    try {
      sessionId = await startChat();
    } catch (err) {
      showNotice(err);
      return;
    }
  }
  const session = state.sessions.find((s) => s.id === sessionId);
  if (session && !session.title) {
    session.title = text.trim().split("\n")[0].slice(0, 60) || "Image";
    renderSessions();
  }
  // the server supersedes the running answer; show it at once
  const previous = supersede(sessionId);
  const model = el.model.value || undefined;
  const now = Date.now() / 1000;
  if (session) {
    session.updated_at = now;
    state.sessions = [session, ...state.sessions.filter((s) => s !== session)];
  }
  const images = attached ? takeImages() : [];
  const user = { key: newKey(), role: "user", content: text, status: "sending", created_at: now, images };
  const answer = { key: newKey(), role: "assistant", content: "", status: "pending", model, error: null, created_at: now };
  appendMessage(sessionId, user);
  appendMessage(sessionId, answer);
  scrollToEnd(true);
  if (typed) {
    el.prompt.value = "";
    autosize();
  }
  const body = { content: text, model };
  if (images.length) body.images = images.map((image) => image.url);
  await answerPrompt(sessionId, user, answer, "/messages", body, previous);
}

// Marks the answers running in the session as superseded, before the server says so.
function supersede(sessionId) {
  const previous = liveOf(sessionId);
  for (const stream of previous) {
    stream.message.supersededLocally = true;
    repaint(stream.message);
  }
  return previous;
}

async function answerPrompt(sessionId, user, answer, path, body, previous) {
  const { refused, abandoned } = await streamAnswer(sessionId, user, answer, path, body);
  if (refused) await refuse(sessionId, user, answer, body.content, previous, refused);
  if (!abandoned) {
    refreshSessions();
    refreshHealth();
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
  const previous = supersede(sessionId);
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
  await answerPrompt(sessionId, user, answer, path, body, previous);
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
async function refuse(sessionId, user, answer, text, previous, error) {
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
    restoreImages(user.images?.filter((image) => image.bitmap));
    showNotice(error);
  }
  if (error.code === "not_found") await loadHistory(sessionId);
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

// Wires the composer, Stop, Continue and the versions' tools under each message.
export function setupComposer() {
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
  setupAttachments();
  el.stop.addEventListener("click", stop);
  el.messages.addEventListener("click", (e) => {
    if (e.target.closest("button.continue")) send("Continue"); // the cut answer is in the context the server sends
  });
  setupVersions(el.messages, {
    messageOf: (li) => viewOf(state.currentId).messages.find((m) => state.rendered.get(m.key) === li),
    show: showVersion,
    regenerate: (answer) => newVersion(answer),
    resend: (prompt, text) => newVersion(prompt, text),
  });
}
