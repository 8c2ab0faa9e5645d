// Versions of a message: Regenerate an answer, Edit and resend a prompt, and ‹ i/n › to switch.
// The server keeps every version; the page asks it to start one or to show one, then draws
// the conversation it answers with.

import { iconButton, make } from "./make.js";

const ICONS = {
  regenerate: "M20 11a8 8 0 1 0-2.3 5.7M20 4v7h-7",
  edit: "M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4",
  prev: "M15 6l-6 6 6 6",
  next: "M9 6l6 6-6 6",
};

// What the foot's tools depend on: its painting is redone when this changes.
export const versionsKey = (msg) => `${msg.id ?? ""}|${msg.versions ? `${msg.versions.index}/${msg.versions.count}` : ""}`;

// The foot's tools for a stored message: Edit or Regenerate, and ‹ i/n › when it has versions.
export function versionTools(msg) {
  if (msg.id == null) return [];
  const tools = [
    msg.role === "user"
      ? button("edit-prompt", ICONS.edit, "Edit", "Edit and resend this message")
      : button("regenerate", ICONS.regenerate, "Regenerate", "Regenerate this answer"),
  ];
  if (msg.versions) tools.push(switcher(msg.versions));
  return tools;
}

const button = (className, path, text, label) => iconButton(`foot-tool ${className}`, label, path, text);

function switcher({ index, count, ids }) {
  const step = (className, path, label, to) => {
    const b = iconButton(`version-step ${className}`, label, path, null, { disabled: to < 0 || to >= count });
    if (!b.disabled) b.dataset.target = String(ids[to]);
    return b;
  };
  const shown = make("span", { className: "version-index", textContent: `${index + 1}/${count}` });
  return make(
    "span",
    { className: "versions", role: "group", "aria-label": `Version ${index + 1} of ${count}` },
    step("version-prev", ICONS.prev, "Previous version", index - 1),
    shown,
    step("version-next", ICONS.next, "Next version", index + 1),
  );
}

// Wires the tools of the messages in `list`; `page` starts and shows versions:
// messageOf(li), show(messageId), regenerate(answer), resend(prompt, text).
export function setupVersions(list, page) {
  list.addEventListener("click", async (e) => {
    const button = e.target.closest("button");
    const li = button?.closest(".msg");
    if (!li) return;
    if (button.matches(".version-step")) {
      const target = button.dataset.target;
      await page.show(Number(target));
      // the conversation was drawn anew: keep the focus on the arrows, for the next step
      const steps = [...list.querySelectorAll(`.msg[data-id="${target}"] .version-step`)];
      const same = steps.find((s) => s.matches(button.matches(".version-prev") ? ".version-prev" : ".version-next"));
      (same && !same.disabled ? same : steps.find((s) => !s.disabled))?.focus();
    } else if (button.matches(".regenerate")) page.regenerate(page.messageOf(li));
    else if (button.matches(".edit-prompt")) editPrompt(li, page.messageOf(li), page);
  });
}

// The prompt becomes a text field with Send and Cancel; Send makes a new version of it.
function editPrompt(li, msg, page) {
  if (!msg) return;
  const open = li.querySelector(".edit-form");
  if (open) {
    open.querySelector("textarea").focus();
    return;
  }
  const form = document.createElement("form");
  form.className = "edit-form";
  const text = document.createElement("textarea");
  text.className = "edit-text";
  text.rows = 1; // grown to its text by size()
  text.value = msg.content;
  text.setAttribute("aria-label", "Edit your message");
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "edit-cancel";
  cancel.textContent = "Cancel";
  const send = document.createElement("button");
  send.type = "submit";
  send.className = "edit-send";
  send.textContent = "Send";
  const actions = document.createElement("div");
  actions.className = "edit-actions";
  actions.append(cancel, send);
  form.append(text, actions);

  const close = () => {
    form.remove();
    li.classList.remove("editing");
    li.querySelector(".edit-prompt")?.focus();
  };
  const size = () => {
    text.style.height = "auto";
    text.style.height = `${Math.min(text.scrollHeight + 2, 320)}px`;
    send.disabled = !text.value.trim();
  };
  cancel.addEventListener("click", close);
  text.addEventListener("input", size);
  text.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      close();
    } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!text.value.trim()) return;
    form.remove();
    li.classList.remove("editing");
    page.resend(msg, text.value);
  });
  li.classList.add("editing");
  li.querySelector(".bubble").after(form);
  size();
  text.focus();
  text.setSelectionRange(text.value.length, text.value.length);
}
