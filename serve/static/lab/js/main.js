// The Lab's start: settings, sign-in, tabs, keyboard shortcuts, and each section's module.

import { api } from './api.js';
import { initCompare } from './compare.js';
import { initFinetune, onModelRegistered, refreshDatasets } from './finetune.js';
import { initImagery, refreshBases } from './imagery.js';
import * as label from './label.js';
import { map, restoreView } from './map.js';
import { aoiCreated, initPredict, refreshModels, startAoi } from './predict.js';
import { areaCreated, initSimilar, refreshSimilar } from './similar.js';
import { param, setKey, setParam, state } from './state.js';
import { $, $$, h, showError } from './ui.js';

const TABS = ['imagery', 'label', 'finetune', 'predict', 'similar', 'compare'];

function showTab(name) {
  if (!TABS.includes(name)) name = 'imagery';
  for (const t of TABS) {
    $(`#panel-${t}`).hidden = t !== name;
    $(`#tab-${t}`).setAttribute('aria-selected', String(t === name));
    $(`#tab-${t}`).tabIndex = t === name ? 0 : -1;
  }
  setParam('tab', name);
  // the drawn labels belong to labelling; a prediction is seen without them
  if (['label', 'finetune', 'similar'].includes(name)) label.drawn.addTo(map);
  else label.drawn.remove();
}

async function signIn(config) {
  if (config.dev) return 'local (--dev)';
  for (;;) {
    if (state.key) {
      try {
        await api('GET', '/v1/models');
        return 'signed in';
      } catch (err) {
        setKey('');
        showError($('#signin-error'), err);
      }
    }
    $('#signin').hidden = false;
    $('#key').focus();
    await new Promise((resolve) => $('#signin').addEventListener('submit', (e) => {
      e.preventDefault();
      setKey($('#key').value.trim());
      resolve();
    }, { once: true }));
  }
}

function shortcuts(e) {
  if (e.target.closest('input, select, textarea') || e.ctrlKey || e.metaKey || e.altKey) return;
  const drawing = map.pm.globalDrawModeEnabled();
  const tab = param('tab');
  if (/^[1-9]$/.test(e.key) && tab === 'label') label.setActive(Number(e.key) - 1);
  else if (e.key.toLowerCase() === 'p' && tab === 'label' && !drawing) label.startPolygon();
  else if (e.key.toLowerCase() === 'a' && tab === 'predict' && !drawing) startAoi();
  else if (e.key === 'Enter' && drawing) map.pm.Draw.Polygon._finishShape();
  else if (e.key === 'Backspace' && drawing) map.pm.Draw.Polygon._removeLastVertex();
  else if (e.key === 'Escape' && drawing) map.pm.disableDraw();
  else if (e.key === 'Delete' && tab === 'label') label.deleteSelected();
  else return;
  e.preventDefault();
}

async function start() {
  const config = await (await fetch('/lab/config.json')).json();
  state.dev = config.dev;
  for (const s of $$('select.sensors')) s.append(...config.sensors.map((id) => h('option', { value: id }, id)));
  const who = await signIn(config);
  $('#signin').hidden = true;
  $('#who').replaceChildren(who, config.dev ? '' : h('button', { type: 'button', onclick: () => { setKey(''); location.reload(); } }, 'Sign out'));
  for (const t of TABS) $(`#tab-${t}`).addEventListener('click', () => showTab(t));
  $('nav').addEventListener('keydown', (e) => {
    const i = TABS.indexOf(param('tab')) + (e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0);
    if (i !== TABS.indexOf(param('tab')) && TABS[i]) {
      showTab(TABS[i]);
      $(`#tab-${TABS[i]}`).focus();
    }
  });
  showTab(param('tab'));
  const restored = restoreView();
  map.on('pm:create', (e) => {
    const purpose = map.getContainer().dataset.purpose;
    if (purpose === 'aoi') aoiCreated(e.layer);
    else if (purpose === 'similar') areaCreated(e.layer);
    else label.labelCreated(e.layer);
  });
  document.addEventListener('keydown', shortcuts);
  label.onDatasetCreated(async (m) => {
    await Promise.all([refreshDatasets(m.id), refreshBases()]);
    $('#ft-name').value ||= m.id;
  });
  onModelRegistered((r) => {
    refreshModels(`${r.model}@${r.alias || 'champion'}`);
    refreshSimilar();
  });
  await Promise.all([initImagery(config, { fit: !restored }), label.initLabel(), initFinetune(), initPredict(), initSimilar(), initCompare()]);
  window.geotuneLab = { map }; // for people poking at the page, and the browser tests
  document.body.dataset.ready = 'true';
}

start().catch((err) => {
  document.body.dataset.ready = 'error';
  document.body.prepend(h('p', { class: 'error', role: 'alert' }, `The Lab could not start: ${err.detail || err.message}`));
});
