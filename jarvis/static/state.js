// What the page knows: the chats, each chat's conversation and the answers streaming into them.
// One object; the comments name the module that writes each field, the others only read it.

export const LIVE = new Set(["pending", "queued", "streaming"]);

export const state = {
  // chats.js (and composer.js, which moves the chat it sends to to the top of the list)
  sessions: [], // as GET /api/sessions lists them, newest first
  currentId: null,
  confirming: null, // the session whose delete waits for a second click
  // a chat list fetched before a delete or a new chat may arrive after it
  deleted: new Set(),
  unlisted: new Set(), // chats made here that no list has shown yet
  making: null, // the chat New chat asked for, until the server answers
  renaming: null, // the session whose title is being edited
  pollTimer: null,
  // chats.js, composer.js and connection.js: the messages, and a count of answers started
  views: new Map(), // session id -> {messages: [...], started: n}
  // connection.js (chats.js drops a deleted chat's)
  live: new Map(), // session id -> Set of running streams
  attached: new Set(), // message ids this tab has rejoined (or found over), so it asks once
  // conversation.js
  rendered: new Map(), // message key -> <li>, for the session on screen only
  nextKey: 1,
};

export const newKey = () => `local-${state.nextKey++}`;

export function viewOf(sessionId) {
  if (!state.views.has(sessionId)) state.views.set(sessionId, { messages: [] });
  return state.views.get(sessionId);
}

export function liveOf(sessionId) {
  return [...(state.live.get(sessionId) || [])].filter((s) => !s.ended);
}

// What the connection tells the page above it, which app.js wires: "runs" when a stream starts
// or ends (the chat list shows which chats answer), "started" when the server has taken a prompt
// (the list, with the chat's title and time, is fetched again).
export const changes = new EventTarget();
export const notify = (type) => changes.dispatchEvent(new Event(type));
