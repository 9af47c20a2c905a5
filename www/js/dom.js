// Small DOM helpers.  Every value that came from the server goes into the
// page through textContent or setAttribute (never innerHTML), so a task
// named "<script>" stays text.

/** An element: el('a', {href: '#x', class: 'y'}, 'text', child, ...).
 *  Attribute values and text children are set as data, never parsed. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

/** Append children: nodes as they are, anything else as a text node. */
export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Remove every child of a node. */
export function clear(node) {
  node.replaceChildren();
  return node;
}

/** "45 B", "1.8 KB", "3.2 MB" (units of 1024), '' when not a number. */
export function humanSize(value) {
  const bytes = Number(value);
  if (value === undefined || value === '' || !Number.isFinite(bytes)) return '';
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let size = bytes / 1024;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
  return `${size.toFixed(1)} ${units[unit]}`;
}

/** "4 s", "3 min 5 s", "2 h 10 min" for a count of seconds; '' when unknown. */
export function humanSeconds(value) {
  const seconds = Number(value);
  if (value === undefined || value === '' || !Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A record's Unix-seconds field as local "YYYY-MM-DD HH:MM:SS"; '' when absent. */
export function localTime(value) {
  const seconds = Number(value);
  if (!value || !Number.isFinite(seconds)) return '';
  const date = new Date(seconds * 1000);
  const two = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} `
    + `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

/** Show or hide an element (the hidden attribute, which the CSS honours). */
export function show(node, visible) {
  node.hidden = !visible;
}

/** Make ``old`` look like ``fresh`` (built by el(), no listeners) while
 *  keeping ``old``'s nodes where the two have the same shape: a focused
 *  link inside a row that is redrawn keeps its focus. */
export function patch(old, fresh) {
  if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) {
    old.replaceWith(fresh);
    return;
  }
  if (old.nodeType === Node.TEXT_NODE) {
    if (old.data !== fresh.data) old.data = fresh.data;
    return;
  }
  for (const {name} of [...old.attributes]) {
    if (!fresh.hasAttribute(name)) old.removeAttribute(name);
  }
  for (const {name, value} of fresh.attributes) {
    if (old.getAttribute(name) !== value) old.setAttribute(name, value);
  }
  const olds = [...old.childNodes];
  const freshes = [...fresh.childNodes];
  freshes.forEach((child, index) => {
    if (index < olds.length) patch(olds[index], child);
    else old.append(child);
  });
  for (const extra of olds.slice(freshes.length)) extra.remove();
}
