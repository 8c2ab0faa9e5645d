// A chat's own settings: a dialog to read and change its system prompt, temperature and answer
// length. The server checks and stores them; this only fills the form and sends what it holds.

import { api, sessionPath } from "./api.js";

const $ = (id) => document.getElementById(id);

// Wires the dialog to `button`; `current()` names the chat on screen, `saved(settings)` is told after a save.
export function setupSettings({ button, current, saved }) {
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
  let sessionId = null;

  const fill = (settings) => {
    f.system.value = settings.system || "";
    f.temperature.value = settings.temperature ?? "";
    f.maxTokens.value = settings.max_tokens ?? "";
  };

  const showError = (message) => {
    f.error.textContent = message;
    f.error.hidden = !message;
  };

  button.addEventListener("click", async () => {
    sessionId = current();
    if (!sessionId) return;
    showError("");
    fill({});
    f.dialog.showModal();
    f.system.focus();
    try {
      fill((await api(sessionPath(sessionId))).settings || {});
    } catch (err) {
      showError(err.message);
    }
  });

  f.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!f.form.reportValidity()) return;
    await store({
      system: f.system.value.trim() ? f.system.value : null,
      temperature: f.temperature.value === "" ? null : Number(f.temperature.value),
      max_tokens: f.maxTokens.value === "" ? null : Number(f.maxTokens.value),
    });
  });
  f.reset.addEventListener("click", () => store(null));
  f.cancel.addEventListener("click", () => f.dialog.close());

  async function store(settings) {
    f.save.disabled = f.reset.disabled = true;
    try {
      const session = await api(sessionPath(sessionId), { method: "PATCH", body: { settings } });
      fill(session.settings || {});
      f.dialog.close();
      saved(session.settings || {});
    } catch (err) {
      showError(err.message); // the server names the field it refused
    } finally {
      f.save.disabled = f.reset.disabled = false;
    }
  }
}
