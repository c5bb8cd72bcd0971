// Small SVG charts without a library: lines (with optional error bars) and horizontal bars.

const NS = 'http://www.w3.org/2000/svg';

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function ticks(lo, hi, n = 4) {
  if (hi <= lo) return [lo];
  const step = 10 ** Math.floor(Math.log10((hi - lo) / n));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= n) || step * 10;
  const out = [];
  for (let t = Math.ceil(lo / nice) * nice; t <= hi + nice * 1e-9; t += nice) out.push(+t.toFixed(10));
  return out;
}

const label = (v) => (Math.abs(v) >= 1000 ? v.toLocaleString('en-US') : +v.toPrecision(3));

// series: [{name, color, points: [[x, y, err?], ...]}]
export function lineChart(container, series, { xLabel = '', yMin, yMax, logX = false, width = 400, height = 180, empty = 'no data yet' } = {}) {
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  const pts = series.flatMap((s) => s.points);
  const m = { l: 40, r: 10, t: 10, b: 30 };
  if (!pts.length) {
    svg.append(el('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle' }, empty));
    container.replaceChildren(svg);
    return svg;
  }
  const fx = logX ? (x) => Math.log10(Math.max(x, 1e-9)) : (x) => x;
  const xs = pts.map((p) => fx(p[0]));
  const ys = pts.flatMap((p) => [p[1] - (p[2] || 0), p[1] + (p[2] || 0)]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const y0 = yMin ?? Math.min(...ys);
  let y1 = yMax ?? Math.max(...ys);
  if (y1 <= y0) y1 = y0 + 1;
  const X = (x) => m.l + ((fx(x) - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);
  for (const t of ticks(y0, y1)) {
    svg.append(el('line', { x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t), stroke: '#e3e6ea' }));
    svg.append(el('text', { x: m.l - 4, y: Y(t) + 3, 'text-anchor': 'end' }, label(t)));
  }
  const xt = logX ? [...new Set(pts.map((p) => p[0]))].sort((a, b) => a - b) : ticks(x0, x1, 5);
  for (const t of xt) svg.append(el('text', { x: X(t), y: height - m.b + 12, 'text-anchor': 'middle' }, label(t)));
  svg.append(el('text', { x: (width + m.l) / 2, y: height - 4, 'text-anchor': 'middle' }, xLabel));
  series.forEach((s, i) => {
    const p = [...s.points].sort((a, b) => a[0] - b[0]);
    const d = p.map(([x, y], j) => `${j ? 'L' : 'M'}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join('');
    svg.append(el('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 1.8 }));
    for (const [x, y, err] of p) {
      if (err) svg.append(el('line', { x1: X(x), x2: X(x), y1: Y(y - err), y2: Y(y + err), stroke: s.color }));
      if (p.length < 40) svg.append(el('circle', { cx: X(x), cy: Y(y), r: 2.5, fill: s.color }));
    }
    svg.append(el('rect', { x: m.l + 6 + i * 115, y: 2, width: 10, height: 6, fill: s.color }));
    svg.append(el('text', { x: m.l + 20 + i * 115, y: 9 }, s.name));
  });
  container.replaceChildren(svg);
  return svg;
}

// rows: [{label, value, color, text}]
export function barChart(container, rows, { width = 400 } = {}) {
  const bar = 16;
  const height = rows.length * (bar + 6) + 6;
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  const max = Math.max(...rows.map((r) => r.value), 1e-12);
  rows.forEach((r, i) => {
    const y = 4 + i * (bar + 6);
    svg.append(el('text', { x: 0, y: y + 12 }, r.label));
    svg.append(el('rect', { x: 110, y, width: Math.max(1, (r.value / max) * (width - 210)), height: bar, fill: r.color }));
    svg.append(el('text', { x: width - 95, y: y + 12 }, r.text));
  });
  container.replaceChildren(svg);
  return svg;
}
