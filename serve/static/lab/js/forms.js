// Option fields made from the API's own request schemas (GET /openapi.json), so the Lab's
// forms have the API's names, defaults, limits and descriptions: one definition for both.

import { h } from './ui.js';

let spec = null;
export async function openapi() {
  spec = spec || (await (await fetch('/openapi.json')).json());
  return spec;
}

function resolve(schema) {
  const ref = schema.$ref || schema.allOf?.[0]?.$ref;
  return ref ? spec.components.schemas[ref.split('/').pop()] : schema;
}

// The schema of an operation's body: ("post", "/v1/finetunes", "application/json").
export async function bodySchema(method, path, type = 'application/json') {
  await openapi();
  return resolve(spec.paths[path][method].requestBody.content[type].schema);
}

function kind(prop) {
  const alts = prop.anyOf ? prop.anyOf.filter((p) => p.type !== 'null') : [prop];
  const p = alts[0] || {};
  return { ...prop, ...p, type: p.enum ? 'enum' : p.type, enum: p.enum, minimum: p.minimum, maximum: p.maximum };
}

// Fields for schema's properties except `skip`; returns () => {name: value} of the fields the
// person changed (the API's defaults apply to the rest).
export function schemaForm(container, schema, { skip = [], prefix }) {
  const fields = [];
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    if (skip.includes(name)) continue;
    const p = kind(raw);
    if (p.format === 'binary' || p.type === 'array') continue;
    const id = `${prefix}-${name}`;
    let input;
    const def = raw.default ?? '';
    if (p.type === 'enum') {
      input = h('select', { id }, ...(raw.default === undefined || raw.default === null ? [h('option', { value: '' }, '(default)')] : []),
        ...p.enum.map((v) => h('option', { value: v, selected: v === raw.default || undefined }, v)));
    } else if (p.type === 'boolean') {
      input = h('input', { id, type: 'checkbox', checked: raw.default === true || undefined });
    } else {
      const num = p.type === 'integer' || p.type === 'number';
      input = h('input', {
        id, type: num ? 'number' : 'text', value: def === null ? '' : def,
        step: p.type === 'integer' ? 1 : num ? 'any' : undefined, min: p.minimum, max: p.maximum,
      });
    }
    input.dataset.default = input.type === 'checkbox' ? String(input.checked) : input.value;
    const help = raw.description ? h('span', { class: 'hint' }, ` ${raw.description}`) : '';
    container.append(h('label', { for: id }, name, help), input);
    fields.push([name, p.type, input]);
  }
  return () => {
    const out = {};
    for (const [name, type, input] of fields) {
      const value = input.type === 'checkbox' ? String(input.checked) : input.value;
      if (value === input.dataset.default) continue;
      if (value === '') out[name] = null;
      else if (type === 'integer' || type === 'number') out[name] = Number(value);
      else if (type === 'boolean') out[name] = value === 'true';
      else out[name] = value;
    }
    return out;
  };
}
