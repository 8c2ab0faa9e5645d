// The chat settings' "Tools": the tools of the MCP servers Jarvis is configured with (GET /api/tools),
// a switch each, with All and None. Saved as the chat's "tools" setting: null (every configured
// tool, those listed later too) when every switch is on, false when none is, else the list of ids.
// Names and descriptions come from the servers: set as text.

import { api } from "./api.js";
import { plural } from "./errors.js";

const $ = (id) => document.getElementById(id);

// A server's state as its heading says it, beside its name.
function stateOf(server) {
  if (server.state === "failed") return `failed: ${server.error?.message || "it did not start"}`;
  if (server.state === "not started") return "not started yet: its tools are listed once it has run";
  return server.tools?.length ? "" : "lists no tools";
}

export function setupToolSettings() {
  const f = {
    box: $("settings-tools"),
    list: $("settings-tools-list"),
    summary: $("settings-tools-summary"),
  };
  let shown = false; // the switches stand for the chat's setting: only then is it sent
  let asked = 0; // the latest fill: an older answer of /api/tools is dropped
  let made = 0; // ids for the switches' labels

  const switches = () => [...f.list.querySelectorAll("input[type=checkbox]")];

  function count() {
    const all = switches();
    const on = all.filter((s) => s.checked).length;
    if (!all.length) f.summary.textContent = "No tool is listed yet.";
    else if (on === all.length) f.summary.textContent = `All ${plural(all.length, "tool")}, and any listed later`;
    else f.summary.textContent = on ? `${on} of ${plural(all.length, "tool")}` : "No tools: answers use none";
  }

  function toolSwitch(tool, on, unlisted) {
    const row = document.createElement("div");
    row.className = "tool-switch";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.setAttribute("role", "switch");
    input.id = `settings-tool-${++made}`;
    input.value = tool.id;
    input.checked = on;
    if (unlisted) input.dataset.unlisted = "true";
    const label = document.createElement("label");
    label.htmlFor = input.id;
    const name = document.createElement("code");
    name.textContent = tool.id;
    label.append(name);
    row.append(input, label);
    if (tool.description) {
      const about = document.createElement("small");
      about.id = `${input.id}-about`;
      about.textContent = tool.description;
      input.setAttribute("aria-describedby", about.id);
      row.append(about);
    }
    return row;
  }

  function group(title, note, tools, on, unlisted = false) {
    const box = document.createElement("div");
    box.className = "tools-server";
    const head = document.createElement("div");
    head.className = "tools-server-head";
    const name = document.createElement("strong");
    name.textContent = title;
    head.append(name);
    if (note) {
      const state = document.createElement("span");
      state.textContent = note;
      head.append(state);
    }
    box.append(head, ...tools.map((t) => toolSwitch(t, on(t.id), unlisted)));
    return box;
  }

  // Lists the configured tools, switched on as `setting` (the chat's "tools") says; hidden when
  // Jarvis has no tools configured or cannot say (then the setting is left as it is).
  async function fill(setting) {
    const mine = ++asked;
    shown = false;
    f.box.hidden = true;
    let found;
    try {
      found = await api("api/tools");
    } catch {
      return;
    }
    if (mine !== asked || !found.configured) return;
    const on = (id) => setting == null || (Array.isArray(setting) && setting.includes(id));
    const groups = found.servers.map((s) => group(s.server, stateOf(s), s.tools || [], on));
    // tools the chat names that no server lists now (one not started, or failed): kept, and shown
    const listed = new Set(found.servers.flatMap((s) => (s.tools || []).map((t) => t.id)));
    const others = Array.isArray(setting) ? setting.filter((id) => !listed.has(id)) : [];
    if (others.length) {
      const tools = others.map((id) => ({ id, description: "" }));
      groups.push(group("Not listed now", "this chat names them; their server has not listed them", tools, on, true));
    }
    f.list.replaceChildren(...groups);
    f.box.hidden = false;
    shown = true;
    count();
  }

  // The setting the switches say; undefined while they say nothing (not shown, or no tool listed).
  function value() {
    const all = switches();
    if (!shown || !all.length) return undefined;
    const on = all.filter((s) => s.checked).map((s) => s.value);
    if (!on.length) return false;
    if (on.length === all.length && !all.some((s) => s.dataset.unlisted)) return null;
    return on;
  }

  const setAll = (checked) => {
    for (const s of switches()) s.checked = checked;
    count();
  };
  f.list.addEventListener("change", count);
  $("settings-tools-all").addEventListener("click", () => setAll(true));
  $("settings-tools-none").addEventListener("click", () => setAll(false));
  return { fill, value };
}

// "no tools", "3 tools": what a chat's "tools" setting says, or "" when it offers every tool
export function describeTools(setting) {
  if (setting === false) return "no tools";
  return Array.isArray(setting) ? plural(setting.length, "tool") : "";
}
