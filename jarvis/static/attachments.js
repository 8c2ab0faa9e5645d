// Images attached to a prompt: picked with the button, pasted or dropped, shown as removable
// thumbnails in the composer, sent as data URLs, and shown on the user's message. Only when the
// model can see (models.js says). Thumbnails are drawn on a canvas from the file itself: the page's
// policy ("default-src 'self'") lets no data: or blob: address load.

import { announce, el, refreshControls, showNotice } from "./dom.js";

const MiB = 1024 * 1024;
export const MAX_IMAGE_BYTES = 8 * MiB; // the server's limits: refused here before anything is sent
export const MAX_PROMPT_BYTES = 12 * MiB;
const THUMB_PX = 56;
const TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]); // what the server takes

let vision = false;
let picked = []; // {name, bytes, bitmap, url}: the images the next prompt carries

const mib = (bytes) => `${(bytes / MiB).toFixed(1)} MiB`;
const limit = (bytes) => `${Math.floor(bytes / MiB)} MiB`;
const refused = (message) => showNotice({ code: "image_refused", message });

// Shows the attach button when the model on the picker can see images.
export function setVision(on) {
  vision = Boolean(on);
  el.attach.hidden = !vision;
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Adds `files` to the prompt; what is not an image, or too large, is refused with a message.
export async function addImages(files) {
  files = [...files];
  if (!files.length) return;
  if (!vision) {
    refused("This model does not take images: pick a model that can see them.");
    return;
  }
  let total = picked.reduce((sum, p) => sum + p.bytes, 0);
  for (const file of files) {
    const name = file.name || "pasted image";
    if (!TYPES.has(file.type)) {
      refused(`The file ${name} is not a PNG, JPEG, GIF or WebP image.`);
      continue;
    }
    if (file.size > MAX_IMAGE_BYTES) {
      refused(`The image ${name} is ${mib(file.size)}: an image may be at most ${limit(MAX_IMAGE_BYTES)}.`);
      continue;
    }
    if (total + file.size > MAX_PROMPT_BYTES) {
      refused(`With ${name} the images come to ${mib(total + file.size)}: a prompt's images may be at most ${limit(MAX_PROMPT_BYTES)} together.`);
      continue;
    }
    let bitmap;
    let url;
    try {
      [bitmap, url] = await Promise.all([createImageBitmap(file), readDataUrl(file)]);
    } catch {
      refused(`The file ${name} could not be read as an image.`);
      continue;
    }
    total += file.size;
    picked.push({ name, bytes: file.size, bitmap, url });
    announce(`Image attached: ${name}.`);
  }
  renderAttachments();
}

// The images of the next prompt, taken out of the composer.
export function takeImages() {
  const taken = picked;
  picked = [];
  renderAttachments();
  return taken;
}

// Puts images back into the composer (a prompt the server turned away), unless new ones are there.
export function restoreImages(images) {
  if (!images?.length || picked.length) return;
  picked = [...images];
  renderAttachments();
}

function thumbnail(bitmap, label, size = THUMB_PX) {
  const canvas = document.createElement("canvas");
  const scale = window.devicePixelRatio || 1;
  canvas.width = canvas.height = Math.round(size * scale);
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", label);
  const side = Math.min(bitmap.width, bitmap.height); // the middle square, as a cover crop
  canvas
    .getContext("2d")
    .drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, canvas.width, canvas.height);
  return canvas;
}

function renderAttachments() {
  el.attachments.replaceChildren(
    ...picked.map((image, i) => {
      const li = document.createElement("li");
      li.className = "attachment";
      li.title = `${image.name} (${mib(image.bytes)})`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "attachment-remove";
      remove.setAttribute("aria-label", `Remove image ${image.name}`);
      remove.textContent = "×";
      remove.addEventListener("click", () => {
        picked = picked.filter((p) => p !== image);
        renderAttachments();
        announce(`Image removed: ${image.name}.`);
        const next = el.attachments.querySelectorAll(".attachment-remove")[Math.min(i, picked.length - 1)];
        (next || el.prompt).focus();
      });
      li.append(thumbnail(image.bitmap, image.name), remove);
      return li;
    }),
  );
  el.attachments.hidden = picked.length === 0;
  refreshControls();
}

// The images of a user message, above its text: the server's (by address) or, until the server has
// stored them, the ones just sent (drawn from the files).
export function paintImages(li, msg, bubble) {
  const images = msg.images || [];
  const key = images.map((im) => (im.bitmap ? `sent:${im.name}:${im.bytes}` : im.url)).join("\n");
  let box = li.querySelector(".msg-images");
  if ((box?.dataset.painted ?? "") === key) return;
  box?.remove();
  if (!images.length) return;
  box = document.createElement("div");
  box.className = "msg-images";
  box.dataset.painted = key;
  box.append(
    ...images.map((im, i) => {
      const label = `Attached image ${i + 1} of ${images.length}`;
      if (im.bitmap) return thumbnail(im.bitmap, label, 160);
      const link = document.createElement("a");
      link.href = im.url;
      link.target = "_blank";
      link.rel = "noopener";
      const img = document.createElement("img");
      img.src = im.url;
      img.alt = label;
      img.loading = "lazy";
      link.append(img);
      return link;
    }),
  );
  bubble.before(box);
}

// The attach button, paste into the prompt, and a drop anywhere on the conversation or composer.
export function setupAttachments() {
  el.attach.addEventListener("click", () => el.attachInput.click());
  el.attachInput.addEventListener("change", async () => {
    const files = [...el.attachInput.files];
    el.attachInput.value = "";
    await addImages(files);
    el.prompt.focus();
  });
  el.prompt.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;
    if (!e.clipboardData.types.includes("text/plain")) e.preventDefault();
    addImages(files);
  });
  const zone = el.composer.closest("main");
  const carriesFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  zone.addEventListener("dragover", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault(); // a file dropped here must not replace the page
    e.dataTransfer.dropEffect = vision ? "copy" : "none";
    el.composer.classList.add("dropping");
  });
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(e.relatedTarget)) el.composer.classList.remove("dropping");
  });
  zone.addEventListener("drop", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    el.composer.classList.remove("dropping");
    addImages(e.dataTransfer.files);
  });
}
