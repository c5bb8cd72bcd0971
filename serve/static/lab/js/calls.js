// "Show the call": the requests an action sent, as curl and as Python (httpx), with the API key
// as a placeholder ($GEOTUNE_KEY), ready to paste into a terminal or a notebook.

import { state } from './state.js';
import { h } from './ui.js';

const quote = (s) => `'${String(s).replaceAll("'", "'\\''")}'`;

function py(v) {
  if (v === null || v === undefined) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(py).join(', ')}]`;
  return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${py(x)}`).join(', ')}}`;
}

export function curl(call) {
  const parts = ['curl -s'];
  if (call.method !== 'GET' && !(call.method === 'POST' && call.form)) parts.push(`-X ${call.method}`);
  if (!state.dev) parts.push('-H "Authorization: Bearer $GEOTUNE_KEY"');
  if (call.json !== undefined) {
    parts.push("-H 'Content-Type: application/json'", `-d ${quote(JSON.stringify(call.json))}`);
  }
  for (const [k, v] of call.form || []) {
    parts.push(typeof v === 'object' ? `-F ${quote(`${k}=@${v.file}`)}` : `--form-string ${quote(`${k}=${v}`)}`);
  }
  if (/\.(png|tif)(\?|$)/.test(call.url)) parts.push(`-o ${quote(call.url.split('?')[0].split('/').slice(-3).join('-'))}`);
  parts.push(quote(call.url));
  return parts.join(' \\\n  ');
}

export function python(calls) {
  const lines = ['import os', '', 'import httpx', ''];
  const api = location.origin;
  lines.push(`API = ${JSON.stringify(api)}`);
  lines.push(state.dev ? 'HEADERS = {}' : 'HEADERS = {"Authorization": f"Bearer {os.environ[\'GEOTUNE_KEY\']}"}');
  for (const call of calls) {
    const path = call.url.startsWith(api) ? call.url.slice(api.length) : call.url;
    const args = [`f"{API}${path.replaceAll('{', '{{').replaceAll('}', '}}')}"`, 'headers=HEADERS'];
    if (call.json !== undefined) args.push(`json=${py(call.json)}`);
    const fields = (call.form || []).filter(([, v]) => typeof v !== 'object');
    const files = (call.form || []).filter(([, v]) => typeof v === 'object');
    if (fields.length) args.push(`data={${fields.map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(', ')}}`);
    if (files.length) {
      const items = files.map(([k, v]) => `(${JSON.stringify(k)}, (${JSON.stringify(v.file)}, open(${JSON.stringify(v.file)}, "rb")))`);
      args.push(`files=[${items.join(', ')}]`);
    }
    args.push('timeout=600');
    lines.push('', `r = httpx.${call.method.toLowerCase()}(${args.join(', ')})`);
    const file = /\.(png|tif)(\?|$)/.test(call.url) && call.url.split('?')[0].split('/').slice(-3).join('-');
    lines.push('print(r.status_code)');
    lines.push(file ? `open(${JSON.stringify(file)}, "wb").write(r.content)` : 'print(r.json() if "json" in r.headers.get("content-type", "") else r.text)');
  }
  return lines.join('\n');
}

// One per action (data-action="..." placeholder in the page): the calls, newest last; a poll
// that repeats an earlier GET is counted, not listed again.
export class CallLog {
  constructor(action) {
    this.el = document.querySelector(`.call[data-action="${action}"]`);
    this.calls = [];
    this.extra = null;
    this.mode = 'curl';
  }

  reset(extra = null) {
    this.calls = [];
    this.extra = extra; // e.g. a download link for a file the page made (labels.geojson)
    this.render();
  }

  push(call) {
    const same = this.calls.find((c) => c.method === 'GET' && call.method === 'GET' && c.url === call.url);
    if (same) same.repeat = (same.repeat || 1) + 1;
    else this.calls.push(call);
    this.render();
  }

  text() {
    if (this.mode === 'python') return python(this.calls);
    return this.calls.map((c) => (c.repeat ? `# polled ${c.repeat} times\n` : '') + curl(c)).join('\n\n');
  }

  render() {
    if (!this.el) return;
    if (!this.calls.length) {
      this.el.replaceChildren();
      return;
    }
    const open = this.el.querySelector('details')?.open;
    const pre = h('pre', { tabindex: 0, class: 'call-text', 'data-mode': this.mode }, this.text());
    const tab = (mode, label) => h('button', {
      type: 'button', 'aria-pressed': String(this.mode === mode),
      onclick: () => { this.mode = mode; this.render(); },
    }, label);
    const copy = h('button', { type: 'button', class: 'quiet', onclick: () => navigator.clipboard?.writeText(this.text()) }, 'Copy');
    const files = this.calls.flatMap((c) => (c.form || []).filter(([, v]) => typeof v === 'object').map(([, v]) => v));
    const notes = files.filter((f) => f.note).map((f) => h('p', { class: 'hint' }, `${f.file}: ${f.note}`));
    const details = h('details', { class: 'call', open: open || undefined,
      ontoggle: (e) => e.target.open && !open && e.target.scrollIntoView({ block: 'nearest' }) },
      h('summary', {}, `Show the call (${this.calls.length})`),
      h('div', { class: 'tabs' }, tab('curl', 'curl'), tab('python', 'Python (httpx)'), copy),
      notes, this.extra || '',
      state.dev ? '' : h('p', { class: 'hint' }, 'Set GEOTUNE_KEY to your API key first.'),
      pre);
    this.el.replaceChildren(details);
  }
}
