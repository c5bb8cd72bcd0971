// Label: a class list with colours, polygons drawn on the map (Leaflet-Geoman) or a labels
// file, and a dataset made from them with POST /v1/datasets (ingested as a job).

/* global L */
import { api, waitJob } from './api.js';
import { CallLog } from './calls.js';
import { bodySchema, schemaForm } from './forms.js';
import { current } from './imagery.js';
import { map } from './map.js';
import { setParam } from './state.js';
import { $, fmt, h, saveBlob, say, showError } from './ui.js';

// the colours ingestion gives classes (datamodules/labels.py PALETTE)
export const PALETTE = ['#1f77b4', '#2ca02c', '#d62728', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2',
  '#7f7f7f', '#bcbd22', '#17becf', '#aec7e8', '#98df8a', '#ff9896', '#ffbb78', '#c5b0d5', '#c49c94'];

const log = new CallLog('dataset');
const classes = []; // [{name, color}]
let active = 0;
let selected = null;
let labelsFile = null; // a dropped file that is not GeoJSON: sent as it is
export const drawn = L.featureGroup().addTo(map);
let datasetOptions = () => ({});
const created = [];

export function onDatasetCreated(fn) {
  created.push(fn);
}

function style(name) {
  const c = classes.find((k) => k.name === name)?.color || '#000';
  return { color: c, fillColor: c, fillOpacity: 0.35, weight: 2 };
}

function renderClasses() {
  $('#classes').replaceChildren(...classes.map((c, i) => h('li', { class: i === active ? 'active' : '' },
    h('span', { class: 'swatch', style: { background: c.color } }),
    h('button', { type: 'button', class: 'quiet', 'aria-pressed': String(i === active),
      onclick: () => setActive(i) }, `${i + 1}`),
    h('span', {}, c.name),
    h('span', { class: 'hint' }, `${drawn.getLayers().filter((l) => l.feature.properties.class === c.name).length} polygon(s)`))));
  say($('#label-count'), `${drawn.getLayers().length} polygon(s) drawn`);
  changed.forEach((fn) => fn());
}

// for the Similar panel: whether a class exists, each class's colour, a hook on every change
export function hasClass(name) {
  return classes.some((c) => c.name === name);
}

export function classColours() {
  return Object.fromEntries(classes.map((c) => [c.name, c.color]));
}

const changed = [];
export function onLabelsChanged(fn) {
  changed.push(fn);
}

export function setActive(i) {
  if (i >= 0 && i < classes.length) active = i;
  renderClasses();
}

export function addClass(name) {
  name = name.trim();
  showError($('#class-error'), null);
  if (!name) return showError($('#class-error'), new Error('type a class name'));
  if (classes.some((c) => c.name === name)) return showError($('#class-error'), new Error(`${name} is already a class`));
  classes.push({ name, color: PALETTE[classes.length % PALETTE.length] });
  active = classes.length - 1;
  renderClasses();
}

function select(layer) {
  if (selected) selected.setStyle({ dashArray: null, weight: 2 });
  selected = layer;
  if (layer) layer.setStyle({ dashArray: '4 3', weight: 3 });
}

export function addPolygon(layer, name) {
  layer.feature = { type: 'Feature', properties: { class: name } };
  layer.setStyle(style(name));
  layer.bindTooltip(name);
  layer.on('click', () => select(layer));
  drawn.addLayer(layer);
  renderClasses();
}

export function startPolygon() {
  showError($('#class-error'), null);
  if (!classes.length) return showError($('#class-error'), new Error('add a class first'));
  map.pm.enableDraw('Polygon', { snappable: false, pathOptions: style(classes[active].name),
    templineStyle: { color: classes[active].color }, hintlineStyle: { color: classes[active].color, dashArray: '4 4' } });
  map.getContainer().dataset.purpose = 'label';
}

export function deleteSelected() {
  if (selected) drawn.removeLayer(selected);
  selected = null;
  renderClasses();
}

export function labelCreated(layer) {
  addPolygon(layer, classes[active].name);
}

async function readLabelsFile(file) {
  showError($('#labels-error'), null);
  labelsFile = null;
  if (/\.(geo)?json$/i.test(file.name)) {
    let fc;
    try {
      fc = JSON.parse(await file.text());
    } catch (err) {
      return showError($('#labels-error'), new Error(`${file.name} is not valid JSON: ${err.message}`));
    }
    const feats = (fc.features || []).filter((f) => /Polygon/.test(f.geometry?.type || ''));
    const props = Object.keys(feats[0]?.properties || {});
    const column = $('#class-column').value || ['class', 'class_name', 'label'].find((p) => props.includes(p)) || props[0];
    if (!feats.length || !column) return showError($('#labels-error'), new Error(`${file.name} has no polygons with a class property`));
    for (const f of feats) {
      const name = String(f.properties[column]);
      if (!classes.some((c) => c.name === name)) addClass(name);
      L.geoJSON(f).eachLayer((layer) => addPolygon(layer, name));
    }
    say($('#labels-file-name'), `${feats.length} polygon(s) from ${file.name} (class column ${column}), editable on the map`);
    if (drawn.getLayers().length) map.fitBounds(drawn.getBounds());
    return;
  }
  labelsFile = file; // GeoPackage, zipped Shapefile, GeoParquet, FlatGeobuf: the server reads it
  say($('#labels-file-name'), `${file.name} will be sent as the labels (class column: ${$('#class-column').value || 'class'})`);
}

function labelsGeoJSON() {
  const fc = drawn.toGeoJSON();
  return new Blob([JSON.stringify(fc)], { type: 'application/geo+json' });
}

async function sceneBlob() {
  const s = current.scene;
  const r = await api('GET', `/v1/scenes/${s.id}/scene.tif`);
  return { blob: r.body, name: s.name, note: `your scene (the Lab sent the file it shows, from GET /v1/scenes/${s.id}/scene.tif)` };
}

function placeError(err) {
  const text = `${err.detail || err.message}`;
  const field = (err.fields || []).map((f) => f.field).join(' ');
  if (/labels|class/.test(field) || /^labels|labels '|class column|polygon|label/i.test(text)) showError($('#labels-error'), err);
  else showError($('#dataset-error'), err);
}

async function createDataset() {
  ['#dataset-error', '#labels-error'].forEach((s) => showError($(s), null));
  $('#dataset-warnings').replaceChildren();
  say($('#dataset-status'), '');
  const name = $('#dataset-name').value.trim();
  if (!name) return showError($('#dataset-error'), new Error('give the dataset a name'));
  if (!current.scene) return showError($('#dataset-error'), new Error('upload a scene (Imagery) or choose one as the base layer: the dataset is made of the scene and your labels'));
  if (!labelsFile && !drawn.getLayers().length) return showError($('#labels-error'), new Error('draw polygons on the scene, or drop a labels file'));
  const labels = labelsFile ? { blob: labelsFile, name: labelsFile.name } : { blob: labelsGeoJSON(), name: 'labels.geojson', note: 'the polygons drawn on the map (Download labels.geojson below)' };
  const download = labelsFile ? null : h('button', { type: 'button', class: 'quiet', onclick: () => saveBlob(labelsGeoJSON(), 'labels.geojson') }, 'Download labels.geojson');
  log.reset(download);
  $('#dataset-create').disabled = true;
  try {
    const form = [['name', name], ['image', await sceneBlob()], ['labels', labels],
      ['class_column', labelsFile ? $('#class-column').value || 'class' : 'class']];
    if (current.scene.sensor) form.push(['sensor', current.scene.sensor]);
    for (const [k, v] of Object.entries(datasetOptions())) if (v !== null) form.push([k, String(v)]);
    const r = await api('POST', '/v1/datasets', { form, log });
    let manifest = r.body;
    let warnings = r.body.warnings || [];
    if (r.status === 202) { // ingested as a job
      say($('#dataset-status'), `ingesting (job ${r.body.id})…`);
      const job = await waitJob(r.body.id, { log, onState: (j) => say($('#dataset-status'), `ingest ${j.state}…`) });
      if (job.state !== 'succeeded') throw new Error(job.error || `the ingest job ${job.state}`);
      manifest = job.result.dataset;
      warnings = job.result.warnings || [];
    }
    const pixels = (manifest.classes || []).reduce((a, c) => a + (c.pixels || 0), 0);
    say($('#dataset-status'), `dataset ${manifest.id}: ${manifest.classes.length} classes, ${fmt.int(pixels)} labelled pixels`);
    $('#dataset-warnings').replaceChildren(...warnings.map((w) => h('li', {}, w)));
    setParam('dataset', manifest.id);
    created.forEach((fn) => fn(manifest));
  } catch (err) {
    placeError(err);
  } finally {
    $('#dataset-create').disabled = false;
  }
}

export async function initLabel() {
  $('#class-add').addEventListener('click', () => { addClass($('#class-name').value); $('#class-name').value = ''; });
  $('#class-name').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); $('#class-add').click(); }
  });
  $('#draw-polygon').addEventListener('click', startPolygon);
  $('#delete-selected').addEventListener('click', deleteSelected);
  $('#dataset-create').addEventListener('click', createDataset);
  const drop = $('#drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files[0]) readLabelsFile(e.dataTransfer.files[0]);
  });
  $('#labels-file').addEventListener('change', (e) => e.target.files[0] && readLabelsFile(e.target.files[0]));
  const schema = await bodySchema('post', '/v1/datasets', 'multipart/form-data');
  datasetOptions = schemaForm($('#dataset-options'), schema, {
    prefix: 'ds', skip: ['name', 'image', 'labels', 'labels_after', 'class_column', 'sensor', 'bands', 'dates'],
  });
  renderClasses();
}
