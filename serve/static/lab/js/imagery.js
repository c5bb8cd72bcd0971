// Imagery: upload a scene, choose the base layer (a scene, a dataset's image, a prediction's
// imagery), its bands and stretch, and the optional online basemap.

import { api } from './api.js';
import { CallLog } from './calls.js';
import { baseLayer, setBasemap, showBase } from './map.js';
import { param, setParam } from './state.js';
import { $, fillSelect, say, showError } from './ui.js';

const sceneLog = new CallLog('scene');
const tilesLog = new CallLog('tiles');
export const current = { ref: '', scene: null, tj: null };
const listeners = [];

export function onBaseChange(fn) {
  listeners.push(fn);
}

export async function refreshBases(select) {
  const [{ body: sc }, { body: ds }] = await Promise.all([api('GET', '/v1/scenes'), api('GET', '/v1/datasets')]);
  const options = [['', '(none)']];
  for (const s of sc.scenes) options.push([`scene:${s.id}`, `scene: ${s.name} (${s.shape[1]}×${s.shape[0]} px)`]);
  for (const d of ds.datasets) options.push([`dataset:${d.id}`, `dataset: ${d.name}`]);
  if (select && !options.some(([v]) => v === select)) options.push([select, select.replace(':', ': ')]);
  fillSelect($('#base-select'), options, select || current.ref);
  return sc.scenes;
}

function stretchQuery() {
  const bands = ['#band-r', '#band-g', '#band-b'].map((s) => $(s).value);
  return { bands: bands.join(','), vmin: $('#vmin').value, vmax: $('#vmax').value };
}

function showStretch(tj) {
  const g = tj.geotune || {};
  $('#stretch').hidden = g.style !== 'rgb';
  if (g.style !== 'rgb') return;
  const opts = g.bands.map((b) => [b, b]);
  ['#band-r', '#band-g', '#band-b'].forEach((s, i) => fillSelect($(s), opts, g.rgb[i]));
  $('#vmin').value = g.stretch.vmin;
  $('#vmax').value = g.stretch.vmax;
  say($('#stretch-source'), `default stretch: ${g.stretch.source}`);
}

export async function setBase(ref, { fit = true } = {}) {
  showError($('#base-error'), null);
  current.ref = ref;
  setParam('base', ref);
  if (!ref) return null;
  tilesLog.reset();
  try {
    current.tj = await showBase(ref, { log: tilesLog, fit, onError: (e) => showError($('#base-error'), e) });
  } catch (err) {
    showError($('#base-error'), err);
    return null;
  }
  current.scene = ref.startsWith('scene:') ? (await api('GET', `/v1/scenes/${ref.slice(6)}`)).body : null;
  showStretch(current.tj);
  if ($('#base-select').value !== ref) await refreshBases(ref);
  listeners.forEach((fn) => fn(current));
  return current.tj;
}

async function uploadScene() {
  const file = $('#scene-file').files[0];
  showError($('#scene-error'), null);
  if (!file) {
    showError($('#scene-error'), new Error('choose a GeoTIFF first'));
    return;
  }
  sceneLog.reset();
  const form = [['image', { blob: file, name: file.name }]];
  if ($('#scene-sensor').value) form.push(['sensor', $('#scene-sensor').value]);
  $('#scene-upload').disabled = true;
  try {
    const { body } = await api('POST', '/v1/scenes', { form, log: sceneLog });
    await refreshBases(`scene:${body.id}`);
    await setBase(`scene:${body.id}`);
  } catch (err) {
    showError($('#scene-error'), err);
  } finally {
    $('#scene-upload').disabled = false;
  }
}

export function initImagery(config, { fit }) {
  $('#scene-upload').addEventListener('click', uploadScene);
  $('#base-select').addEventListener('change', (e) => setBase(e.target.value));
  $('#stretch-apply').addEventListener('click', () => {
    showError($('#stretch-error'), null);
    const q = stretchQuery();
    if (!(Number(q.vmin) < Number(q.vmax))) {
      showError($('#stretch-error'), new Error('min must be below max'));
      return;
    }
    baseLayer()?.setQuery(q);
  });
  $('#stretch-reset').addEventListener('click', () => {
    if (!current.tj) return;
    showStretch(current.tj);
    baseLayer()?.setQuery({});
  });
  if (config.basemap_url) {
    $('#basemap-row').hidden = false;
    $('#basemap').addEventListener('change', (e) => setBasemap(config.basemap_url, e.target.checked));
  }
  return refreshBases(param('base')).then(() => (param('base') ? setBase(param('base'), { fit }) : null));
}
