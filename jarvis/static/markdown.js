// Model output as Markdown: raw HTML is shown as text, the result is sanitised,
// images become links, and code blocks are highlighted.

import { COPY_ICON, iconButton } from "./make.js";
import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";
import hljs from "./vendor/highlight/highlight.min.js";

const escapeHtml = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const markdown = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // raw HTML in an answer is shown as text, never parsed
    html({ text, block }) {
      return block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text);
    },
    // images would load from anywhere: show them as links instead
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s+/)[0].toLowerCase();
      const known = language && hljs.getLanguage(language) ? language : "";
      const body = known ? hljs.highlight(text, { language: known, ignoreIllegals: true }).value : escapeHtml(text);
      const label = escapeHtml(language || "text");
      return (
        `<div class="code-block"><div class="code-head"><span class="code-lang">${label}</span></div>` +
        `<pre><code class="hljs${known ? ` language-${known}` : ""}">${body}</code></pre></div>`
      );
    },
  },
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "img", "form", "button", "textarea", "select", "video", "audio", "source", "picture"],
  FORBID_ATTR: ["style", "srcset", "id", "name"],
  ALLOW_DATA_ATTR: false,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// What each element shows: the stream it belongs to, the text it was given, the part of it
// (normalised) not yet in a finished block, the nodes of the last block, which may still grow,
// and when it was drawn.
const shown = new WeakMap();
// a link reference definition ("[x]: url") changes blocks before it: render all of it then
const REFERENCE = /^ {0,3}\[[^\]]+\]:/m;
// The growing block is parsed, sanitised and highlighted again at most every REDRAW_MS, and
// less often when that takes longer, so that it keeps under REDRAW_SHARE of the main thread;
// in between, new text is appended to it as plain text, which costs next to nothing.
const REDRAW_MS = 150;
const REDRAW_SHARE = 0.01;
const CONTAINERS = new Set(["UL", "OL", "LI", "BLOCKQUOTE", "DIV", "PRE", "TABLE", "TBODY", "TR"]);

// Render `text` into `target`. `stream` names the answer the text belongs to (its trace id, from
// the stream's start event): a text of the same stream, at least as long as the one shown, is that
// answer grown, so the blocks that are finished keep their nodes and only the last block is
// drawn again, and nothing here reads the whole text: a long answer costs time in proportion to
// what arrives, not to its length. Any other text (no stream, another stream, or a shorter text,
// a stream replayed from its start) is drawn whole.
export function renderMarkdown(target, text, { stream = null, now = performance.now() } = {}) {
  try {
    renderInto(target, text, stream, now);
  } catch (err) {
    // a pathological answer (thousands of nested quotes) overflows the parser's stack:
    // show that one answer as plain text, and the rest of the conversation still renders
    console.warn("Markdown rendering failed; the answer is shown as plain text:", err.message);
    shown.delete(target);
    target.classList.add("plain-text");
    target.textContent = text;
  }
}

function renderInto(target, text, stream, now) {
  const state = shown.get(target);
  const grown = state && stream !== null && state.stream === stream && text.length >= state.given.length;
  if (!grown || state.given.endsWith("\r")) {
    drawWhole(target, text, stream, now);
    return;
  }
  const added = normalise(text.slice(state.given.length));
  const rest = state.rest + added; // only the blocks not yet finished: never the whole answer
  if (REFERENCE.test(rest)) {
    drawWhole(target, text, stream, now);
    return;
  }
  const pause = Math.max(REDRAW_MS, state.cost / REDRAW_SHARE);
  if (now - state.drawn < pause && state.tail.length) {
    // the last element drawn, not the line break the parser writes after it
    const last = state.tail.findLast((node) => node.nodeType === Node.ELEMENT_NODE);
    const end = last ? openEnd(last) : target;
    const piece = document.createTextNode(added);
    end.append(piece);
    // the last text of an answer must not stay raw: draw it once the pause has passed
    const pending =
      state.pending ??
      setTimeout(() => {
        const latest = shown.get(target);
        const now = Math.max(performance.now(), state.drawn + pause);
        if (latest?.drawn === state.drawn) renderMarkdown(target, latest.given, { stream: latest.stream, now });
      }, pause);
    const tail = end === target ? [...state.tail, piece] : state.tail;
    shown.set(target, { ...state, given: text, rest, tail, pending });
    return;
  }
  const began = performance.now();
  const tokens = markdown.lexer(rest);
  // every block before the last non-blank one is finished: later text cannot change it
  let last = tokens.length - 1;
  while (last > 0 && tokens[last].type === "space") last -= 1;
  for (const node of state.tail) node.remove();
  let done = 0;
  if (last > 0) {
    const finished = tokens.slice(0, last);
    target.append(fragment(markdown.parser(Object.assign(finished, { links: tokens.links }))));
    done = finished.reduce((n, token) => n + token.raw.length, 0);
  }
  const growing = fragment(markdown.parser(Object.assign(tokens.slice(Math.max(last, 0)), { links: tokens.links })));
  const tail = [...growing.childNodes];
  target.append(growing);
  const cost = performance.now() - began;
  shown.set(target, { stream, given: text, rest: rest.slice(done), tail, drawn: now, cost });
}

// where text typed at the end of a block goes: into its last paragraph, item or code
function openEnd(node) {
  while (node.lastElementChild && node.lastChild === node.lastElementChild && CONTAINERS.has(node.tagName)) {
    node = node.lastElementChild;
  }
  return node.nodeType === Node.ELEMENT_NODE ? node : node.parentNode;
}

// Render `text` from scratch (as every frame was rendered before): the benchmark's baseline.
export function renderWhole(target, text, now = performance.now()) {
  drawWhole(target, text, null, now);
}

// a new element, a finished text, or a text that is not the shown stream grown
function drawWhole(target, text, stream, now) {
  target.replaceChildren(fragment(markdown.parse(text)));
  target.classList.remove("plain-text");
  const tail = [...target.childNodes];
  shown.set(target, { stream, given: text, rest: normalise(text), tail, drawn: now, cost: 0 });
}

// as marked's lexer reads line ends, so that offsets into the text hold
const normalise = (text) => text.replace(/\r\n?/g, "\n");

function fragment(html) {
  const out = DOMPurify.sanitize(html, { ...PURIFY, RETURN_DOM_FRAGMENT: true });
  for (const head of out.querySelectorAll(".code-head")) head.append(copyButton());
  return out;
}

const copyButton = () => iconButton("copy", "Copy code", COPY_ICON, "Copy");
