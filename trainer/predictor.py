"""A loaded model bound to a scene: input checks, chip geometry, and the per-window work of
prediction (read, forward, blend).

Segmentation and change models give per-pixel probabilities blended over overlapping chips
(:meth:`Predictor.predict_window`); classification models give one class per chip on a coarse
grid whose pixel is one chip (:meth:`Predictor.classify_window`).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, replace

import numpy as np
from rasterio.windows import Window

from datamodules.bands import PREDICT_HINT, map_bands
from datamodules.imagery import Scene, day_number
from datamodules.rasterize import valid_pixels
from datamodules.scene_reader import SceneReader

from .areas import pixel_area_rows
from .backbones.variants import get_entry
from .chips import ChipCache, ChipGrid, crop, fit_chip, ground_resolution, ramp
from .device import batch_chips, emulated_bfloat16, resolve_device, resolve_precision, to_device
from .inference import inference_net, lane, uses_channels_last
from .inputs import PredictError


@dataclass
class PredictOptions:
    # default: for convolutional nets, chips of at most ``max_chip`` sized to the scene (see
    # ``fit_chip``); for ViTs and classification, the training patch
    chip_size: int | None = None
    overlap: int | None = None  # default: the model's recorded overlap
    # default: chips of about max_chip² pixels, as many per pass as ``device.batch_chips`` says
    batch_size: int | None = None
    tile_size: int = 1024  # output tile edge; bounds memory
    max_chip: int = 512
    cache_mb: float = 256  # probabilities of chips shared with later tiles (over it: recomputed)
    polygons: bool = True
    confidence: bool = True
    min_area_m2: float = 0.0
    simplify: float = 0.0  # tolerance in the scene CRS units
    sieve_pixels: int = 0
    confidence_threshold: float | None = None  # pixels below it become nodata
    resolution_tolerance: float = 0.25
    channels_last: bool = True
    # "auto": bfloat16 autocast where the CPU computes bfloat16 natively (AVX512-BF16: about 2x
    # the float32 forward, AMX about 4x; class agreement with float32 above 99.9% as measured
    # in experiments/perf), float32 elsewhere; "fp32" or "bf16" to choose
    precision: str = "auto"
    # "auto": the first CUDA GPU when torch sees one, else the CPU; or "cpu", "cuda", "cuda:N"
    device: str = "auto"
    # torch threads of the forward pass; default: torch's own (all cores) in one process, the
    # worker's share of its machine's cores on a cluster. CPU kernels may sum in another order
    # with another count, so results are bit-identical across runs with the same count
    threads: int | None = None
    mask_clouds: bool = False  # a product's quality band makes its clouds nodata


def check_frames(scenes: list[Scene], task: str, frames: int) -> list[Scene]:
    """The scenes, every later date on the first date's grid (same CRS and resolution: checked
    when the scenes were opened; extents may differ and are warped, nodata outside)."""
    if len(scenes) != frames:
        what = "a before and an after image" if task == "change" else f"{frames} date(s)"
        raise PredictError(
            f"this {task} model takes {what} (one --image per date, oldest first); "
            f"got {len(scenes)} scene(s)"
        )
    return [scenes[0]] + [replace(s, grid=scenes[0].grid) for s in scenes[1:]]


def check_resolution(grid, want, tolerance: float) -> None:
    """Raise unless the scene's ground resolution is within ``tolerance`` of the model's."""
    for have, need in zip(ground_resolution(grid), want, strict=True):
        if abs(have - need) > tolerance * need:
            utm = " --dst-crs <a UTM zone, e.g. EPSG:32633>" if grid.crs.is_geographic else ""
            raise PredictError(
                f"the scene's resolution is {have:.3g} m but the model was trained at "
                f"{need:g} m; resample the scene to {need:g} m first, e.g. with rasterio's "
                f"command (installed with geotune): rio warp IN OUT.tif --res {want[0]:g} "
                f"--resampling bilinear{utm}, or gdalwarp -tr {want[0]:g} {want[1]:g}"
                + (" -t_srs <a UTM zone>" if utm else "")
            )


def nodata_fill(mean, conversion=None) -> np.ndarray:
    """What nodata pixels are set to before the forward pass, in the scene's stored values:
    the model's per-band mean (0 once normalised), as training sets them, so the classes of
    valid pixels near nodata do not depend on how a file encodes nodata."""
    fill = np.asarray(mean, dtype=np.float64)
    if conversion is not None:  # the model's units = stored * gain + bias
        gains, biases = (np.asarray(v, dtype=np.float64) for v in conversion)
        fill = (fill - biases) / gains
    return fill


def as_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` in ``dtype``: rounded and clipped to its range for integers."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


class Predictor:
    """A loaded model bound to a scene: checks inputs, then predicts windows.

    Backbones that take metadata (Clay: date and place; Prithvi-TL: year/day and lon/lat) get
    each chip's centre and the scenes' dates, as in training.
    """

    def __init__(self, model, scenes: list[Scene], options: PredictOptions, conversion=None):
        """``conversion``: per model band ``(gains, biases)`` taking the scenes' stored values
        into the units the model's statistics apply to (:mod:`trainer.inputs`), or None."""
        self.model, self.o = model, options
        rec = self.record = model.record
        self.task = rec.get("task", "segmentation")
        self.scenes = check_frames(scenes, self.task, int(rec.get("num_frames", 1)))
        try:
            self.band_index = map_bands(
                rec["bands"], self.scenes[0].bands, what="scene", hint=PREDICT_HINT
            )
        except ValueError as e:
            raise PredictError(str(e)) from None
        g = self.scenes[0].grid
        check_resolution(g, rec["resolution"], options.resolution_tolerance)
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        self.precision_note = emulated_bfloat16(self.precision, self.device)
        self._chip_geometry(g, options)
        self._prepare_net(options, conversion)
        # a model's statistics; a bare backbone's (embeddings): its spec's, fitted to the sensor
        self.fill = nodata_fill(rec.get("mean") or rec["backbone"]["spec"]["mean"], conversion)
        self.k = rec["num_classes"]
        self.readers = [SceneReader(s) for s in self.scenes]
        self._read_lock = threading.Lock()
        self.nodata = [s.nodata for s in self.scenes]
        self.area_rows = pixel_area_rows(g)
        self._prepare_metadata(g)

    def _chip_geometry(self, g, options: PredictOptions) -> None:
        """Chip size, overlap, chip grids, blending weights and batch size."""
        rec = self.record
        convolutional = get_entry(rec["backbone"]["name"]).convolutional
        if self.task == "classification":
            self.chip = options.chip_size or rec["patch_size"]
            self.overlap = 0
        else:
            self.chip = options.chip_size or (
                options.max_chip if convolutional else rec["patch_size"]
            )
            self.overlap = (
                options.overlap if options.overlap is not None else rec.get("overlap", 32)
            )
        if self.overlap >= self.chip:
            raise PredictError(
                f"overlap {self.overlap} must be smaller than the chip size {self.chip}"
            )
        # chip height and width: as given, or (convolutional nets) fitted to the scene
        self.chip_h = self.chip_w = self.chip
        if self.task != "classification" and not options.chip_size and convolutional:
            multiple = max(rec["backbone"]["spec"].get("out_strides") or [32])
            self.chip_h = fit_chip(g.height, self.chip, self.overlap, multiple)
            self.chip_w = fit_chip(g.width, self.chip, self.overlap, multiple)
        flush = self.task != "classification"
        self.cols = ChipGrid(g.width, self.chip_w, self.overlap, flush)
        self.rows = ChipGrid(g.height, self.chip_h, self.overlap, flush)
        self.weight = ramp(self.chip_h, self.chip_w, self.overlap)
        per_pass = max(1, round(options.max_chip**2 / (self.chip_h * self.chip_w)))
        self.batch_size = options.batch_size or per_pass * batch_chips(self.device, self.precision)

    def _prepare_net(self, options: PredictOptions, conversion) -> None:
        """The network on its device, in its memory format and precision; the input conversion."""
        import torch

        self.channels_last = uses_channels_last(self.model.net, options.channels_last)
        self.net = inference_net(self.model, self.device, self.channels_last, self.precision)
        self.conversion = None
        if conversion is not None:
            gains, biases = (
                torch.tensor(v, dtype=torch.float32, device=self.device) for v in conversion
            )
            self.conversion = gains, biases

    def _prepare_metadata(self, g) -> None:
        """Dates and the lon/lat transformer, for backbones that take metadata."""
        import torch

        self._date_ord = torch.tensor(  # with the time of day when the files give it
            [[day_number(s.date) for s in self.scenes]], dtype=torch.float64
        )
        self._lonlat = None
        if hasattr(getattr(self.net, "backbone", None), "make_metadata"):
            from pyproj import Transformer

            self._lonlat = Transformer.from_crs(g.crs.to_wkt(), "EPSG:4326", always_xy=True)
            if any(s.date is None for s in self.scenes):
                warnings.warn(
                    f"{self.record['backbone']['name']} encodes the acquisition date, and the "
                    "scene does not say it; predicting with the date unknown. Pass --date "
                    "YYYY-MM-DD.",
                    stacklevel=3,
                )

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def read(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """Model bands of every date for a window (``[C, h, w]`` or ``[C, T, h, w]``); validity."""
        frames, valid = [], np.ones((win.height, win.width), dtype=bool)
        for reader, nd in zip(self.readers, self.nodata, strict=True):
            with self._read_lock:  # a GDAL dataset is read by one thread at a time
                data = reader.read(win)[self.band_index]
            valid &= valid_pixels(data, nd)
            frames.append(data)  # converted to float32 chip by chip
        if not valid.all():  # whatever the file's nodata value (0, -9999, NaN), the same input
            for data in frames:
                data[:, ~valid] = as_dtype(self.fill, data.dtype)[:, None]
        x = np.stack(frames, 1) if len(frames) > 1 else frames[0]
        return x, valid

    def metadata(self, origins: list[tuple[int, int]]) -> dict:
        """The forward's keyword arguments for chips at ``(row, col)``: dates, centre lon/lat."""
        import torch

        if self._lonlat is None:
            return {}
        t = self.scenes[0].grid.transform
        hh, hw = self.chip_h / 2, self.chip_w / 2
        xs, ys = zip(*[t @ (c + hw, r + hh) for r, c in origins], strict=True)
        lon, lat = self._lonlat.transform(np.asarray(xs), np.asarray(ys))
        lonlat = torch.from_numpy(np.stack([lon, lat], 1).astype(np.float32))
        return self.net.metadata_for(self._date_ord.expand(len(origins), -1), lonlat)

    def forward(self, x: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
        """Probabilities for a batch of chips: ``[B, K, h, w]`` (dense) or ``[B, K]`` (classification)."""
        import torch

        from .heads import probabilities

        with torch.inference_mode():
            logits = self.run(x, origins)
            probs = probabilities(logits, bool(self.record.get("multi_label")))
            return probs.cpu().numpy()

    def run(self, x: np.ndarray, origins: list[tuple[int, int]]):
        """The network's float32 output for a batch of chips at ``origins`` (logits; embeddings
        for :class:`trainer.embed.Embedder`), on the device, whatever the forward's precision."""
        import torch

        t = torch.from_numpy(x).to(self.device)
        if self.conversion is not None:
            shape = (1, -1) + (1,) * (t.dim() - 2)
            t = t * self.conversion[0].view(shape) + self.conversion[1].view(shape)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        meta = to_device(self.metadata(origins), self.device)
        with torch.inference_mode():
            bf16 = self.precision == "bf16"
            with torch.autocast(self.device.type, torch.bfloat16, enabled=bf16), lane(self.net):
                out = self.net(t, **meta)
            return out.float()

    def chips_of(self, tile: Window) -> list[tuple[int, int]]:
        return [
            (r, c)
            for r in self.rows.touching(tile.row_off, tile.row_off + tile.height)
            for c in self.cols.touching(tile.col_off, tile.col_off + tile.width)
        ]

    def batches(self, chips: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """The batches that compute ``chips``. A chip runs in a batch of its owner, the first
        output tile (``tile_size``, row-major) it touches: the owner's chips in order,
        ``batch_size`` at a time. So its probabilities depend on (model, chip) only, not on
        which tile or worker asks, nor on what is cached (a convolution may round differently
        in another batch)."""
        t, b = self.o.tile_size, self.batch_size
        out, seen = [], set()
        for r, c in chips:
            rows = [rr for rr in self.rows.starts if rr // t == r // t]
            cols = [cc for cc in self.cols.starts if cc // t == c // t]
            owned = [(rr, cc) for rr in rows for cc in cols]
            key = (r // t, c // t, owned.index((r, c)) // b)
            if key not in seen:
                seen.add(key)
                out.append(owned[key[2] * b : (key[2] + 1) * b])
        return out

    def predict_window(self, tile: Window, data=None, cache: ChipCache | None = None) -> dict:
        """Probabilities for one output tile; ``data`` is what :meth:`read_for` returned.

        ``cache`` (optional) holds the probabilities of chips that earlier tiles computed and
        this one shares; the result is the same with or without it, chips are just not run twice.
        """
        data = data if data is not None else self.read_for(tile, cache)
        return self.blend(tile, self.chip_probs(tile, data, cache), data)

    def chip_probs(self, tile: Window, data, cache: ChipCache | None = None) -> dict:
        """The probabilities of every chip touching ``tile``, run or (``cache``) kept."""
        x, _, origin = data
        chips = self.chips_of(tile)
        probs = {} if cache is None else {rc: cache.get(rc) for rc in chips if rc in cache}
        todo = {rc for rc in chips if rc not in probs}
        for batch in self.batches([rc for rc in chips if rc in todo]):
            for rc, p in zip(batch, self.forward(self.stack(x, origin, batch), batch), strict=True):
                if rc in todo:
                    probs[rc] = p
                if cache is not None:
                    cache.put(rc, p)
        return probs

    def blend(self, tile: Window, probs: dict, data) -> dict:
        """The tile's probabilities: the chips' weighted by their ramps, summed and normalised,
        in the order the chips lie (whatever was cached: identical sums); and its validity."""
        _, valid_src, (r0, c0) = data
        a_r, a_c = tile.row_off, tile.col_off
        ch, cw = self.chip_h, self.chip_w
        acc = np.zeros((self.k, tile.height, tile.width), dtype=np.float32)
        wsum = np.zeros((tile.height, tile.width), dtype=np.float32)
        scratch = np.empty((self.k, ch, cw), dtype=np.float32)
        for r, c in self.chips_of(tile):
            # intersect chip [r, r+ch) x [c, c+cw) with the tile
            y0, y1 = max(r, a_r), min(r + ch, a_r + tile.height)
            x0, x1 = max(c, a_c), min(c + cw, a_c + tile.width)
            w = self.weight[y0 - r : y1 - r, x0 - c : x1 - c]
            part = scratch[:, : y1 - y0, : x1 - x0]
            np.multiply(probs[(r, c)][:, y0 - r : y1 - r, x0 - c : x1 - c], w, out=part)
            acc[:, y0 - a_r : y1 - a_r, x0 - a_c : x1 - a_c] += part
            wsum[y0 - a_r : y1 - a_r, x0 - a_c : x1 - a_c] += w
        prob = np.divide(acc, np.maximum(wsum, 1e-12, out=wsum), out=acc)
        valid = valid_src[a_r - r0 : a_r - r0 + tile.height, a_c - c0 : a_c - c0 + tile.width]
        return {"prob": prob, "valid": valid}

    def stack(self, x: np.ndarray, origin: tuple[int, int], batch) -> np.ndarray:
        """The float32 chips at ``batch``'s origins, one array."""
        return np.stack([self._chip(x, origin, r, c) for r, c in batch])

    def _chip(self, x: np.ndarray, origin: tuple[int, int], r: int, c: int) -> np.ndarray:
        """One chip as float32, from the read region when it holds it, else read on its own."""
        (r0, c0), (h, w) = origin, x.shape[-2:]
        g = self.scenes[0].grid
        rows_in = r >= r0 and min(r + self.chip_h, g.height) <= r0 + h
        cols_in = c >= c0 and min(c + self.chip_w, g.width) <= c0 + w
        if rows_in and cols_in:
            return crop(x, r - r0, c - c0, self.chip_h, self.chip_w)
        own, _ = self.read(
            Window(c, r, min(self.chip_w, g.width - c), min(self.chip_h, g.height - r))
        )
        return crop(own, 0, 0, self.chip_h, self.chip_w)

    def classify_window(self, tile: Window, data=None) -> dict:
        """One class per chip of a chip-aligned tile, as a block of the coarse grid.

        A chip counts (is not nodata) when at least half of its pixels inside the scene are
        valid; its class covers its valid pixels in the pixel counts and areas.
        """
        data = data if data is not None else self.read_for(tile)
        x, valid_src, (r0, c0) = data
        chips = self.chips_of(tile)
        hc = len(self.rows.touching(tile.row_off, tile.row_off + tile.height))
        wc = len(chips) // hc
        probs = []
        for i in range(0, len(chips), self.batch_size):
            batch = chips[i : i + self.batch_size]
            probs.append(self.forward(self.stack(x, (r0, c0), batch), batch))
        prob = np.concatenate(probs).reshape(hc, wc, self.k).transpose(2, 0, 1)
        pixels = np.zeros((hc, wc), dtype=np.int64)
        area = np.zeros((hc, wc), dtype=np.float64)
        inside = np.zeros((hc, wc), dtype=np.int64)
        for n, (r, c) in enumerate(chips):
            v = valid_src[r - r0 : r - r0 + self.chip, c - c0 : c - c0 + self.chip]
            i, j = divmod(n, wc)
            pixels[i, j] = v.sum()
            inside[i, j] = v.size
            area[i, j] = float(v.sum(1) @ self.area_rows[r : r + v.shape[0]])
        valid = pixels * 2 >= np.maximum(inside, 1)
        return {"prob": prob, "valid": valid, "pixels": pixels, "area": area}

    def read_for(self, tile: Window, cache: ChipCache | None = None):
        """Read the union of the chips touching ``tile`` that ``cache`` will not hold (what
        ``predict_window`` needs), in the scene's own data type."""
        g = self.scenes[0].grid
        r0, c0 = tile.row_off, tile.col_off  # the tile itself, for the validity mask
        r1, c1 = r0 + tile.height, c0 + tile.width
        for r, c in self.chips_of(tile):
            if cache is None or not cache.expects((r, c), tile):
                r0, c0 = min(r0, r), min(c0, c)
                r1, c1 = (
                    max(r1, min(r + self.chip_h, g.height)),
                    max(c1, min(c + self.chip_w, g.width)),
                )
        x, valid = self.read(Window(c0, r0, c1 - c0, r1 - r0))
        return x, valid, (r0, c0)


def open_predictor(model, images, *, bands=None, sensor=None, dates=None, options):
    """The scene's files prepared for the model (:mod:`trainer.inputs`: sensor, nodata, units,
    date order) and bound to it: the :class:`Predictor` and what was decided about the input."""
    from .inputs import prepare_inputs

    inputs = prepare_inputs(model.record, list(images), bands, sensor, dates, options.mask_clouds)
    pred = Predictor(model, inputs.scenes, options, inputs.conversion)
    if pred.precision_note:  # bf16 asked for where the CPU emulates it: said in the summary
        inputs.notes.append(pred.precision_note)
    return pred, inputs
