// Small DOM helpers shared by the Lab's modules.

export const $ = (selector) => document.querySelector(selector);
export const $$ = (selector) => [...document.querySelectorAll(selector)];

// h('td', {class: 'num'}, '12') -> <td class="num">12</td>
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// An error shown next to what caused it: the API's {detail}, or the exception's message.
export function showError(el, err) {
  el.textContent = err ? (err.detail || err.message || String(err)) : '';
  if (err) el.scrollIntoView({ block: 'nearest' });
}

export function say(el, text) {
  el.textContent = text || '';
}

export function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, text]) => h('option', { value: v }, text)));
  if (value !== undefined && options.some(([v]) => v === value)) select.value = value;
}

export const fmt = {
  int: (n) => Number(n).toLocaleString('en-US'),
  num: (n, d = 3) => (n === null || n === undefined ? '–' : Number(n).toFixed(d)),
  pct: (f) => `${(100 * f).toFixed(1)} %`,
  ha: (m2) => (m2 / 10000).toLocaleString('en-US', { maximumFractionDigits: 2 }),
};

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Save a Blob under a file name (downloads that need the Authorization header).
export function saveBlob(blob, name) {
  const a = h('a', { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}
