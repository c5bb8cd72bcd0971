// Every request of the Lab goes through api(): it adds the API key, turns {error, detail}
// answers into an ApiError, and records the request so "Show the call" can print it.

import { state } from './state.js';

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body === 'object' ? body.detail : String(body || '');
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.error = body && body.error;
    this.detail = detail || `HTTP ${status}`;
    this.fields = (body && body.fields) || [];
  }
}

export function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

// form: [[name, value]], value a string or {blob, name} (a file, sent under that name)
export async function api(method, path, { json, form, query, log } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const init = { method, headers: authHeaders() };
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  if (form) {
    const body = new FormData();
    for (const [k, v] of form) {
      if (v && v.blob) body.append(k, v.blob, v.name);
      else body.append(k, v);
    }
    init.body = body;
  }
  const call = {
    method,
    url: url.toString(),
    json,
    form: form && form.map(([k, v]) => [k, v && v.blob ? { file: v.name, note: v.note } : String(v)]),
  };
  if (log) log.push(call);
  const r = await fetch(url, init);
  call.status = r.status;
  const type = r.headers.get('content-type') || '';
  const body = type.includes('json') ? await r.json() : type.startsWith('text') ? await r.text() : await r.blob();
  if (!r.ok) throw new ApiError(r.status, body);
  return { status: r.status, body, headers: r.headers };
}

// The answer of a job: poll GET /v1/jobs/{id} until it has finished (onState sees each state).
export async function waitJob(jobId, { log, onState, every = 1000, stop } = {}) {
  for (;;) {
    const { body: job } = await api('GET', `/v1/jobs/${jobId}`, { log });
    if (onState) onState(job);
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) return job;
    if (stop && stop()) return job;
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}
