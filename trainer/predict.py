"""Streaming tiled prediction: a scene in; class COG, confidence COG, polygons, class areas out.

One implementation for the CLI, the demo, evaluation and the HTTP service. The scene is cut into
output tiles (``tile_size``); each tile is a pure function of (model, window): the chips of a
global chip grid that touch the tile are read, run in batches, blended with a linear weight
ramp over the overlap, cropped to the tile and written. Memory is bounded by the tile size, not
the scene, and the result does not depend on the tiling (the same chips cover every pixel), so
independent workers can each take a list of tiles (``tiles`` + ``Predictor.predict_window``).
Within one pass, a chip shared by neighbouring tiles runs once (``ChipCache``).

The parts: chip and tile geometry (:mod:`trainer.chips`), device and precision
(:mod:`trainer.device`), the model bound to a scene (:mod:`trainer.predictor`), the outputs
(:mod:`trainer.sink`); this module runs a scene through them.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from datamodules.imagery import bound_block_cache
from datamodules.progress import ProgressBar

from .chips import ChipCache, ChipGrid, coarse_grid, crop, fit_chip, ground_resolution, ramp, tiles
from .device import PRECISIONS, current_threads, resolve_device, resolve_precision, torch_threads
from .inference import give_back_free_memory
from .inputs import PredictError
from .predictor import PredictOptions, Predictor, open_predictor
from .sink import OutputLayout, OutputSink, tile_outcome, to_cog


class _Inline:
    """An executor that runs each job at once, on the calling thread."""

    def submit(self, fn, *args) -> Future:
        f = Future()
        f.set_result(fn(*args))
        return f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _executor(concurrent: bool):
    return ThreadPoolExecutor(1) if concurrent else _Inline()


def read_ahead(reader, read, items: list, *args):
    """``(item, read(item, *args))`` for each of ``items``, in order: the next item is read on
    ``reader`` (an executor) while the caller works on this one."""
    nxt = reader.submit(read, items[0], *args)
    for i, item in enumerate(items):
        data = nxt.result()
        if i + 1 < len(items):
            nxt = reader.submit(read, items[i + 1], *args)
        yield item, data
        del data  # before waiting for the next read: the caller may be done with it


def _blended(pred: Predictor, win, probs: dict, data) -> dict:
    return tile_outcome(pred, pred.blend(win, probs, data))


def _classified(pred: Predictor, win, data) -> dict:
    return tile_outcome(pred, pred.classify_window(win, data))


def tile_jobs(pred: Predictor, windows, cache, threads=None, concurrent=True):
    """``(window, Future of its tile_outcome)`` for each window, in order, each as soon as its
    forward passes are done: its blend may still be running. ``cache``: a :class:`ChipCache`
    (dense tasks) or None.

    ``concurrent``: reading the next window and blending this one's chips (GDAL and numpy,
    which release the GIL) overlap running the model on the next; without, each step runs in
    turn on this thread. The outcomes are the same: a chip's probabilities depend on (model,
    chip) only, and the blend adds them in a fixed order.
    """
    with (
        torch_threads(threads),
        _executor(concurrent) as reader,
        _executor(concurrent) as blender,
    ):
        for win, data in read_ahead(reader, pred.read_for, windows, cache):
            if pred.task == "classification":
                job = blender.submit(_classified, pred, win, data)
            else:
                probs = pred.chip_probs(win, data, cache)  # the forward passes, here
                cache.done(win)
                job = blender.submit(_blended, pred, win, probs, data)
            del data
            yield win, job


def predicted_tiles(pred: Predictor, windows, cache, bar=None, threads=None, concurrent=True):
    """``(window, tile_outcome)`` for each window, in order (:func:`tile_jobs`), one tile
    behind: a tile is given once the next one's forward passes are done, so that its blend
    overlaps them; ``bar`` counts the tiles given."""
    pending = None
    for win, job in tile_jobs(pred, windows, cache, threads, concurrent):
        if pending is not None:
            yield _finished(*pending, bar)
        pending = win, job
    if pending is not None:
        yield _finished(*pending, bar)


def _finished(win, job: Future, bar):
    out = job.result()
    if bar is not None:
        bar.update(1)
    return win, out


def drain(source, sink: OutputSink, concurrent: bool = True, bar=None) -> None:
    """Every ``(window, outcome)`` of ``source`` into ``sink``, in order; ``concurrent``:
    finishing a tile (writing, counting, polygons) overlaps predicting the next ones. An
    outcome may be a Future (:func:`tile_jobs`: the tile's blend may still run): the finisher
    waits for it, so a tile is finished while the next one's forward passes run, and after
    the last forward pass only the last tile is left to finish. ``bar`` counts the tiles
    finished."""
    with _executor(concurrent) as finisher:
        done = None
        for win, res in source:
            if done is not None:
                done.result()
            done = finisher.submit(_add_tile, sink, win, res, bar)
        if done is not None:
            done.result()


def _add_tile(sink: OutputSink, win, res, bar) -> None:
    sink.add(win, res.result() if isinstance(res, Future) else res)
    if bar is not None:
        bar.update(1)


def predict_scene(
    model,
    images: list[str | Path],
    out_dir: str | Path,
    *,
    bands: list[str] | None = None,
    sensor: str | None = None,
    dates: list | None = None,
    options: PredictOptions | None = None,
    progress: bool = True,
    provenance: dict | None = None,
    cluster=None,
    report=None,
    concurrent: bool = True,
) -> dict:
    """Predict a scene to ``out_dir``: classes.tif, confidence.tif (COGs), polygons.geojson, summary.json.

    ``images``: one file, or band files, or one file per date (change and multi-temporal
    models; put oldest first when their dates are known). ``sensor`` defaults to the model's;
    what was decided about sensor, nodata, units and date order is the summary's ``input``
    (:mod:`trainer.inputs`). Classification models give a coarse raster, one pixel per chip.
    ``cluster``: a Dask cluster (:mod:`trainer.cluster`) whose workers predict strips of tile
    rows (:mod:`trainer.strips`); the outputs are the same. ``report(tiles_done, tiles_total)``
    is called as tiles are predicted. ``concurrent``: reading, running the model, blending and
    writing overlap on threads (False: one after another; the outputs are the same).
    """
    o = options or PredictOptions()
    t0 = time.time()
    given = list(images)  # as the caller gave them: a cluster's workers prepare them the same way
    pred, inputs = open_predictor(model, given, bands=bands, sensor=sensor, dates=dates, options=o)
    if provenance and "inputs" in provenance:  # the caller's names of the files, per date
        provenance = provenance | {"inputs": inputs.reordered(list(provenance["inputs"]))}
    layout = OutputLayout.of(pred, o.tile_size)
    grid = inputs.scenes[0].grid
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    windows = tiles(grid.width, grid.height, layout.tile)
    strips = None
    bound_block_cache()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        sink = OutputSink(pred, layout, Path(tmp))
        bar = ProgressBar(len(windows), progress, report, "predict", "tile")
        if cluster is None:
            cache = None
            if pred.task != "classification":
                cache = ChipCache(pred, layout.tile, int(o.cache_mb * 2**20))
            source, counts = tile_jobs(pred, windows, cache, o.threads, concurrent), bar
        else:
            from .strips import StripRun

            scene = {"bands": bands, "sensor": sensor, "dates": dates}
            strips = StripRun(cluster, model, given, scene, pred, windows, layout.tile, tmp)
            source, counts = strips.tiles(bar), None  # the strips count their tiles
        drain(source, sink, concurrent, counts)
        bar.close()
        written = sink.finish(out)
    pred.close()
    give_back_free_memory()
    summary = scene_summary(model, pred, inputs, layout, written, provenance, strips)
    if summary["n_pixels"] == 0:
        msg = (
            f"{Path(given[0]).name} has no valid pixel (every pixel is nodata, "
            f"{summary['input']['nodata_source']}): nothing was predicted; check its nodata"
        )
        summary["input"]["notes"].append(msg)
        warnings.warn(msg, stacklevel=2)
    summary["seconds"] = round(time.time() - t0, 2)  # everything, polygons included
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def predict_aoi(
    model,
    aoi,
    start,
    end,
    out_dir: str | Path,
    *,
    imagery_dir: str | Path | None = None,
    sensor: str | None = None,
    fetch: dict | None = None,
    provenance: dict | None = None,
    progress: bool = True,
    **kwargs,
) -> dict:
    """Predict an area of interest: the imagery the model needs over ``aoi`` between ``start``
    and ``end`` (its sensor unless ``sensor`` is given, its bands, resolution and number of
    dates), fetched from a STAC catalogue as a composite into ``imagery_dir`` (default
    ``out_dir/imagery``; :func:`datamodules.composite.composite_for_model`, ``fetch``: its
    options), then :func:`predict_scene` on it (``kwargs``: its options). With a ``cluster``
    (a keyword of :func:`predict_scene`) its workers make the composite too. The summary's
    provenance names the composite's files and records how it was made (``imagery``).
    ``report`` (a keyword of :func:`predict_scene`) hears of the composite's blocks first, as
    ``report(done, total, stage="composite")``, then of the tiles predicted.
    """
    from datamodules.composite import composite_for_model

    report = kwargs.get("report")

    where = Path(imagery_dir) if imagery_dir else Path(out_dir) / "imagery"
    comp = composite_for_model(
        aoi,
        start,
        end,
        model.record,
        where,
        sensor=sensor,
        progress=progress,
        cluster=kwargs.get("cluster"),
        report=(lambda done, total: report(done, total, stage="composite")) if report else None,
        **(fetch or {}),
    )
    names = [Path(p).name for p in comp.images]
    provenance = (provenance or {}) | {"inputs": names, "imagery": comp.provenance}
    if (o := kwargs.get("options")) is not None and o.mask_clouds:  # the composite is masked
        kwargs["options"] = replace(o, mask_clouds=False)
    images = list(comp.images)
    return predict_scene(
        model,
        images,
        out_dir,
        sensor=comp.sensor,
        provenance=provenance,
        progress=progress,
        **kwargs,
    )


def scene_summary(model, pred, inputs, layout, written: dict, provenance, strips) -> dict:
    """summary.json of a predicted scene but its ``seconds``: what was predicted, counted and
    written, with which options, from which model and files."""
    o, rec, scenes = pred.o, pred.record, inputs.scenes
    threads = (o.threads or current_threads()) if strips is None else strips.threads
    summary = {
        "task": pred.task,
        "n_pixels": written["n_pixels"],
        "class_histogram": written["class_histogram"],
        "crs": scenes[0].grid.crs.to_string(),
        "resolution": list(layout.grid.res),
        "shape": [layout.grid.height, layout.grid.width],
        "outputs": written["outputs"],
        "options": asdict(o)
        | {
            "chip_size": pred.chip,
            "chip": [pred.chip_h, pred.chip_w],
            "overlap": pred.overlap,
            "batch_size": pred.batch_size,
            "precision": pred.precision,
            "device": str(pred.device),
            "threads": threads,
        },
        "provenance": {
            "model": getattr(model, "uri", None),
            "run_id": rec.get("run_id"),
            "dataset_id": rec.get("dataset_id"),
            "backbone": rec["backbone"]["name"],
            "inputs": [Path(p).name for p in inputs.images],
            "dates": [s.date.isoformat() if s.date else None for s in scenes],
            **(provenance or {}),
        },
        "input": inputs.summary(),
    }
    if "n_chips" in written:
        summary["n_chips"] = written["n_chips"]
    if strips is not None:
        summary["cluster"] = strips.summary()
    if "n_polygons" in written:
        summary["n_polygons"] = written["n_polygons"]
    return summary


__all__ = [
    "PRECISIONS",
    "ChipCache",
    "ChipGrid",
    "OutputSink",
    "PredictError",
    "PredictOptions",
    "Predictor",
    "coarse_grid",
    "crop",
    "fit_chip",
    "ground_resolution",
    "open_predictor",
    "predict_aoi",
    "predict_scene",
    "predicted_tiles",
    "tile_jobs",
    "ramp",
    "read_ahead",
    "resolve_device",
    "resolve_precision",
    "tile_outcome",
    "tiles",
    "to_cog",
]
