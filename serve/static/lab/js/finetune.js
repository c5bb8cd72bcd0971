// Fine-tune: a dataset and a backbone → POST /v1/finetunes; the job's progress live (epoch,
// step, loss and validation mIoU as charts, the log's tail); cancel; point an alias.

import { api } from './api.js';
import { CallLog } from './calls.js';
import { lineChart } from './chart.js';
import { bodySchema, schemaForm } from './forms.js';
import { param, setParam } from './state.js';
import { $, fillSelect, say, showError, sleep } from './ui.js';

const log = new CallLog('finetune');
const jobLog = new CallLog('job');
let backbones = [];
let options = () => ({});
let following = null; // the job id being followed
const finished = [];

export function onModelRegistered(fn) {
  finished.push(fn);
}

export async function refreshDatasets(select) {
  const { body } = await api('GET', '/v1/datasets');
  fillSelect($('#ft-dataset'), body.datasets.map((d) => [d.id, `${d.name} (${d.task}, ${d.classes.length} classes)`]),
    select || param('dataset'));
}

function showBackbone() {
  const b = backbones.find((x) => x.name === $('#ft-backbone').value);
  if (!b) return;
  fillSelect($('#ft-size'), b.sizes.map((s) => [s, s === b.default_size ? `${s} (official)` : s]), b.default_size);
  syncWeights();
}

// What the weights choice means here; the choice itself stays the person's (the API refuses
// pretrained weights it does not have, with what to do).
function syncWeights() {
  const b = backbones.find((x) => x.name === $('#ft-backbone').value);
  const official = b && $('#ft-size').value === b.default_size;
  say($('#ft-weights-note'), !b ? '' : !official ? 'pretrained weights exist only for the official size'
    : b.pretrained_available ? `pretrained: ${b.weights_file} from the server's weights directory`
      : `pretrained needs ${b.weights_file} in the server's weights directory; it is not there`);
}

async function launch() {
  showError($('#ft-error'), null);
  const body = {
    dataset: $('#ft-dataset').value, model_name: $('#ft-name').value.trim(), backbone: $('#ft-backbone').value,
    size: $('#ft-size').value, weights: document.querySelector('input[name=ft-weights]:checked').value,
    epochs: Number($('#ft-epochs').value), ...options(),
  };
  if (!body.dataset) return showError($('#ft-error'), new Error('create a dataset first (Label)'));
  if (!body.model_name) return showError($('#ft-error'), new Error('give the model a name'));
  log.reset();
  $('#ft-launch').disabled = true;
  try {
    const { body: job } = await api('POST', '/v1/finetunes', { json: body, log });
    follow(job.id);
  } catch (err) {
    showError($('#ft-error'), err);
  } finally {
    $('#ft-launch').disabled = false;
  }
}

function showJob(job) {
  const p = job.progress || {};
  $('#job-id').textContent = job.id;
  const where = p.epoch ? `, epoch ${p.epoch} of ${p.max_epochs}, step ${p.step}` : '';
  const m = p.metrics || {};
  const metric = ['train/loss', 'train/loss_epoch', 'val/mIoU'].filter((k) => k in m).map((k) => `${k} ${m[k].toFixed(3)}`).join(', ');
  say($('#job-status'), `${job.state}${where}${metric ? ` — ${metric}` : ''}`);
  $('#job-status').dataset.state = job.state;
  const steps = p.steps_per_epoch && p.max_epochs ? p.steps_per_epoch * p.max_epochs : 0;
  $('#job-progress').value = job.state === 'succeeded' ? 1 : steps ? Math.min(1, p.step / steps) : 0;
  $('#job-cancel').hidden = !['queued', 'running'].includes(job.state);
  showError($('#job-error'), job.error ? new Error(job.error) : null);
  if (job.state === 'succeeded' && job.kind === 'finetune') {
    const r = job.result;
    $('#job-done').hidden = false;
    const score = r.metrics['test/mIoU'] ?? r.metrics['val/mIoU'];
    say($('#job-result'), `registered ${r.model} version ${r.version}${r.alias ? ` (alias ${r.alias})` : ''}` +
      (score !== undefined ? `; mIoU ${score.toFixed(3)}` : ''));
    $('#job-done').dataset.model = r.model;
    $('#job-done').dataset.version = r.version;
  }
}

async function charts(jobId, done) {
  const { body } = await api('GET', `/v1/jobs/${jobId}/metrics`, { log: jobLog });
  const s = (k, color) => ({ name: k, color, points: body.metrics[k].map((m) => [m.step, m.value]) });
  const loss = [s('train/loss_step', '#9ec5ee'), s('train/loss_epoch', '#0b6bcb'), s('val/loss', '#d62728')];
  lineChart($('#chart-loss'), loss.filter((x) => x.points.length), { xLabel: 'step' });
  lineChart($('#chart-miou'), [s('val/mIoU', '#2ca02c')], {
    xLabel: 'step', yMin: 0, yMax: 1, empty: done ? 'no validation labels in this dataset' : 'no validation yet',
  });
}

export async function follow(jobId) {
  following = jobId;
  setParam('job', jobId);
  jobLog.reset();
  $('#job').hidden = false;
  $('#job-done').hidden = true;
  for (let i = 0; following === jobId; i++) {
    let job;
    try {
      job = (await api('GET', `/v1/jobs/${jobId}`, { log: jobLog })).body;
    } catch (err) {
      showError($('#job-error'), err);
      return;
    }
    showJob(job);
    const done = ['succeeded', 'failed', 'cancelled'].includes(job.state);
    if (job.kind === 'finetune' && (done || i % 2 === 0)) {
      await charts(jobId, done).catch((err) => showError($('#chart-loss'), err));
      const { body: text } = await api('GET', `/v1/jobs/${jobId}/logs`, { query: { tail: 20 }, log: jobLog });
      $('#job-log').textContent = text;
    }
    if (done) {
      if (job.state === 'succeeded') finished.forEach((fn) => fn(job.result));
      return;
    }
    await sleep(1000);
  }
}

async function cancel() {
  try {
    await api('DELETE', `/v1/jobs/${following}`, { log: jobLog });
  } catch (err) {
    showError($('#job-error'), err);
  }
}

async function setAlias() {
  const d = $('#job-done').dataset;
  const alias = $('#alias-name').value.trim();
  say($('#alias-status'), '');
  try {
    await api('PUT', `/v1/models/${d.model}/aliases/${encodeURIComponent(alias)}`, { json: { version: Number(d.version) }, log: jobLog });
    say($('#alias-status'), `${d.model}@${alias} → version ${d.version}`);
    finished.forEach((fn) => fn({ model: d.model, alias }));
  } catch (err) {
    showError($('#job-error'), err);
  }
}

export async function initFinetune() {
  const { body } = await api('GET', '/v1/backbones');
  backbones = body.backbones;
  fillSelect($('#ft-backbone'), backbones.map((b) => [b.name, `${b.name}: ${b.description}`]), 'resnet18');
  showBackbone();
  $('#ft-backbone').addEventListener('change', showBackbone);
  $('#ft-size').addEventListener('change', syncWeights);
  $('#ft-launch').addEventListener('click', launch);
  $('#job-cancel').addEventListener('click', cancel);
  $('#alias-set').addEventListener('click', setAlias);
  const schema = await bodySchema('post', '/v1/finetunes');
  options = schemaForm($('#ft-options'), schema, {
    prefix: 'ft', skip: ['dataset', 'model_name', 'backbone', 'size', 'weights', 'epochs'],
  });
  await refreshDatasets();
  if (param('job')) follow(param('job'));
}
