// Predict: a model name@alias on the scene on the map, a GeoTIFF from disk, or an area and
// dates (POST /v1/geospatial/{task}: imagery from the STAC catalogue); then the classes as an
// overlay (opacity, confidence threshold), confidence, polygons with details, legend, class
// areas, provenance and downloads.

/* global L */
import { api, waitJob } from './api.js';
import { CallLog } from './calls.js';
import { barChart } from './chart.js';
import { bodySchema, schemaForm } from './forms.js';
import { current, setBase } from './imagery.js';
import { map, tilesFrom } from './map.js';
import { param, setParam } from './state.js';
import { $, fillSelect, fmt, h, saveBlob, say, showError } from './ui.js';

const log = new CallLog('predict');
const resultLog = new CallLog('result');
const TASK_PATH = { segmentation: 'segment', classification: 'classify-landuse', change: 'detect-change' };
let options = () => ({});
let aoiLayer = null;
const layers = { classes: null, confidence: null, polygons: null };
let models = [];

export async function refreshModels(select) {
  const { body } = await api('GET', '/v1/models');
  models = body.models;
  const opts = [];
  for (const m of models) {
    for (const a of Object.keys(m.aliases)) opts.push([`${m.name}@${a}`, `${m.name}@${a} (version ${m.aliases[a]})`]);
  }
  fillSelect($('#pr-model'), opts, select || param('model'));
  if ($('#pr-model').value) setParam('model', $('#pr-model').value);
}

function showSource() {
  $('#pr-file').hidden = source() !== 'file';
  $('#aoi-box').hidden = source() !== 'aoi';
}

export function startAoi() {
  document.querySelector('input[name=pr-source][value=aoi]').checked = true;
  showSource();
  map.pm.enableDraw('Rectangle', { pathOptions: { color: '#f2a900', fillOpacity: 0.05, weight: 2 } });
  map.getContainer().dataset.purpose = 'aoi';
}

export function aoiCreated(layer) {
  if (aoiLayer) map.removeLayer(aoiLayer);
  aoiLayer = layer;
  const b = layer.getBounds();
  say($('#aoi-status'), `${b.getWest().toFixed(4)}, ${b.getSouth().toFixed(4)} – ${b.getEast().toFixed(4)}, ${b.getNorth().toFixed(4)}`);
}

function source() {
  return document.querySelector('input[name=pr-source]:checked').value;
}

async function modelInfo(ref) {
  const [name] = ref.split('@');
  return (await api('GET', `/v1/models/${encodeURIComponent(name)}`)).body;
}

async function request(ref, model) {
  const [name, alias] = ref.split('@');
  const how = source();
  if (how === 'aoi') {
    if (!aoiLayer) throw Object.assign(new Error('draw the area on the map first (Draw area)'), { where: '#pr-source-error' });
    if (!$('#aoi-start').value || !$('#aoi-end').value) throw Object.assign(new Error('give both dates'), { where: '#pr-source-error' });
    const body = { model: ref, aoi: aoiLayer.toGeoJSON().geometry, start_date: $('#aoi-start').value, end_date: $('#aoi-end').value, output_format: 'geojson' };
    if ($('#aoi-sensor').value) body.sensor = $('#aoi-sensor').value;
    return api('POST', `/v1/geospatial/${TASK_PATH[model.task] || 'segment'}`, { json: body, log });
  }
  let image;
  if (how === 'file') {
    const f = $('#pr-file').files[0];
    if (!f) throw Object.assign(new Error('choose a GeoTIFF'), { where: '#pr-source-error' });
    image = { blob: f, name: f.name };
  } else {
    const s = current.scene;
    if (!s) throw Object.assign(new Error('show a scene on the map first (Imagery), or choose another source'), { where: '#pr-source-error' });
    image = { blob: (await api('GET', `/v1/scenes/${s.id}/scene.tif`)).body, name: s.name,
      note: `your scene (the Lab sent the file it shows, from GET /v1/scenes/${s.id}/scene.tif)` };
  }
  const form = [['image', image]];
  if (how === 'scene' && current.scene.sensor) form.push(['sensor', current.scene.sensor]);
  for (const [k, v] of Object.entries(options())) if (v !== null) form.push([k, String(v)]);
  return api('POST', `/v1/models/${encodeURIComponent(name)}/predict`, { form, query: { alias }, log });
}

async function run() {
  ['#pr-error', '#pr-source-error', '#pr-model-error'].forEach((s) => showError($(s), null));
  say($('#pr-status'), '');
  const ref = $('#pr-model').value;
  if (!ref) return showError($('#pr-model-error'), new Error('no model yet: fine-tune one first'));
  log.reset();
  $('#pr-run').disabled = true;
  try {
    const model = await modelInfo(ref);
    say($('#pr-status'), 'predicting…');
    const sent = await request(ref, model);
    let body = sent.body;
    if (sent.status === 202) {
      const job = await waitJob(body.id, { log, every: 1500, onState: (j) => {
        const p = j.progress || {};
        const where = p.tiles_done !== undefined ? `, ${p.tiles_done} of ${p.tiles_total} tiles`
          : p.blocks_done !== undefined ? `, imagery: ${p.blocks_done} of ${p.blocks_total} blocks` : '';
        say($('#pr-status'), `job ${j.id}: ${j.state}${where}`);
      } });
      if (job.state !== 'succeeded') throw new Error(job.error || `the prediction job ${job.state}`);
      body = (await api('GET', `/v1/jobs/${job.id}/result`, { log })).body;
    }
    say($('#pr-status'), `done in ${body.seconds} s`);
    await show(body);
  } catch (err) {
    const field = (err.fields || []).map((f) => f.field).join(' ');
    const where = err.where || (/aoi|date|sensor|image/.test(field) || /aoi|AOI|date|image|scene|band|catalog|imagery/.test(err.detail || '') ? '#pr-source-error'
      : /model|alias|version|task/.test(`${field} ${err.error}`) ? '#pr-model-error' : '#pr-error');
    showError($(where), err);
  } finally {
    $('#pr-run').disabled = false;
  }
}

function clearLayers() {
  for (const k of Object.keys(layers)) {
    if (layers[k]) map.removeLayer(layers[k]);
    layers[k] = null;
  }
}

async function overlay(id, file, pane) {
  const { body: tj } = await api('GET', `/v1/predictions/${id}/tiles/${file}/tilejson.json`, { log: resultLog });
  return { tj, layer: tilesFrom(tj, { pane, onFirstTile: (url) => resultLog.push({ method: 'GET', url }) }) };
}

function details(p) {
  return h('dl', {}, h('dt', {}, 'class'), h('dd', {}, p.class_name), h('dt', {}, 'area'), h('dd', {}, `${fmt.ha(p.area_m2)} ha`),
    h('dt', {}, 'mean confidence'), h('dd', {}, fmt.num(p.mean_confidence, 2)));
}

function showTables(answer, colors) {
  const rows = answer.class_histogram;
  barChart($('#histogram-chart'), rows.map((r) => ({ label: r.name, value: r.area_m2, color: colors[r.id] || '#888', text: `${fmt.ha(r.area_m2)} ha` })));
  $('#histogram tbody').replaceChildren(...rows.map((r) => h('tr', { 'data-class': r.name },
    h('td', {}, r.name), h('td', { class: 'num', 'data-pixels': r.pixels }, fmt.int(r.pixels)),
    h('td', { class: 'num' }, fmt.ha(r.area_m2)), h('td', { class: 'num' }, fmt.pct(r.fraction)))));
  const pv = answer.provenance;
  const img = pv.imagery;
  const items = [['model', `${answer.model.name} version ${answer.model.version}${answer.model.alias ? ` (${answer.model.alias})` : ''}`],
    ['run', pv.run_id], ['dataset', pv.dataset_id], ['backbone', pv.backbone], ['inputs', (pv.inputs || []).join(', ')],
    ['dates', (pv.dates || []).map((d) => d || 'unknown').join(', ')], ['pixels', fmt.int(answer.n_pixels)]];
  if (img) items.push(['imagery', `${img.items.length} item(s) from ${img.url}: ${img.items.map((i) => `${i.id} (${i.datetime?.slice(0, 10)}, ${i.cloud_cover ?? '?'} % cloud)`).join('; ')}`]);
  $('#provenance').replaceChildren(...items.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '–')]));
  $('#downloads').replaceChildren(...Object.values(answer.links).map((url) => {
    const name = url.split('/').pop();
    return h('button', { type: 'button', class: 'quiet', onclick: async () => {
      const { body } = await api('GET', url, { log: resultLog });
      saveBlob(body instanceof Blob ? body : new Blob([JSON.stringify(body)]), `${answer.prediction_id}-${name}`);
    } }, name);
  }));
}

export async function show(answer) {
  const id = answer.prediction_id;
  setParam('prediction', id);
  $('#pr-id').textContent = id;
  clearLayers();
  resultLog.reset();
  if (answer.provenance.imagery) await setBase(`prediction:${id}`);
  const cls = await overlay(id, 'classes', 'classes');
  layers.classes = cls.layer.setOpacity(Number($('#opacity').value)).addTo(map);
  const colors = Object.fromEntries(cls.tj.geotune.classes.map((c) => [c.id, c.color]));
  $('#legend').replaceChildren(...cls.tj.geotune.classes.map((c) => h('li', { 'data-class': c.name },
    h('span', { class: 'swatch', style: { background: c.color } }), c.name)));
  if (answer.links.confidence) layers.confidence = (await overlay(id, 'confidence', 'confidence')).layer;
  $('#show-confidence').disabled = !layers.confidence;
  if ($('#show-confidence').checked && layers.confidence) layers.confidence.addTo(map);
  const threshold = Number($('#threshold').value);
  if (threshold > 0) layers.classes.setQuery({ threshold });
  if (answer.polygons) {
    layers.polygons = L.geoJSON(answer.polygons, {
      style: () => ({ color: '#ffffff', weight: 1, opacity: 0.9, fillOpacity: 0 }),
      onEachFeature: (f, layer) => {
        layer.bindTooltip(() => details(f.properties), { sticky: true });
        layer.bindPopup(() => details(f.properties));
      },
    });
    if ($('#show-polygons').checked) layers.polygons.addTo(map);
  }
  showTables(answer, colors);
  $('#result').hidden = false; // whole: tests and people may read it from now on
  $('#result').scrollIntoView({ block: 'start' });
  if (!current.tj) map.fitBounds(L.latLngBounds(cls.tj.bounds.slice(0, 2).reverse(), cls.tj.bounds.slice(2).reverse()));
}

export async function initPredict() {
  $('#pr-run').addEventListener('click', run);
  for (const r of document.querySelectorAll('input[name=pr-source]')) r.addEventListener('change', showSource);
  $('#aoi-draw').addEventListener('click', startAoi);
  $('#pr-model').addEventListener('change', (e) => setParam('model', e.target.value));
  $('#opacity').addEventListener('input', (e) => layers.classes?.setOpacity(Number(e.target.value)));
  $('#threshold').addEventListener('change', (e) => {
    $('#threshold-out').value = e.target.value;
    layers.classes?.setQuery({ threshold: Number(e.target.value) || undefined });
  });
  $('#threshold').addEventListener('input', (e) => { $('#threshold-out').value = e.target.value; });
  $('#show-confidence').addEventListener('change', (e) => layers.confidence && (e.target.checked ? layers.confidence.addTo(map) : map.removeLayer(layers.confidence)));
  $('#show-polygons').addEventListener('change', (e) => layers.polygons && (e.target.checked ? layers.polygons.addTo(map) : map.removeLayer(layers.polygons)));
  const schema = await bodySchema('post', '/v1/models/{name}/predict', 'multipart/form-data');
  options = schemaForm($('#pr-options'), schema, { prefix: 'pr', skip: ['image', 'bands', 'sensor', 'dates'] });
  await refreshModels();
  if (param('prediction')) {
    try {
      await show((await api('GET', `/v1/predictions/${param('prediction')}`)).body);
    } catch (err) {
      showError($('#pr-error'), err);
    }
  }
}
