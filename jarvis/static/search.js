// Searching the chats from the sidebar: results replace the list while the box holds words.

import { api } from "./api.js";

const DELAY_MS = 200; // search when typing pauses, not on every key

export function setupSearch({ input, results, list, open, failed }) {
  let timer = 0;
  let asked = 0; // answers to older queries are dropped

  const clear = () => {
    results.hidden = true;
    results.replaceChildren();
    list.hidden = false;
  };

  const show = (query, sessions) => {
    const items = sessions.map((found) => {
      const li = document.createElement("li");
      li.className = "session search-result";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "session-open";
      const title = document.createElement("span");
      title.className = "session-title";
      title.textContent = found.title || "New chat";
      button.append(title);
      if (found.snippet) {
        const snippet = document.createElement("span");
        snippet.className = "search-snippet";
        snippet.textContent = found.snippet;
        button.append(snippet);
      }
      button.addEventListener("click", () => {
        input.value = "";
        clear();
        open(found.id);
      });
      li.append(button);
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "session-empty";
      li.textContent = `No chat mentions “${query}”.`;
      items.push(li);
    }
    results.replaceChildren(...items);
    results.hidden = false;
    list.hidden = true;
  };

  const run = async () => {
    const query = input.value.trim();
    const ticket = ++asked;
    if (!query) {
      clear();
      return;
    }
    try {
      const data = await api(`api/search?q=${encodeURIComponent(query.slice(0, 200))}`);
      if (ticket === asked) show(query, data.sessions || []);
    } catch (err) {
      if (ticket === asked) failed(err);
    }
  };

  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, DELAY_MS);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && input.value) {
      e.stopPropagation();
      input.value = "";
      clear();
    }
  });
}
