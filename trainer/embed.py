"""Chip embeddings: a scene (or an area's STAC composite) → one pooled vector per chip, written
as GeoParquet (:mod:`trainer.embedfile`).

The encoder is a bare backbone (``--backbone clay_v1_5`` with its official weights file, or
``random`` as an explicit opt-in) or the encoder of a registered fine-tune (``--model
NAME@ALIAS``). Either way the chip reaches it exactly as in training and prediction: raw values
mapped onto the backbone's bands by name, normalised with its statistics, with the chip's date
and place for backbones that encode them. The vector is pooled per family as classification
pools it (:class:`trainer.heads.ClassificationNet`): the class token for ViTs, the mean of the
last feature map for CNNs (``pool`` overrides).

Chips lie on a regular grid (``chip_size``, ``stride``; the last chip of a row or column is
flush with the scene's edge) and are read and run by the prediction machinery
(:class:`trainer.predict.Predictor`: the same reader, device, precision and metadata), in
blocks of chips so memory is bounded by the block and not the scene. Chips with less than
``min_valid`` of their pixels holding data are not embedded.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from rasterio.windows import Window

from .chips import ChipGrid, ground_resolution
from .encoder import EmbedError, Encoder, EncoderSource, Imagery, default_chip
from .predictor import PredictOptions, Predictor


@dataclass
class EmbedOptions:
    chip_size: int | None = None  # default: a fine-tune's patch, a backbone's pretraining chip
    stride: int | None = None  # default: the chip size (chips side by side)
    dtype: str = "float32"  # of the stored vectors: float32 or float16
    min_valid: float = 0.5  # chips with a smaller share of pixels holding data are skipped
    batch_size: int | None = None  # chips per forward pass (default: as PredictOptions')
    block_size: int = 1024  # chips are read and run in blocks of about this many pixels a side
    precision: str = "auto"  # as for prediction: auto, fp32, bf16
    device: str = "auto"
    group_rows: int = 4096  # rows per Parquet row group
    mask_clouds: bool = False  # the scene's quality band makes its clouds nodata (chips skipped)


class Embedder(Predictor):
    """The predictor's reading, device, precision and metadata, on a chip grid with a stride;
    each chip's output is its embedding."""

    def __init__(self, encoder: Encoder, scenes, options: EmbedOptions, chip: int, conversion=None):
        stride = options.stride or chip
        if not 0 < stride <= chip:
            raise EmbedError(f"stride must be between 1 and the chip size ({chip}); got {stride}")
        if not 0 <= options.min_valid <= 1:
            raise EmbedError(f"min_valid is a share of the chip (0..1); got {options.min_valid}")
        opts = PredictOptions(
            chip_size=chip,
            overlap=0,
            batch_size=options.batch_size,
            precision=options.precision,
            device=options.device,
        )
        model = SimpleNamespace(record=encoder.record, net=encoder.net)
        super().__init__(model, scenes, opts, conversion)
        g = self.scenes[0].grid
        self.stride, self.min_valid = stride, options.min_valid
        self.rows = ChipGrid(g.height, chip, chip - stride)
        self.cols = ChipGrid(g.width, chip, chip - stride)
        self._row_index = {r: i for i, r in enumerate(self.rows.starts)}
        self._col_index = {c: j for j, c in enumerate(self.cols.starts)}

    def blocks(self, size: int) -> list[tuple[list[int], list[int]]]:
        """Chip origins in blocks of about ``size`` px a side, row-major; each chip in one."""
        return [
            (rs, cs)
            for rs in _groups(self.rows.starts, size)
            for cs in _groups(self.cols.starts, size)
        ]

    def read_block(self, block) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        rs, cs = block
        g = self.scenes[0].grid
        r1, c1 = min(rs[-1] + self.chip, g.height), min(cs[-1] + self.chip, g.width)
        x, valid = self.read(Window(cs[0], rs[0], c1 - cs[0], r1 - rs[0]))
        return x, valid, (rs[0], cs[0])

    def chip_id(self, r: int, c: int) -> int:
        return self._row_index[r] * len(self.cols.starts) + self._col_index[c]

    def embed_block(self, block, data) -> list[tuple[int, int, int, float, np.ndarray]]:
        """``(chip_id, row, col, valid_fraction, vector)`` of the block's chips with data."""
        x, valid, (r0, c0) = data
        keep = []
        for r in block[0]:
            for c in block[1]:
                v = valid[r - r0 : r - r0 + self.chip, c - c0 : c - c0 + self.chip]
                frac = float(v.mean()) if v.size else 0.0
                if frac >= self.min_valid and frac > 0:
                    keep.append((r, c, frac))
        out = []
        for i in range(0, len(keep), self.batch_size):
            batch = keep[i : i + self.batch_size]
            origins = [(r, c) for r, c, _ in batch]
            arr = np.stack([self._chip(x, (r0, c0), r, c) for r, c in origins])
            vecs = self.run(arr, origins).cpu().numpy()
            out += [
                (self.chip_id(r, c), r, c, f, v) for (r, c, f), v in zip(batch, vecs, strict=True)
            ]
        return out

    def footprints(self, chips: list[tuple[int, int]]):
        """The chips' footprints (cut to the scene) as CRS84 polygons."""
        import shapely
        from pyproj import Transformer

        g = self.scenes[0].grid
        rc = np.asarray(chips, dtype=np.float64).reshape(-1, 2)
        r0, c0 = rc[:, 0], rc[:, 1]
        r1, c1 = np.minimum(r0 + self.chip, g.height), np.minimum(c0 + self.chip, g.width)
        cols = np.stack([c0, c1, c1, c0, c0], 1)
        rows = np.stack([r0, r0, r1, r1, r0], 1)
        t = g.transform
        xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
        to84 = Transformer.from_crs(g.crs.to_wkt(), "OGC:CRS84", always_xy=True)
        lon, lat = to84.transform(xs, ys)
        # exterior rings counter-clockwise (RFC 7946), whatever the grid's orientation
        return shapely.orient_polygons(shapely.polygons(np.stack([lon, lat], -1)))


def _groups(starts: list[int], size: int) -> list[list[int]]:
    """Consecutive chip origins whose span from the group's first origin is under ``size``."""
    groups: list[list[int]] = []
    for s in starts:
        if groups and s - groups[-1][0] < size:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def embed_scene(
    encoder: Encoder,
    images,
    out: str | Path,
    *,
    bands: list[str] | None = None,
    sensor: str | None = None,
    dates: list | None = None,
    options: EmbedOptions | None = None,
    progress: bool = True,
    provenance: dict | None = None,
) -> dict:
    """Embed every chip of ``images`` (one scene, or one per date for multi-date encoders) into
    the GeoParquet file ``out``; returns a summary (chips written and skipped, time, options).

    The scenes are opened as prediction opens them (:func:`trainer.inputs.prepare_inputs`:
    sensor, nodata, the exact conversion of stored values into the encoder's units, date order).
    """
    from .embedfile import EmbeddingWriter
    from .inputs import prepare_inputs

    o = options or EmbedOptions()
    t0 = time.time()
    chip = o.chip_size or default_chip(encoder.record)
    inputs = prepare_inputs(encoder.record, list(images), bands, sensor, dates, o.mask_clouds)
    emb = Embedder(encoder, inputs.scenes, o, chip, inputs.conversion)
    constants = file_constants(encoder, inputs.scenes, provenance)
    meta = file_metadata(encoder, emb, inputs, o, provenance)
    writer = EmbeddingWriter(out, encoder.dim, o.dtype, constants, meta, o.group_rows)
    try:
        write_chips(emb, writer, max(o.block_size, chip), progress)
        if not writer.n and not writer.rows:
            raise EmbedError(
                f"no chip of the scene has {o.min_valid:.0%} of its pixels holding data (nodata "
                f"{inputs.scenes[0].nodata}); check the scene, or lower --min-valid"
            )
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        emb.close()
    summary = embed_summary(encoder, emb, inputs, o, written)
    summary = {"out": str(out)} | summary
    summary["seconds"] = round(time.time() - t0, 2)
    return summary


def write_chips(emb: Embedder, writer, block_size: int, progress: bool) -> None:
    """Every chip of the scene with enough data, with its footprint, into ``writer``
    (:class:`trainer.embedfile.EmbeddingWriter`), block by block; the next block is read while
    this one runs."""
    from tqdm.auto import tqdm

    from .predict import read_ahead

    blocks = emb.blocks(block_size)
    bar = tqdm(total=len(blocks), desc="embed", unit="block", disable=not progress)
    with ThreadPoolExecutor(1) as reader:
        for block, data in read_ahead(reader, emb.read_block, blocks):
            rows = emb.embed_block(block, data)
            del data
            if rows:
                geoms = emb.footprints([(r, c) for _, r, c, _, _ in rows])
                for (cid, r, c, frac, vec), geom in zip(rows, geoms, strict=True):
                    writer.add(cid, r, c, frac, geom, vec)
            bar.update(1)
    bar.close()


def _input_names(scenes) -> list[str]:
    return [Path(f).name for s in scenes for f in s.files]


def file_constants(encoder: Encoder, scenes, provenance: dict | None) -> dict:
    """The embeddings file's per-row constants: encoder, pooling, weights, source, date."""
    return {
        "backbone": encoder.name,
        "pool": encoder.net.pool,
        "weights": encoder.weights_label,
        "source": (provenance or {}).get("source") or ", ".join(_input_names(scenes)),
        "date": _day(scenes[0].date),
    }


def file_metadata(encoder: Encoder, emb: Embedder, inputs, o: EmbedOptions, provenance) -> dict:
    """The embeddings file's ``geotune`` metadata: the encoder, its bands and normalisation,
    the chip grid and options, the scene's grid and dates, and the caller's ``provenance``."""
    spec = encoder.net.backbone.spec
    g = inputs.scenes[0].grid
    return {
        "geotune_embeddings": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": encoder.name,
        "family": spec.family,
        "size": spec.size,
        "pool": encoder.net.pool,
        "dim": encoder.dim,
        "dtype": o.dtype,
        **encoder.provenance,
        "bands": list(encoder.record["bands"]),
        "normalisation": {
            "mean": list(spec.mean),
            "std": list(spec.std),
            "statistics": spec.extra.get("statistics"),
        },
        "sensor": encoder.record.get("sensor"),
        "chip_size": emb.chip,
        "stride": emb.stride,
        "min_valid": o.min_valid,
        "precision": emb.precision,
        "device": str(emb.device),
        "scene": {
            "inputs": _input_names(inputs.scenes),
            "crs": g.crs.to_wkt(),
            "transform": list(g.transform)[:6],
            "shape": [g.height, g.width],
            "resolution": list(ground_resolution(g)),
        },
        "dates": [s.date.isoformat() if s.date else None for s in inputs.scenes],
        "input": inputs.summary(),
        **{k: v for k, v in (provenance or {}).items() if k != "source"},
    }


def embed_summary(encoder: Encoder, emb: Embedder, inputs, o: EmbedOptions, written: int) -> dict:
    """What :func:`embed_scene` returns but ``out`` and ``seconds``: chips written and skipped,
    the vectors, the chip grid and how they were computed."""
    return {
        "chips": written,
        "skipped": len(emb.rows.starts) * len(emb.cols.starts) - written,
        "dim": encoder.dim,
        "pool": encoder.net.pool,
        "chip_size": emb.chip,
        "stride": emb.stride,
        "dtype": o.dtype,
        "precision": emb.precision,
        "device": str(emb.device),
        "input": inputs.summary(),
    }


def _day(d):
    """The calendar day of a date or datetime (the file's ``date`` column is date32)."""
    return d.date() if isinstance(d, datetime) else d


def open_checked(images, *, bands=None, sensor=None, dates=None, mask_clouds=False):
    """The scenes of ``images`` (as prediction opens them)."""
    from datamodules.imagery import ImageryError, open_scenes

    try:
        return open_scenes(images, bands=bands, sensor=sensor, dates=dates, mask_clouds=mask_clouds)
    except ImageryError as e:
        raise EmbedError(str(e)) from None


def embed_images(
    source: EncoderSource,
    images,
    out,
    *,
    bands=None,
    sensor=None,
    dates=None,
    options: EmbedOptions | None = None,
    progress=True,
    provenance=None,
) -> dict:
    """``geotune embed --image ...``: the encoder for the scene(s), then :func:`embed_scene`."""
    o = options or EmbedOptions()
    chip = o.chip_size or source.default_chip()
    imagery = None
    if not source.model:
        scenes = open_checked(
            images, bands=bands, sensor=sensor, dates=dates, mask_clouds=o.mask_clouds
        )
        imagery = Imagery.of(scenes, sensor)
    encoder = source.build(imagery, chip)
    return embed_scene(
        encoder,
        images,
        out,
        bands=bands,
        sensor=sensor,
        dates=dates,
        options=replace(o, chip_size=chip),
        progress=progress,
        provenance=provenance,
    )


def encoder_for_area(
    source: EncoderSource, sensor: str | None, chip: int | None, bands: list[str] | None = None
) -> Encoder:
    """The encoder for imagery fetched by area and dates (its ``record`` is what
    :func:`datamodules.composite.composite_for_model` reads): a model's own sensor, bands and
    resolution; a bare backbone's bands among ``bands`` (default all) of ``sensor``, at the
    finest of those bands."""
    chip = chip or source.default_chip()
    if source.model:
        return source.build(None, chip)
    if not sensor:
        raise EmbedError("fetching imagery for a bare backbone needs the sensor: --sensor ID")
    from datamodules.sensors import get_sensor

    sens = get_sensor(sensor)
    unknown = [b for b in bands or [] if b not in sens.band_names]
    if unknown:
        raise EmbedError(
            f"{sensor} has no band(s) {', '.join(unknown)}; its bands: {', '.join(sens.band_names)}"
        )
    encoder = source.build(Imagery(bands or sens.band_names, sensor, 0.0), chip)
    gsd = float(min(sens.band(b).gsd for b in encoder.record["bands"]))
    encoder.net.gsd = gsd
    encoder.record["resolution"] = [gsd, gsd]
    return encoder


__all__ = ["EmbedOptions", "Embedder", "EncoderSource", "embed_images", "embed_scene"]
