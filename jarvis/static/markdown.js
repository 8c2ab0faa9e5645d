// Model output as Markdown: raw HTML is shown as text, the result is sanitised,
// images become links, and code blocks are highlighted.

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

export function renderMarkdown(target, text) {
  let html;
  try {
    html = DOMPurify.sanitize(markdown.parse(text), PURIFY);
  } catch (err) {
    // a pathological answer (thousands of nested quotes) overflows the parser's stack:
    // show that one answer as plain text, and the rest of the conversation still renders
    console.warn("Markdown rendering failed; the answer is shown as plain text:", err.message);
    target.classList.add("plain-text");
    target.textContent = text;
    return;
  }
  target.classList.remove("plain-text");
  target.innerHTML = html;
  for (const head of target.querySelectorAll(".code-head")) head.append(copyButton());
}

function copyButton() {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.setAttribute("aria-label", "Copy code");
  button.append(icon("M9 9h10v10H9zM5 15V5h10"), document.createTextNode("Copy"));
  return button;
}

export function icon(d) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", d);
  svg.append(path);
  return svg;
}

export async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("code");
  if (!code) return;
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.lastChild.textContent = "Copied";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(code);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.lastChild.textContent = "Press Ctrl+C";
  }
  setTimeout(() => (button.lastChild.textContent = "Copy"), 1500);
}
