// The map: Leaflet with the user's own imagery as the base layer (tiles from /v1 with the API
// key), overlays in their own panes, and the view kept in the URL.

/* global L */
import { api, authHeaders } from './api.js';
import { param, setParam } from './state.js';

export const map = L.map('map', { keyboard: true, maxZoom: 22 });
for (const [name, z] of [['base', 200], ['mask', 380], ['classes', 390], ['confidence', 395]]) {
  map.createPane(name).style.zIndex = z;
}

// Tiles fetched with the Authorization header (an <img src> cannot send it), then shown from
// a blob URL. Failed tiles are reported through Leaflet's tileerror event.
const AuthTiles = L.TileLayer.extend({
  createTile(coords, done) {
    const img = document.createElement('img');
    img.alt = '';
    const url = this.getTileUrl(coords);
    fetch(url, { headers: authHeaders() })
      .then((r) => {
        if (!r.ok) throw new Error(`tile ${url}: HTTP ${r.status}`);
        if (this.options.onFirstTile && !this._reported) {
          this._reported = true;
          this.options.onFirstTile(url);
        }
        return r.blob();
      })
      .then((blob) => {
        img.onload = () => {
          URL.revokeObjectURL(img.src);
          done(null, img);
        };
        img.src = URL.createObjectURL(blob);
      })
      .catch((err) => done(err, img));
    return img;
  },
});

const query = (q) => {
  const s = new URLSearchParams(Object.entries(q || {}).filter(([, v]) => v !== '' && v !== undefined && v !== null));
  return s.toString() ? `?${s}` : '';
};

// A tile layer from a TileJSON document (GET .../tiles/{file}/tilejson.json).
export function tilesFrom(tj, { pane = 'base', q, opacity = 1, onFirstTile, onError } = {}) {
  const [w, s, e, n] = tj.bounds;
  const layer = new AuthTiles(tj.tiles[0] + query(q), {
    pane, opacity, onFirstTile, maxNativeZoom: tj.maxzoom, maxZoom: 22, noWrap: true,
    bounds: L.latLngBounds([s, w], [n, e]), keepBuffer: 1,
  });
  if (onError) layer.on('tileerror', (ev) => onError(ev.error));
  layer.template = tj.tiles[0];
  layer.setQuery = (next) => {
    layer._reported = false;
    layer.setUrl(layer.template + query(next));
  };
  return layer;
}

export function fitTo(tj) {
  const [w, s, e, n] = tj.bounds;
  map.fitBounds(L.latLngBounds([s, w], [n, e]), { padding: [10, 10] });
}

// Base layer: "scene:<id>", "dataset:<id>" or "prediction:<id>"; returns its TileJSON.
let base = null;
export async function showBase(ref, { log, fit = true, onError } = {}) {
  const [kind, id] = ref.split(':');
  const collection = { scene: 'scenes', dataset: 'datasets', prediction: 'predictions' }[kind];
  const { body: tj } = await api('GET', `/v1/${collection}/${id}/tiles/image/tilejson.json`, { log });
  if (base) map.removeLayer(base);
  base = tilesFrom(tj, {
    onFirstTile: (url) => log && log.push({ method: 'GET', url }),
    onError,
  }).addTo(map);
  base.tj = tj;
  if (fit) fitTo(tj);
  return tj;
}

export function baseLayer() {
  return base;
}

let basemap = null;
export function setBasemap(url, on) {
  if (basemap) map.removeLayer(basemap);
  basemap = null;
  if (on && url) {
    basemap = L.tileLayer(url, { maxZoom: 19, attribution: 'basemap: ' + new URL(url.replace('{s}', 'a')).hostname }).addTo(map);
    basemap.bringToBack();
  }
}

// the view in the URL (lat,lng,zoom), restored at start
export function restoreView() {
  const v = param('map').split(',').map(Number);
  if (v.length === 3 && v.every(Number.isFinite)) {
    map.setView([v[0], v[1]], v[2]);
    return true;
  }
  map.setView([20, 0], 2);
  return false;
}

map.on('moveend', () => {
  const c = map.getCenter();
  setParam('map', `${c.lat.toFixed(6)},${c.lng.toFixed(6)},${map.getZoom()}`);
});
