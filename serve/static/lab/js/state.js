// What the Lab shows, kept in the URL's hash so a reload or a shared link restores the view:
// tab, scene, dataset, model (name@alias), prediction, job, benchmark and map (lat,lng,zoom).

const params = new URLSearchParams(location.hash.slice(1));

export const state = {
  key: sessionStorage.getItem('geotune.key') || '',
  dev: false,
};

export function param(name) {
  return params.get(name) || '';
}

export function setParam(name, value) {
  if (value === undefined || value === null || value === '') params.delete(name);
  else params.set(name, value);
  history.replaceState(null, '', `#${params.toString()}`);
}

export function setKey(key) {
  state.key = key;
  if (key) sessionStorage.setItem('geotune.key', key);
  else sessionStorage.removeItem('geotune.key');
}
