// Similar: embed the scene on the map (POST /v1/embeddings, a job), click a spot or draw an area
// to see the most similar chips highlighted (POST /v1/embeddings/{id}/search), turn chosen
// chips into labelled polygons of a class ("Label these"), see the embedding space in 2-D (PCA,
// coloured by the class of the drawn label under each chip's centre), and ask where to label
// next (POST /v1/datasets/{id}/suggestions).

/* global L */
import { api, waitJob } from './api.js';
import { CallLog } from './calls.js';
import { current } from './imagery.js';
import * as label from './label.js';
import { map } from './map.js';
import { param, setParam } from './state.js';
import { $, fillSelect, fmt, h, say, showError } from './ui.js';

const embedLog = new CallLog('embed');
const searchLog = new CallLog('search');
const suggestLog = new CallLog('suggest');
map.createPane('similar').style.zIndex = 410;
const hitsLayer = L.geoJSON(null, { pane: 'similar' }).addTo(map);
const queryLayer = L.geoJSON(null, { pane: 'similar', style: { color: '#f2a900', weight: 3, fill: false } }).addTo(map);
let hits = []; // GeoJSON features of the last search, with .chosen
let projection = null; // {chips: [{chip_id, x, y, lon, lat}], explained_variance}
let armed = false; // the next map click searches

function setId() {
  return $('#emb-set').value;
}

function hitStyle(f) {
  const s = f.properties.score;
  return { color: f.chosen ? '#d62728' : '#ff7f0e', weight: f.chosen ? 3 : 2, fillOpacity: 0.15 + 0.45 * Math.max(0, s) };
}

// the map's chips and the list, made anew for each answer
function renderHits() {
  hitsLayer.clearLayers();
  for (const f of hits) hitsLayer.addData(f);
  hitsLayer.eachLayer((layer) => {
    const f = hits.find((x) => x.id === layer.feature.id);
    f.layer = layer;
    layer.bindTooltip(`chip ${f.id}: score ${fmt.num(f.properties.score)}`);
    layer.on('click', (e) => { L.DomEvent.stop(e); f.chosen = !f.chosen; restyle(); });
  });
  $('#sim-hits').replaceChildren(...hits.map((f) => h('li', {},
    h('label', {}, h('input', { type: 'checkbox', 'data-chip': f.id,
      onchange: (e) => { f.chosen = e.target.checked; restyle(); } }),
    `#${f.properties.rank} chip ${f.id}`, h('span', { class: 'hint' }, `score ${fmt.num(f.properties.score, 4)}`)))));
  restyle();
}

// what is chosen, shown on the map, in the list and in the PCA view (the list keeps focus)
function restyle() {
  for (const f of hits) {
    f.layer?.setStyle(hitStyle(f));
    const box = $(`#sim-hits input[data-chip="${f.id}"]`);
    if (box) box.checked = Boolean(f.chosen);
  }
  $('#sim-label').disabled = !hits.some((f) => f.chosen);
  drawProjection();
}

async function refreshSets(select) {
  const { body } = await api('GET', '/v1/embeddings');
  const mine = body.embeddings.filter((s) => s.state === 'ready');
  fillSelect($('#emb-set'), [['', '(none yet: embed a scene)'], ...mine.map((s) => [s.id,
    `${s.id}: ${s.encoder.backbone || s.encoder.model} on ${(s.inputs || ['an area'])[0]} (${fmt.int(s.chips)} chips)`])], select || param('embeddings'));
  await chooseSet();
}

async function chooseSet() {
  hits = [];
  queryLayer.clearLayers();
  projection = null;
  setParam('embeddings', setId());
  renderHits();
  if (!setId()) return;
  const { body } = await api('GET', `/v1/embeddings/${setId()}/projection`, { log: searchLog });
  projection = body;
  say($('#sim-pca-note'), `${fmt.int(body.chips.length)} of ${fmt.int(body.chips_total)} chips; `
    + `PC1 ${fmt.pct(body.explained_variance[0])}, PC2 ${fmt.pct(body.explained_variance[1] || 0)} of the variance`);
  drawProjection();
}

async function embedScene() {
  showError($('#emb-error'), null);
  if (!current.scene) return showError($('#emb-error'), new Error('show a scene first (Imagery): the Lab embeds the scene on the map'));
  const [kind, name] = $('#emb-encoder').value.split(':');
  const json = { scene: current.scene.id, chip_size: Number($('#emb-chip').value) || null };
  if (kind === 'model') json.model = name;
  else Object.assign(json, { backbone: name, weights: $('#emb-weights').value, size: $('#emb-size').value || null });
  if (current.scene.sensor) json.sensor = current.scene.sensor;
  embedLog.reset();
  $('#emb-create').disabled = true;
  try {
    const { body } = await api('POST', '/v1/embeddings', { json, log: embedLog });
    const job = await waitJob(body.id, { log: embedLog, onState: (j) => say($('#emb-status'), `embedding: ${j.state}…`) });
    if (job.state !== 'succeeded') throw new Error(job.error || `the embedding job ${job.state}`);
    say($('#emb-status'), `${fmt.int(job.result.chips)} chips embedded (${job.result.embeddings_id})`);
    await refreshSets(job.result.embeddings_id);
  } catch (err) {
    showError($('#emb-error'), err);
  } finally {
    $('#emb-create').disabled = false;
  }
}

async function search(query, shape) {
  showError($('#sim-error'), null);
  if (!setId()) return showError($('#sim-error'), new Error('embed the scene first, or choose an embedding set'));
  searchLog.reset();
  try {
    const { body } = await api('POST', `/v1/embeddings/${setId()}/search`, { json: { ...query, k: Number($('#sim-k').value) || 20 }, log: searchLog });
    hits = body.features;
    queryLayer.clearLayers();
    if (shape) queryLayer.addData(shape);
    say($('#sim-status'), `${hits.length} similar chips (${body.query.method} search over ${fmt.int(body.query.chips_searched)})`);
    renderHits();
  } catch (err) {
    showError($('#sim-error'), err);
  }
}

function armClick() {
  armed = true;
  map.getContainer().style.cursor = 'crosshair';
  say($('#sim-status'), 'click a spot on the map');
}

export function mapClicked(e) {
  if (!armed || param('tab') !== 'similar') return;
  armed = false;
  map.getContainer().style.cursor = '';
  search({ near: [e.latlng.lng, e.latlng.lat] }, { type: 'Point', coordinates: [e.latlng.lng, e.latlng.lat] });
}

function startArea() {
  map.pm.enableDraw('Polygon', { snappable: false, pathOptions: { color: '#f2a900', fillOpacity: 0.05 } });
  map.getContainer().dataset.purpose = 'similar';
}

export function areaCreated(layer) {
  const geom = layer.toGeoJSON().geometry;
  map.removeLayer(layer);
  search({ polygon: geom }, geom);
}

function labelThese() {
  showError($('#sim-error'), null);
  const name = $('#sim-class').value.trim();
  if (!name) return showError($('#sim-error'), new Error('type the class these chips are'));
  const chosen = hits.filter((f) => f.chosen);
  if (!label.hasClass(name)) label.addClass(name);
  for (const f of chosen) L.geoJSON(f).eachLayer((layer) => label.addPolygon(layer, name));
  hits = hits.filter((f) => !f.chosen);
  say($('#sim-status'), `${chosen.length} chip(s) labelled ${name}: see them in Label, where the dataset is made`);
  renderHits();
}

// the class of the drawn label polygon holding a point (ray casting over its outer ring)
function classAt(lon, lat) {
  for (const layer of label.drawn.getLayers()) {
    const g = layer.toGeoJSON().geometry;
    const polys = g.type === 'Polygon' ? [g.coordinates] : g.type === 'MultiPolygon' ? g.coordinates : [];
    for (const [ring] of polys) {
      let inside = false;
      for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
        const [xi, yi] = ring[i];
        const [xj, yj] = ring[j];
        if ((yi > lat) !== (yj > lat) && lon < ((xj - xi) * (lat - yi)) / (yj - yi) + xi) inside = !inside;
      }
      if (inside) return layer.feature.properties.class;
    }
  }
  return null;
}

function drawProjection() {
  const canvas = $('#sim-pca');
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!projection) return;
  const xs = projection.chips.map((c) => c.x);
  const ys = projection.chips.map((c) => c.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const px = (x) => 8 + ((x - x0) / (x1 - x0 || 1)) * (canvas.width - 16);
  const py = (y) => canvas.height - 8 - ((y - y0) / (y1 - y0 || 1)) * (canvas.height - 16);
  const colours = label.classColours();
  const hit = new Set(hits.map((f) => f.id));
  const counts = {};
  for (const c of projection.chips) {
    const cls = classAt(c.lon, c.lat);
    counts[cls || 'unlabelled'] = (counts[cls || 'unlabelled'] || 0) + 1;
    g.fillStyle = cls ? colours[cls] || '#000' : '#9aa3af';
    g.beginPath();
    g.arc(px(c.x), py(c.y), hit.has(c.chip_id) ? 4 : 2.5, 0, 2 * Math.PI);
    g.fill();
    if (hit.has(c.chip_id)) {
      g.strokeStyle = '#d62728';
      g.stroke();
    }
  }
  canvas.dataset.classes = JSON.stringify(counts); // what the view shows, for people and tests
  $('#sim-pca-legend').replaceChildren(...Object.entries(counts).map(([k, n]) => h('li', {},
    h('span', { class: 'swatch', style: { background: k === 'unlabelled' ? '#9aa3af' : colours[k] } }), `${k}: ${n}`)));
}

async function suggest() {
  showError($('#sug-error'), null);
  const ds = $('#sug-dataset').value;
  if (!ds) return showError($('#sug-error'), new Error('choose a dataset with a fine-tune'));
  suggestLog.reset();
  try {
    const { body } = await api('POST', `/v1/datasets/${ds}/suggestions`, { json: { n: Number($('#sug-n').value) || 20 }, log: suggestLog });
    queryLayer.clearLayers();
    hits = [];
    renderHits();
    hitsLayer.addData(body);
    hitsLayer.setStyle({ color: '#9467bd', weight: 2, dashArray: '5 4', fillOpacity: 0.1 });
    hitsLayer.eachLayer((layer) => layer.bindTooltip(`#${layer.feature.properties.rank}: entropy ${fmt.num(layer.feature.properties.entropy)}, predicted ${layer.feature.properties.predicted}`));
    $('#sug-list').replaceChildren(...body.features.map((f) => h('li', {}, `chip ${f.id}: score ${fmt.num(f.properties.score)}, `
      + `entropy ${fmt.num(f.properties.entropy)}, ${fmt.pct(f.properties.labelled_fraction)} labelled, predicted ${f.properties.predicted}`)));
    say($('#sug-status'), `${body.features.length} chips to label next, by ${body.model.name} v${body.model.version}`);
    if (body.features.length) map.fitBounds(hitsLayer.getBounds(), { padding: [20, 20] });
  } catch (err) {
    showError($('#sug-error'), err);
  }
}

export async function refreshSimilar() {
  const [{ body: b }, { body: m }, { body: d }] = await Promise.all([
    api('GET', '/v1/backbones'), api('GET', '/v1/models'), api('GET', '/v1/datasets')]);
  fillSelect($('#emb-encoder'), [...b.backbones.map((x) => [`backbone:${x.name}`, `${x.name} (${x.pretrained_available ? 'weights here' : 'random only'})`]),
    ...m.models.map((x) => [`model:${x.name}`, `model: ${x.name} (its fine-tuned encoder)`])], $('#emb-encoder').value || 'backbone:clay_v1_5');
  fillSelect($('#sug-dataset'), d.datasets.map((x) => [x.id, x.name]), $('#sug-dataset').value || param('dataset'));
  await refreshSets();
}

export async function initSimilar() {
  $('#emb-create').addEventListener('click', embedScene);
  $('#emb-set').addEventListener('change', () => chooseSet().catch((err) => showError($('#sim-error'), err)));
  $('#sim-click').addEventListener('click', armClick);
  $('#sim-draw').addEventListener('click', startArea);
  $('#sim-label').addEventListener('click', labelThese);
  $('#sug-run').addEventListener('click', suggest);
  map.on('click', mapClicked);
  label.onLabelsChanged(drawProjection);
  await refreshSimilar();
}
