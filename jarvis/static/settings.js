// A chat's own settings: a dialog to read and change its system prompt, temperature, answer
// length and tools. The server checks and stores them; this only fills the form and sends what it holds.

import { api, sessionPath } from "./api.js";
import { describeTools, setupToolSettings } from "./tool-settings.js";

const $ = (id) => document.getElementById(id);

// Wires the dialog to `button` and to the chip that says a chat has settings of its own;
// `current()` names the chat on screen, `saved()` is told after a save. Returns `show(settings, id)`,
// for the page to call with the settings of the chat `id` it opens: the dialog starts from them.
export function setupSettings({ button, current, saved }) {
  const chip = $("settings-chip");
  const f = {
    dialog: $("settings-dialog"),
    form: $("settings-form"),
    system: $("settings-system"),
    temperature: $("settings-temperature"),
    maxTokens: $("settings-max-tokens"),
    error: $("settings-error"),
    reset: $("settings-reset"),
    cancel: $("settings-cancel"),
    save: $("settings-save"),
  };
  const tools = setupToolSettings();
  let sessionId = null;
  let known = { id: null, settings: {} }; // the chat on screen's settings, as last read or saved

  const fill = (settings) => {
    f.system.value = settings.system || "";
    f.temperature.value = settings.temperature ?? "";
    f.maxTokens.value = settings.max_tokens ?? "";
  };

  const showError = (message) => {
    f.error.textContent = message;
    f.error.hidden = !message;
  };

  const show = (settings = {}, id = null) => {
    known = { id, settings };
    const said = describe(settings);
    chip.hidden = !said;
    chip.title = said ? `This chat's own settings: ${said}. Click to change them.` : "";
  };

  // filled before it opens: a fill that lands later would wipe what someone has started to type
  const open = async () => {
    sessionId = current();
    if (!sessionId) return;
    showError("");
    let settings = known.id === sessionId ? known.settings : null;
    if (!settings) {
      try {
        settings = (await api(sessionPath(sessionId))).settings || {};
      } catch (err) {
        settings = {};
        showError(err.message);
      }
    }
    fill(settings);
    tools.fill(settings.tools); // listed when the server answers: the dialog does not wait for it
    f.dialog.showModal();
    f.system.focus();
  };
  button.addEventListener("click", open);
  chip.addEventListener("click", open);

  f.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!f.form.reportValidity()) return;
    const settings = {
      system: f.system.value.trim() ? f.system.value : null,
      temperature: f.temperature.value === "" ? null : Number(f.temperature.value),
      max_tokens: f.maxTokens.value === "" ? null : Number(f.maxTokens.value),
    };
    const offered = tools.value(); // undefined: the tools are not listed, the setting stays as it is
    if (offered !== undefined) settings.tools = offered;
    await store(settings);
  });
  f.reset.addEventListener("click", () => store(null));
  f.cancel.addEventListener("click", () => f.dialog.close());

  async function store(settings) {
    f.save.disabled = f.reset.disabled = true;
    try {
      const session = await api(sessionPath(sessionId), { method: "PATCH", body: { settings } });
      fill(session.settings || {});
      f.dialog.close();
      if (sessionId === current()) show(session.settings, sessionId);
      saved();
    } catch (err) {
      showError(err.message); // the server names the field it refused
    } finally {
      f.save.disabled = f.reset.disabled = false;
    }
  }

  return show;
}

// "system prompt, temperature 0.3, answer length 64, 2 tools": what a chat sets, or "" when nothing
function describe(settings) {
  const parts = [];
  if (settings.system) parts.push("system prompt");
  if (settings.temperature != null) parts.push(`temperature ${settings.temperature}`);
  if (settings.max_tokens != null) parts.push(`answer length ${settings.max_tokens}`);
  if (describeTools(settings.tools)) parts.push(describeTools(settings.tools));
  return parts.join(", ");
}
