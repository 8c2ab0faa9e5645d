// The model side as the page shows it: the model picker, and the line in the sidebar that says
// whether the model server answers.

import { api } from "./api.js";
import { setVision } from "./attachments.js";
import { el } from "./dom.js";
import { explainError, plural } from "./errors.js";

const MODEL_KEY = "jarvis.model";
const HEALTH_MS = 30000;

const capabilities = new Map(); // model name -> what it can do, as the server says (null: unknown)

export async function loadModels() {
  let data;
  try {
    data = await api("api/models");
  } catch (err) {
    const option = new Option("Default model", "");
    el.model.replaceChildren(option);
    el.model.title = explainError(err).detail;
    return;
  }
  const names = (data.models || []).map((m) => m.name).filter(Boolean);
  const wanted = data.default || "";
  const fallback = names.find((n) => n === wanted) || names.find((n) => n === `${wanted}:latest`);
  if (wanted && !fallback) names.unshift(wanted);
  el.model.replaceChildren(...names.map((name) => modelOption(name, data)));
  const saved = localStorage.getItem(MODEL_KEY);
  el.model.value = names.includes(saved) ? saved : fallback || wanted || names[0] || "";
  el.model.title = "";
  showCapabilities();
}

// What the picked model can do ("completion", "tools", "vision", "thinking"), asked once per model;
// null when the server cannot tell.
async function capabilitiesOf(name) {
  if (!capabilities.has(name)) {
    let found = null;
    try {
      const path = name.split("/").map(encodeURIComponent).join("/"); // "library/llama3" stays a path
      found = (await api(`api/models/${path}`)).capabilities || null;
    } catch {
      return null; // asked again next time: the server may answer then
    }
    capabilities.set(name, found);
  }
  return capabilities.get(name);
}

// The attach button only for a model that can see images.
async function showCapabilities() {
  const name = el.model.value;
  setVision(false);
  if (!name) return;
  const found = await capabilitiesOf(name);
  if (el.model.value === name) setVision(Array.isArray(found) && found.includes("vision"));
}

// with several model hosts, each option says which hosts have the model and whether they answer
function modelOption(name, data) {
  const option = new Option(name, name);
  const where = (data.models || []).find((m) => m.name === name)?.hosts;
  if (!data.hosts || !where) return option;
  const hosts = data.hosts.filter((h) => where.includes(h.url));
  const up = hosts.filter((h) => h.state === "up").length;
  option.text = `${name} (${up}/${hosts.length} ${hosts.length === 1 ? "host" : "hosts"} up)`;
  option.title = hosts.map((h) => `${h.url}: ${h.state}, ${plural(h.live, "answer")}`).join("\n");
  return option;
}

export async function refreshHealth() {
  try {
    const health = await api("healthz");
    const backend = { local: "Local model", hosts: "Model hosts" }[health.backend] || "Ollama";
    const ok = Boolean(health.upstream_ok);
    el.backend.dataset.state = ok ? "ok" : "down";
    el.backendText.textContent = `${backend} · ${health.model || "no model"}${ok ? "" : " (unreachable)"}`;
    el.backend.title =
      `${backend} ${ok ? "is answering" : "is not reachable"}` +
      (health.active_streams ? `; ${plural(health.active_streams, "answer")} streaming` : "") +
      (health.hosts || []).map((h) => `\n${h.url}: ${h.state}, ${plural(h.live, "answer")}`).join("");
  } catch {
    el.backend.dataset.state = "down";
    el.backendText.textContent = "Server not reachable";
    el.backend.title = "";
  }
}


// Keeps the picked model for the next visit, and the status line fresh.
export function setupModels() {
  el.model.addEventListener("change", () => {
    localStorage.setItem(MODEL_KEY, el.model.value);
    showCapabilities();
  });
  setInterval(refreshHealth, HEALTH_MS);
}
