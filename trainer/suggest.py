"""Label suggestions: the chips of a dataset where labelling next helps most.

A fine-tune of the dataset (by default its latest registered version) looks at every chip of
the dataset's scene (the training patch, side by side). Each chip gets

- its predictive entropy (of the per-pixel class probabilities averaged over the chip's valid
  pixels; for classification, of the chip's probabilities), divided by its maximum so it runs
  from 0 (certain) to 1 (no idea);
- the share of its pixels that are labelled already;
- its embedding from the fine-tune's own encoder (:class:`trainer.encoder.EmbeddingNet`).

The score is entropy × (1 − labelled share). The ``n`` suggestions are picked greedily from the
``5n`` best-scored chips: the best first, then each time the chip maximising score × cosine
distance to the nearest chip already picked, so they are spread over different kinds of place
rather than all alike. The answer is GeoJSON (CRS84 chip footprints) with ``rank``,
``chip_id``, ``score``, ``entropy``, ``labelled_fraction``, ``predicted`` (class) and
``confidence``.
"""

from __future__ import annotations

import numpy as np

from datamodules.errors import UserError

CANDIDATES = 5  # suggestions are picked among this many times n of the best-scored chips


class SuggestError(UserError):
    pass


def latest_model(dataset_id: str, owner: str) -> str:
    """The URI of the newest registered version trained on ``dataset_id`` by ``owner``."""
    from .registry import setup_mlflow

    client = setup_mlflow()
    versions = client.search_model_versions(f"tags.dataset_id = '{dataset_id}'")
    mine = [v for v in versions if (v.tags or {}).get("owner", "local") == owner]
    if not mine:
        raise SuggestError(
            f"dataset {dataset_id!r} has no registered fine-tune yet; train one first, e.g. "
            f"geotune train data.dataset={dataset_id} register.name={dataset_id}"
        )
    v = max(mine, key=lambda v: (v.creation_timestamp, int(v.version)))
    return f"models:/{v.name}/{v.version}"


def suggest(
    dataset: str,
    n: int = 20,
    *,
    model: str | None = None,
    root=None,
    chip_size=None,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = False,
) -> dict:
    """GeoJSON of the ``n`` chips of ``dataset`` where labels would help the fine-tune most."""
    from datamodules.manifest import load_dataset

    from .embed import Embedder, EmbedOptions, EncoderSource
    from .inputs import prepare_inputs
    from .predictor import PredictOptions, Predictor

    if n < 1:
        raise SuggestError(f"n must be at least 1; got {n}")
    ds = load_dataset(dataset, root)
    m = ds.manifest
    if m.task == "change":
        raise SuggestError(
            "label suggestions are made for segmentation and classification datasets"
        )
    uri = model or latest_model(ds.id, m.owner)
    source = EncoderSource(model=uri)
    chip = chip_size or source.default_chip()
    encoder = source.build(None, chip)
    # the dataset's image as the model's prediction would read it (units, nodata)
    inputs = prepare_inputs(encoder.record, ds.images, ds.bands, m.sensor, m.dates)
    scenes, conversion = inputs.scenes, inputs.conversion
    opts = EmbedOptions(chip_size=chip, precision=precision, device=device)
    emb = Embedder(encoder, scenes, opts, chip, conversion)
    popts = PredictOptions(chip_size=chip, overlap=0, precision=precision, device=device)
    pred = Predictor(source.registered(), scenes, popts, conversion)
    labelled = Labelled(ds)
    try:
        rows = _score_chips(emb, pred, labelled, opts.block_size, chip)
    finally:
        emb.close()
        labelled.close()
    if not rows:
        raise SuggestError(f"dataset {ds.id!r} has no chip with data to look at")
    picked, score = pick(rows, n)
    geoms = emb.footprints([(rows[i][1], rows[i][2]) for i in picked])
    names = [c["name"] for c in m["classes"]]
    features = _features(rows, picked, score, geoms, names)
    return {
        "type": "FeatureCollection",
        "dataset": ds.id,
        "model": uri,
        "chip_size": chip,
        "chips_scored": len(rows),
        "features": features,
    }


def _score_chips(emb, pred, labelled: Labelled, block_size: int, chip: int) -> list[tuple]:
    """One row per chip with at least half its pixels valid: (chip id, row, col, entropy,
    labelled share, predicted class, confidence, embedding)."""
    rows = []
    multi_label = bool(pred.record.get("multi_label"))
    for block in emb.blocks(block_size):
        x, valid, (r0, c0) = emb.read_block(block)
        chips = [(r, c) for r in block[0] for c in block[1]]
        chips = [rc for rc in chips if _share(valid, r0, c0, *rc, chip) >= 0.5]
        for i in range(0, len(chips), emb.batch_size):
            batch = chips[i : i + emb.batch_size]
            arr = np.stack([emb._chip(x, (r0, c0), r, c) for r, c in batch])
            vecs = emb.run(arr, batch).cpu().numpy()
            probs = pred.forward(arr, batch)
            for (r, c), v, p in zip(batch, vecs, probs, strict=True):
                ok = valid[r - r0 : r - r0 + chip, c - c0 : c - c0 + chip]
                h, cls, conf = _uncertainty(p, ok, multi_label)
                rows.append((emb.chip_id(r, c), r, c, h, labelled.share(r, c, chip), cls, conf, v))
    return rows


def _features(rows, picked: list[int], score: np.ndarray, geoms, names: list[str]) -> list[dict]:
    """The GeoJSON features of the picked chips, in rank order."""
    import shapely

    features = []
    for rank, (i, g) in enumerate(zip(picked, geoms, strict=True), 1):
        cid, _, _, h, lab, cls, conf, _ = rows[i]
        features.append(
            {
                "type": "Feature",
                "id": int(cid),
                "geometry": shapely.geometry.mapping(g),
                "properties": {
                    "rank": rank,
                    "chip_id": int(cid),
                    "score": round(float(score[i]), 4),
                    "entropy": round(h, 4),
                    "labelled_fraction": round(lab, 4),
                    "predicted": names[cls],
                    "confidence": round(conf, 4),
                },
            }
        )
    return features


def pick(rows, n: int) -> tuple[list[int], np.ndarray]:
    """Indices of ``n`` rows: best score first, then score × distance to the nearest picked."""
    score = np.array([h * (1 - lab) for _, _, _, h, lab, _, _, _ in rows])
    cand = np.argsort(-score, kind="stable")[: CANDIDATES * n]
    vecs = np.stack([rows[i][7] for i in cand]).astype(np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    s = score[cand] / max(float(score[cand].max()), 1e-12)
    chosen = [0]
    dist = 1.0 - vecs @ vecs[0]
    while len(chosen) < min(n, len(cand)):
        gain = s * np.maximum(dist, 0) + 1e-9 * s  # ties (identical chips): the better score
        gain[chosen] = -np.inf
        j = int(np.argmax(gain))
        chosen.append(j)
        dist = np.minimum(dist, 1.0 - vecs @ vecs[j])
    return [int(cand[j]) for j in chosen], score


def _share(valid, r0, c0, r, c, chip) -> float:
    v = valid[r - r0 : r - r0 + chip, c - c0 : c - c0 + chip]
    return float(v.mean()) if v.size else 0.0


def _uncertainty(p: np.ndarray, valid: np.ndarray, multi_label: bool) -> tuple[float, int, float]:
    """Normalised entropy, the most likely class and its mean probability, over valid pixels."""
    eps = 1e-12
    k = p.shape[0]
    if p.ndim == 3:  # [K, h, w] over the chip, padded past the scene: the valid pixels only
        p = p[:, : valid.shape[0], : valid.shape[1]][:, valid]
    else:
        p = p[:, None]
    if multi_label:
        h = -(p * np.log(p + eps) + (1 - p) * np.log(1 - p + eps)).mean(0) / np.log(2)
    else:
        h = -(p * np.log(p + eps)).sum(0) / np.log(max(k, 2))
    mean = p.mean(1)
    cls = int(mean.argmax())
    return float(h.mean()), cls, float(mean[cls])


class Labelled:
    """The share of a chip's pixels that hold labels (mask rasters; classification chips)."""

    def __init__(self, ds):
        import rasterio

        from datamodules.chips import read_chips

        self.mask = self.boxes = None
        if ds.manifest.task == "classification":
            c = read_chips(ds.file("chips"))
            self.boxes = np.stack([c["row"], c["col"], c["size"]], 1)
        else:
            self.mask = rasterio.open(ds.file("mask"))
            self.ignore = ds.ignore_index

    def share(self, r: int, c: int, chip: int) -> float:
        from rasterio.windows import Window

        if self.mask is not None:
            h, w = min(chip, self.mask.height - r), min(chip, self.mask.width - c)
            m = self.mask.read(1, window=Window(c, r, w, h))
            return float((m != self.ignore).mean()) if m.size else 0.0
        b = self.boxes
        dy = np.clip(np.minimum(b[:, 0] + b[:, 2], r + chip) - np.maximum(b[:, 0], r), 0, None)
        dx = np.clip(np.minimum(b[:, 1] + b[:, 2], c + chip) - np.maximum(b[:, 1], c), 0, None)
        return float(min(1.0, (dx * dy).sum() / chip**2))

    def close(self) -> None:
        if self.mask is not None:
            self.mask.close()
