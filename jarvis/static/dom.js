// The page's elements, and what it shows outside the conversation: the notice, the announcer,
// the composer's buttons and the chat drawer of narrow screens.

import { errorParts, withCode } from "./errors.js";
import { liveOf, state } from "./state.js";

const $ = (id) => document.getElementById(id);

export const el = {
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
  attach: $("attach"),
  attachInput: $("attach-input"),
  attachments: $("attachments"),
  send: $("send"),
  stop: $("stop"),
  announcer: $("announcer"),
};

export function showNotice(error) {
  const { title, detail } = errorParts(error);
  el.noticeTitle.textContent = title;
  el.noticeTitle.hidden = !title;
  el.noticeDetail.replaceChildren(withCode(detail));
  el.noticeAction.hidden = error?.status !== 401;
  el.notice.hidden = false;
}

export function hideNotice() {
  el.notice.hidden = true;
}

export function announce(text) {
  el.announcer.textContent = "";
  // a fresh text node is announced even when it repeats the last one
  requestAnimationFrame(() => (el.announcer.textContent = text));
}

export function refreshControls() {
  const streaming = state.currentId ? liveOf(state.currentId).length > 0 : false;
  el.stop.hidden = !streaming;
  el.stop.disabled = !streaming;
  el.send.disabled = !el.prompt.value.trim() && !el.attachments.children.length;
  el.send.setAttribute("aria-label", streaming ? "Send message (replaces the current answer)" : "Send message");
}

export function autosize() {
  el.prompt.style.height = "auto";
  el.prompt.style.height = `${Math.min(el.prompt.scrollHeight, 240)}px`;
  refreshControls();
}

export function openSidebarPanel() {
  el.app.classList.add("sidebar-open");
  el.scrim.hidden = false;
  el.openSidebar.setAttribute("aria-expanded", "true");
  el.newChat.focus();
}

export function closeSidebar() {
  if (!el.app.classList.contains("sidebar-open")) return;
  el.app.classList.remove("sidebar-open");
  el.scrim.hidden = true;
  el.openSidebar.setAttribute("aria-expanded", "false");
}
