// Compare: a benchmark's results (geotune benchmark: backbones x label budgets x seeds) as a
// table and a chart of test mIoU against the number of labelled units.

import { api } from './api.js';
import { CallLog } from './calls.js';
import { lineChart } from './chart.js';
import { PALETTE } from './label.js';
import { param, setParam } from './state.js';
import { $, fillSelect, fmt, h, showError } from './ui.js';

const log = new CallLog('compare');

async function showBenchmark(id) {
  showError($('#bm-error'), null);
  setParam('benchmark', id);
  if (!id) return;
  try {
    const { body } = await api('GET', `/v1/benchmarks/${id}`, { log });
    const names = [...new Set(body.summary.map((s) => s.backbone))];
    const series = names.map((b, i) => ({
      name: b, color: PALETTE[i % PALETTE.length],
      points: body.summary.filter((s) => s.backbone === b).map((s) => [s.units, s.mean, s.std]),
    }));
    lineChart($('#bm-chart'), series, { xLabel: 'labelled units (log)', yMin: 0, yMax: 1, logX: true });
    $('#bm-table tbody').replaceChildren(...body.summary.map((s) => h('tr', {},
      h('td', {}, s.backbone), h('td', { class: 'num' }, `${s.units}${s.budget === 'all' ? ' (all)' : ''}`),
      h('td', { class: 'num', 'data-mean': s.mean }, `${fmt.num(s.mean)} ± ${fmt.num(s.std)}`),
      h('td', { class: 'num' }, s.n))));
  } catch (err) {
    showError($('#bm-error'), err);
  }
}

export async function initCompare() {
  log.reset();
  const { body } = await api('GET', '/v1/benchmarks', { log });
  const opts = body.benchmarks.map((b) => [b.id, `${b.name}: ${b.dataset_id}, ${b.backbones.join(', ')} (${b.runs} runs)`]);
  fillSelect($('#bm-select'), opts.length ? opts : [['', 'no benchmark results yet: geotune benchmark ...']], param('benchmark'));
  $('#bm-select').addEventListener('change', (e) => showBenchmark(e.target.value));
  if ($('#bm-select').value) await showBenchmark($('#bm-select').value);
}
