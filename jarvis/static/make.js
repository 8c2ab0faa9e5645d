// Building the page's elements in one call each: a tag with its properties and children, an
// icon, and the icon buttons every part of the page uses.

// `tag` with `props` set as properties (as attributes: role, aria-*, data-*) and `children` appended.
export function make(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "role" || key.startsWith("aria-") || key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
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

// A button (never a form's submit) drawn as the icon `d`, with `text` beside it when given;
// `label` names it where the text alone would not.
export function iconButton(className, label, d, text = null, props = {}) {
  const children = text === null ? [icon(d)] : [icon(d), document.createTextNode(text)];
  const named = label === null ? {} : { "aria-label": label };
  return make("button", { type: "button", className, ...named, ...props }, ...children);
}

export const COPY_ICON = "M9 9h10v10H9zM5 15V5h10";
