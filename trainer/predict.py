"""Streaming tiled prediction: a scene in; class COG, confidence COG, polygons, class areas out.

One implementation for the CLI, the demo, evaluation and the HTTP service. The scene is cut into
output tiles (``tile_size``); each tile is a pure function of (model, window): the chips of a
global chip grid that touch the tile are read, run in batches, blended with a linear weight
ramp over the overlap, cropped to the tile and written. Memory is bounded by the tile size, not
the scene, and the result does not depend on the tiling (the same chips cover every pixel), so
independent workers can each take a list of tiles (``tiles`` + ``Predictor.predict_window``).
Within one pass, a chip shared by neighbouring tiles runs once (``ChipCache``).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio import Affine
from rasterio.windows import Window

from datamodules.bands import map_bands
from datamodules.imagery import Grid, Scene, SceneReader, day_number

from .areas import areal_scale, class_histogram, pixel_area_rows
from .backbones.variants import get_entry
from .inference import inference_net, lane, uses_channels_last
from .inputs import PredictError
from .polygons import PolygonCollector


@dataclass
class PredictOptions:
    # default: for convolutional nets, chips of at most ``max_chip`` sized to the scene (see
    # ``fit_chip``); for ViTs and classification, the training patch
    chip_size: int | None = None
    overlap: int | None = None  # default: the model's recorded overlap
    batch_size: int | None = None  # default: about max_chip² pixels per batch (1 chip of 512²)
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
    # "auto": bfloat16 autocast where the CPU computes bfloat16 natively (AVX512-BF16 or AMX:
    # about 2x the float32 forward, class agreement with float32 above 99.9% as measured in
    # experiments/perf), float32 elsewhere; "fp32" or "bf16" to choose
    precision: str = "auto"
    # "auto": the first CUDA GPU when torch sees one, else the CPU; or "cpu", "cuda", "cuda:N"
    device: str = "auto"
    # torch threads of the forward pass; default: torch's own (all cores) in one process, the
    # worker's share of its machine's cores on a cluster. CPU kernels may sum in another order
    # with another count, so results are bit-identical across runs with the same count
    threads: int | None = None


@dataclass
class ChipGrid:
    """Global chip origins along one axis: stride ``chip - overlap``, last chip flush with the edge."""

    length: int
    chip: int
    overlap: int
    flush: bool = True  # False: chips at multiples of ``chip``, the last one padded past the edge
    starts: list[int] = field(init=False)

    def __post_init__(self):
        if not self.flush:
            self.starts = list(range(0, self.length, self.chip))
            return
        if self.length <= self.chip:
            self.starts = [0]
            return
        stride = self.chip - self.overlap
        starts = list(range(0, self.length - self.chip + 1, stride))
        if starts[-1] + self.chip < self.length:
            starts.append(self.length - self.chip)
        self.starts = starts

    def touching(self, a: int, b: int) -> list[int]:
        return [s for s in self.starts if s < b and s + self.chip > a]


def ramp(h: int, w: int, overlap: int) -> np.ndarray:
    """2-D blending weights of an ``h`` x ``w`` chip: 1 in the middle, a linear ramp to ~0
    across the overlap."""
    r = max(overlap, 1)

    def one(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)
        return np.clip((d + 0.5) / r, 1e-3, 1.0)

    return np.outer(one(h), one(w))


def fit_chip(length: int, max_chip: int, overlap: int, multiple: int) -> int:
    """The smallest chip (a multiple of ``multiple``) that covers ``length`` with as few chips of
    at most ``max_chip`` as possible, overlapping by ``overlap``: no pixels computed in vain.

    A 3000-pixel side with 512-pixel chips overlapping by 32 takes 7 chips, the last flush with
    the edge (3584 pixels run through the network); fitted, 7 chips of 480 (3360 pixels).
    """
    if length <= max_chip:
        return -(-length // multiple) * multiple
    n = -(-(length - overlap) // (max_chip - overlap))
    need = -(-(length + (n - 1) * overlap) // n)
    return min(-(-need // multiple) * multiple, max_chip)


def tiles(width: int, height: int, tile_size: int) -> list[Window]:
    return [
        Window(c, r, min(tile_size, width - c), min(tile_size, height - r))
        for r in range(0, height, tile_size)
        for c in range(0, width, tile_size)
    ]


class Predictor:
    """A loaded model bound to a scene: checks inputs, then predicts windows.

    Segmentation and change models give per-pixel probabilities blended over overlapping chips
    (:meth:`predict_window`); classification models give one class per chip on a coarse grid
    whose pixel is one chip (:meth:`classify_window`). Backbones that take metadata (Clay: date
    and place; Prithvi-TL: year/day and lon/lat) get each chip's centre and the scenes' dates,
    as in training.
    """

    def __init__(self, model, scenes: list[Scene], options: PredictOptions, conversion=None):
        """``conversion``: per model band ``(gains, biases)`` taking the scenes' stored values
        into the units the model's statistics apply to (:mod:`trainer.inputs`), or None."""
        import torch

        self.model, self.o = model, options
        rec = model.record
        self.record = rec
        self.task = rec.get("task", "segmentation")
        frames = int(rec.get("num_frames", 1))
        if len(scenes) != frames:
            what = "a before and an after image" if self.task == "change" else f"{frames} date(s)"
            raise PredictError(
                f"this {self.task} model takes {what} (one --image per date, oldest first); "
                f"got {len(scenes)} scene(s)"
            )
        scene = scenes[0]
        # every later date is read onto the first date's grid (same CRS and resolution: checked
        # when the scenes were opened; extents may differ and are warped, nodata outside)
        self.scenes = [scene] + [replace(s, grid=scene.grid) for s in scenes[1:]]
        try:
            idx = map_bands(rec["bands"], scene.bands, any_bands=False)
        except ValueError as e:
            raise PredictError(str(e)) from None
        self.band_index = idx
        g = scene.grid
        res = ground_resolution(g)
        want = rec["resolution"]
        for have, need in zip(res, want, strict=True):
            if abs(have - need) > options.resolution_tolerance * need:
                how = (
                    f"gdalwarp -tr {want[0]:g} {want[1]:g} -t_srs <a UTM zone>"
                    if g.crs.is_geographic
                    else f"gdalwarp -tr {want[0]:g} {want[1]:g}"
                )
                raise PredictError(
                    f"the scene's resolution is {have:.3g} m but the model was trained at "
                    f"{need:g} m; resample the scene to {need:g} m (e.g. {how}) first"
                )
        spec = rec["backbone"]["spec"]
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
            multiple = max(spec.get("out_strides") or [32])
            self.chip_h = fit_chip(g.height, self.chip, self.overlap, multiple)
            self.chip_w = fit_chip(g.width, self.chip, self.overlap, multiple)
        flush = self.task != "classification"
        self.cols = ChipGrid(g.width, self.chip_w, self.overlap, flush)
        self.rows = ChipGrid(g.height, self.chip_h, self.overlap, flush)
        self.weight = ramp(self.chip_h, self.chip_w, self.overlap)
        self.batch_size = options.batch_size or max(
            1, round(options.max_chip**2 / (self.chip_h * self.chip_w))
        )
        self.channels_last = uses_channels_last(model.net, options.channels_last)
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        self.net = inference_net(model, self.device, self.channels_last, self.precision)
        self.k = rec["num_classes"]
        self.conversion = None
        if conversion is not None:
            gains, biases = (
                torch.tensor(v, dtype=torch.float32, device=self.device) for v in conversion
            )
            self.conversion = gains, biases
        self.readers = [SceneReader(s) for s in self.scenes]
        self._read_lock = threading.Lock()
        self.nodata = [s.nodata for s in self.scenes]
        self.area_rows = pixel_area_rows(g)
        self._date_ord = torch.tensor(  # with the time of day when the files give it
            [[day_number(s.date) for s in self.scenes]], dtype=torch.float64
        )
        backbone = getattr(self.net, "backbone", None)
        self._lonlat = None
        if hasattr(backbone, "make_metadata"):
            from pyproj import Transformer

            self._lonlat = Transformer.from_crs(g.crs.to_wkt(), "EPSG:4326", always_xy=True)
            if any(s.date is None for s in self.scenes):
                warnings.warn(
                    f"{rec['backbone']['name']} encodes the acquisition date, and the scene does "
                    "not say it; predicting with the date unknown. Pass --date YYYY-MM-DD.",
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
            if nd is not None:
                valid &= ~np.all(data == nd, axis=0)
            if np.issubdtype(data.dtype, np.floating):
                valid &= np.all(np.isfinite(data), axis=0)
            frames.append(data)  # converted to float32 chip by chip
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
        meta = _to_device(self.metadata(origins), self.device)
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
        x, valid_src, (r0, c0) = data
        a_r, a_c = tile.row_off, tile.col_off
        ch, cw = self.chip_h, self.chip_w
        chips = self.chips_of(tile)
        probs = {} if cache is None else {rc: cache.get(rc) for rc in chips if rc in cache}
        todo = {rc for rc in chips if rc not in probs}
        for batch in self.batches([rc for rc in chips if rc in todo]):
            arr = np.stack([self._chip(x, (r0, c0), r, c) for r, c in batch])
            for rc, p in zip(batch, self.forward(arr, batch), strict=True):
                if rc in todo:
                    probs[rc] = p
                if cache is not None:
                    cache.put(rc, p)
        acc = np.zeros((self.k, tile.height, tile.width), dtype=np.float32)
        wsum = np.zeros((tile.height, tile.width), dtype=np.float32)
        for r, c in chips:  # the same order whatever was cached: identical sums
            p = probs[(r, c)]
            # intersect chip [r, r+ch) x [c, c+cw) with the tile
            y0, y1 = max(r, a_r), min(r + ch, a_r + tile.height)
            x0, x1 = max(c, a_c), min(c + cw, a_c + tile.width)
            w = self.weight[y0 - r : y1 - r, x0 - c : x1 - c]
            acc[:, y0 - a_r : y1 - a_r, x0 - a_c : x1 - a_c] += (
                p[:, y0 - r : y1 - r, x0 - c : x1 - c] * w
            )
            wsum[y0 - a_r : y1 - a_r, x0 - a_c : x1 - a_c] += w
        prob = acc / np.maximum(wsum, 1e-12)
        valid = valid_src[a_r - r0 : a_r - r0 + tile.height, a_c - c0 : a_c - c0 + tile.width]
        return {"prob": prob, "valid": valid}

    def _chip(self, x: np.ndarray, origin: tuple[int, int], r: int, c: int) -> np.ndarray:
        """One chip as float32, from the read region when it holds it, else read on its own."""
        (r0, c0), (h, w) = origin, x.shape[-2:]
        g = self.scenes[0].grid
        rows_in = r >= r0 and min(r + self.chip_h, g.height) <= r0 + h
        cols_in = c >= c0 and min(c + self.chip_w, g.width) <= c0 + w
        if rows_in and cols_in:
            return _crop(x, r - r0, c - c0, self.chip_h, self.chip_w)
        own, _ = self.read(
            Window(c, r, min(self.chip_w, g.width - c), min(self.chip_h, g.height - r))
        )
        return _crop(own, 0, 0, self.chip_h, self.chip_w)

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
            probs.append(
                self.forward(np.stack([self._chip(x, (r0, c0), r, c) for r, c in batch]), batch)
            )
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
        return {"prob": prob, "valid": pixels * 2 >= np.maximum(inside, 1), "pixels": pixels,
                "area": area}  # fmt: skip

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


class ChipCache:
    """Chip probabilities shared between neighbouring tiles of one pass (row-major tile order).

    A chip is kept when it touches a later tile and dropped once the last tile it touches is
    done, so a chip on a tile seam runs once; the cache holds at most about one row of chips
    across the scene, and past ``max_bytes`` chips are not kept (later tiles run them again).
    """

    def __init__(
        self, pred: Predictor, tile_size: int, max_bytes: int, first: Window | None = None
    ):
        """``first``: the pass's first tile, when it does not start at the top (a strip)."""
        g = pred.scenes[0].grid
        self.pred, self.t, self.max_bytes = pred, tile_size, max_bytes
        self.ncols = -(-g.width // tile_size)
        self.size = (g.height, g.width)
        self.items: dict[tuple[int, int], np.ndarray] = {}
        self.bytes = 0
        self.start = self.current = (
            0 if first is None else self._index(first.row_off, first.col_off)
        )

    def _index(self, r: int, c: int) -> int:
        return (r // self.t) * self.ncols + c // self.t

    def last(self, rc) -> int:
        r, c = rc
        h, w = self.size
        return self._index(min(r + self.pred.chip_h, h) - 1, min(c + self.pred.chip_w, w) - 1)

    def expects(self, rc, tile: Window) -> bool:
        """Whether the chip ran for an earlier tile than ``tile`` (then it is here, if it fit)."""
        return self.start <= self._index(*rc) < self._index(tile.row_off, tile.col_off) and (
            self.bytes < self.max_bytes or rc in self.items
        )

    def __contains__(self, rc) -> bool:
        return rc in self.items

    def get(self, rc) -> np.ndarray:
        return self.items[rc]

    def put(self, rc, prob: np.ndarray) -> None:
        if rc in self.items:
            return
        if self.last(rc) > self.current and self.bytes + prob.nbytes <= self.max_bytes:
            self.items[rc] = prob
            self.bytes += prob.nbytes

    def done(self, tile: Window) -> None:
        """``tile`` is finished: drop the chips no later tile touches."""
        self.current = self._index(tile.row_off, tile.col_off) + 1
        for rc in [rc for rc in self.items if self.last(rc) < self.current]:
            self.bytes -= self.items.pop(rc).nbytes


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device=None) -> str:
    """The forward pass's precision, fp32 or bf16; auto is bf16 where the CPU has native bfloat16
    (AVX512-BF16 or AMX), or on a CUDA GPU that supports it."""
    import torch

    if precision not in PRECISIONS:
        raise PredictError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if device is not None and device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = [
        getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return "bf16" if any(f is not None and f() for f in native) else "fp32"


def resolve_device(device: str):
    """``auto``: the first CUDA GPU torch sees, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise PredictError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise PredictError(
                f"device {device!r}: torch sees {n} CUDA GPU(s) here; use --device cpu (or auto)"
            )
    return dev


def _to_device(obj, device):
    """Tensors in (nested dicts/lists of) metadata, moved to ``device``."""
    if hasattr(obj, "to") and hasattr(obj, "device"):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def ground_resolution(grid) -> tuple[float, float]:
    """Pixel size in metres on the ground (x, y) at the scene's centre: geodesic for geographic
    CRSs, the map size over the projection's scale there for projected ones."""
    t = grid.transform
    if not grid.crs.is_geographic:
        unit = grid.crs.linear_units_factor[1] if grid.crs.is_projected else 1.0
        k = 1.0
        if grid.crs.is_projected:
            x, y = t @ (grid.width / 2, grid.height / 2)
            k = float(np.sqrt(areal_scale(grid.crs, np.array([x]), np.array([y]))[0]))
        return abs(t.a) * unit / k, abs(t.e) * unit / k
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    lon, lat = t @ (grid.width / 2, grid.height / 2)
    dx = geod.inv(lon, lat, lon + abs(t.a), lat)[2]
    dy = geod.inv(lon, lat, lon, lat + abs(t.e))[2]
    return dx, dy


def _crop(x: np.ndarray, r: int, c: int, h: int, w: int) -> np.ndarray:
    """An ``h``x``w`` float32 chip from the read region, padded where the scene ends."""
    sub = x[..., r : r + h, c : c + w].astype(np.float32)
    ph, pw = h - sub.shape[-2], w - sub.shape[-1]
    if ph or pw:
        pad = [(0, 0)] * (sub.ndim - 2) + [(0, ph), (0, pw)]
        sub = np.pad(
            sub, pad, mode="reflect" if ph < sub.shape[-2] and pw < sub.shape[-1] else "edge"
        )
    return sub


def _profile(grid, dtype: str, nodata) -> dict:
    return {
        "driver": "GTiff", "crs": grid.crs, "transform": grid.transform, "width": grid.width,
        "height": grid.height, "count": 1, "dtype": dtype, "nodata": nodata, "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "DEFLATE", "bigtiff": "IF_SAFER",
    }  # fmt: skip


def to_cog(src: Path, dst: Path, resampling: str) -> None:
    """Copy a finished tiled GeoTIFF to a Cloud-Optimized GeoTIFF (GDAL's COG driver)."""
    from rasterio.shutil import copy

    copy(
        src,
        dst,
        driver="COG",
        compress="DEFLATE",
        blocksize=512,
        overview_resampling=resampling,
        resampling=resampling,
        bigtiff="IF_SAFER",
    )


def _hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


def open_predictor(model, images, *, bands=None, sensor=None, dates=None, options):
    """The scene's files prepared for the model (:mod:`trainer.inputs`: sensor, nodata, units,
    date order) and bound to it: the :class:`Predictor` and what was decided about the input."""
    from .inputs import prepare_inputs

    inputs = prepare_inputs(model.record, list(images), bands, sensor, dates)
    return Predictor(model, inputs.scenes, options, inputs.conversion), inputs


def tile_outcome(pred: Predictor, res: dict) -> dict:
    """What the outputs need of a predicted tile: ``classes`` (uint8, the output nodata where
    not valid), ``conf`` (the top probability, float32), ``valid``; for classification also
    ``pixels`` and ``area`` per chip."""
    o, nod = pred.o, int(pred.record.get("output_nodata", 255))
    prob, valid = res["prob"], res["valid"]
    classes = prob.argmax(0).astype(np.uint8)
    conf = prob.max(0)
    if o.confidence_threshold is not None:
        valid = valid & (conf >= o.confidence_threshold)
    classes[~valid] = nod
    return {"classes": classes, "conf": conf, "valid": valid} | {
        k: res[k] for k in ("pixels", "area") if k in res
    }


def predicted_tiles(pred: Predictor, windows, cache, bar=None, threads=None):
    """``(window, tile_outcome)`` for each window, in order; reading the next window overlaps
    running the model on this one. ``cache``: a :class:`ChipCache` (dense tasks) or None."""
    with torch_threads(threads), ThreadPoolExecutor(1) as reader:
        nxt = reader.submit(pred.read_for, windows[0], cache)
        for i, win in enumerate(windows):
            data = nxt.result()
            if i + 1 < len(windows):
                nxt = reader.submit(pred.read_for, windows[i + 1], cache)
            if pred.task == "classification":
                res = pred.classify_window(win, data)
            else:
                res = pred.predict_window(win, data, cache)
                cache.done(win)
            del data
            out = tile_outcome(pred, res)
            if bar is not None:
                bar.update(1)
            yield win, out


class Progress:
    """Tiles predicted: a tqdm bar (when ``show``) and ``report(done, total)`` (at most twice a
    second, and at the end)."""

    def __init__(self, total: int, show: bool, report=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="predict", unit="tile", disable=not show)
        self.total, self.done, self.report, self._last = total, 0, report, 0.0
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.bar.update(n)
            if self.report is not None and time.monotonic() - self._last > 0.5:
                self._last = time.monotonic()
                self.report(self.done, self.total)

    def close(self) -> None:
        self.bar.close()
        if self.report is not None:
            self.report(self.done, self.total)


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` for the block (nothing changes for None)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


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
) -> dict:
    """Predict a scene to ``out_dir``: classes.tif, confidence.tif (COGs), polygons.geojson, summary.json.

    ``images``: one file, or band files, or one file per date (change and multi-temporal
    models; put oldest first when their dates are known). ``sensor`` defaults to the model's;
    what was decided about sensor, nodata, units and date order is the summary's ``input``
    (:mod:`trainer.inputs`). Classification models give a coarse raster, one pixel per chip.
    ``cluster``: a Dask cluster (:mod:`trainer.cluster`) whose workers predict strips of tile
    rows (:mod:`trainer.strips`); the outputs are the same. ``report(tiles_done, tiles_total)``
    is called as tiles are predicted.
    """
    o = options or PredictOptions()
    rec = model.record
    t0 = time.time()
    given = list(images)  # as the caller gave them: a cluster's workers prepare them the same way
    pred, inputs = open_predictor(model, given, bands=bands, sensor=sensor, dates=dates, options=o)
    scenes, images = inputs.scenes, inputs.images
    if provenance and "inputs" in provenance:  # the caller's names of the files, per date
        provenance = provenance | {"inputs": inputs.reordered(list(provenance["inputs"]))}
    classify = pred.task == "classification"
    grid = scenes[0].grid
    out_grid = coarse_grid(grid, pred.chip) if classify else grid
    tile = max(pred.chip, o.tile_size // pred.chip * pred.chip) if classify else o.tile_size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nod = int(rec.get("output_nodata", 255))
    nk = len(rec["classes"])
    counts = np.zeros(nk, dtype=np.int64)
    area = np.zeros(nk, dtype=np.float64)
    n_chips = np.zeros(nk, dtype=np.int64)
    clip = shapely.box(*grid.bounds) if classify else None
    collector = (
        PolygonCollector(
            out_grid,
            rec["classes"],
            sieve=o.sieve_pixels,
            clip=clip,
            min_area_m2=o.min_area_m2,
            simplify=o.simplify,
        )  # fmt: skip
        if o.polygons
        else None
    )
    windows = tiles(grid.width, grid.height, tile)
    # GDAL's block cache is a share of RAM by default; bound it so memory stays flat
    with rasterio.Env(GDAL_CACHEMAX=64), tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp = Path(tmp)
        cls_tmp = rasterio.open(tmp / "classes.tif", "w", **_profile(out_grid, "uint8", nod))
        conf_tmp = (
            rasterio.open(tmp / "confidence.tif", "w", **_profile(out_grid, "uint8", 255))
            if o.confidence
            else None
        )
        cls_tmp.write_colormap(1, {c["id"]: _hex_to_rgba(c["color"]) for c in rec["classes"]})
        cache = None if classify else ChipCache(pred, tile, int(o.cache_mb * 2**20))

        def finish(win: Window, res: dict) -> None:
            """Write and count one predicted tile (see :func:`tile_outcome`), add its polygons."""
            classes, conf, valid = res["classes"], res["conf"], res["valid"]
            if classify:
                owin = Window(
                    win.col_off // pred.chip, win.row_off // pred.chip, *classes.shape[::-1]
                )
            else:
                owin = win
            cls_tmp.write(classes, 1, window=owin)
            if conf_tmp is not None:
                c8 = np.round(conf * 100).astype(np.uint8)
                c8[~valid] = 255
                conf_tmp.write(c8, 1, window=owin)
            if classify:
                for k in range(nk):
                    sel = (classes == k) & valid
                    counts[k] += int(res["pixels"][sel].sum())
                    area[k] += float(res["area"][sel].sum())
                    n_chips[k] += int(sel.sum())
            else:
                counts[:] += np.bincount(classes[valid].ravel(), minlength=nk)[:nk]
                rows_area = pred.area_rows[win.row_off : win.row_off + win.height]
                for k in range(nk):
                    area[k] += float(((classes == k) & valid).sum(1) @ rows_area)
            if collector is not None:
                collector.add(owin, classes, conf, valid, nod)

        bar = Progress(len(windows), progress, report)
        if cluster is None:
            source = predicted_tiles(pred, windows, cache, bar, threads=o.threads)
        else:
            from .strips import StripRun

            scene = {"bands": bands, "sensor": sensor, "dates": dates}
            strips = StripRun(cluster, model, given, scene, pred, windows, tile, tmp)
            source = strips.tiles(bar)
        # finishing a tile (writing, counting, polygons) overlaps predicting the next ones
        with ThreadPoolExecutor(1) as finisher:
            done = None
            for win, res in source:
                if done is not None:
                    done.result()
                done = finisher.submit(finish, win, res)
            if done is not None:
                done.result()
        bar.close()
        cls_tmp.close()
        if conf_tmp is not None:
            conf_tmp.close()
        # the COG copies (GDAL, GIL released) and the last polygons (mostly GEOS) at once
        with ThreadPoolExecutor(3) as pool:
            jobs = [pool.submit(to_cog, tmp / "classes.tif", out / "classes.tif", "mode")]
            if conf_tmp is not None:
                jobs.append(
                    pool.submit(to_cog, tmp / "confidence.tif", out / "confidence.tif", "average")
                )
            polygons = pool.submit(collector.write, out / "polygons.geojson") if collector else None
            for job in jobs:
                job.result()
            n_polygons = polygons.result() if polygons else None
    pred.close()
    histogram = class_histogram(rec["classes"], counts, area)
    if classify:
        for row in histogram:
            row["chips"] = int(n_chips[row["id"]])
    summary = {
        "task": pred.task,
        "n_pixels": int(counts.sum()),
        "class_histogram": histogram,
        "crs": grid.crs.to_string(),
        "resolution": list(out_grid.res),
        "shape": [out_grid.height, out_grid.width],
        "outputs": {"classes": "classes.tif"}
        | ({"confidence": "confidence.tif"} if o.confidence else {}),
        "options": asdict(o)
        | {
            "chip_size": pred.chip,
            "chip": [pred.chip_h, pred.chip_w],
            "overlap": pred.overlap,
            "batch_size": pred.batch_size,
            "precision": pred.precision,
            "device": str(pred.device),
            "threads": o.threads or _torch_threads() if cluster is None else strips.threads,
        },  # fmt: skip
        "provenance": {
            "model": getattr(model, "uri", None),
            "run_id": rec.get("run_id"),
            "dataset_id": rec.get("dataset_id"),
            "backbone": rec["backbone"]["name"],
            "inputs": [Path(p).name for p in images],
            "dates": [s.date.isoformat() if s.date else None for s in scenes],
            **(provenance or {}),
        },
        "input": inputs.summary(),
    }
    if classify:
        summary["n_chips"] = int(n_chips.sum())
    if cluster is not None:
        summary["cluster"] = strips.summary()
    if collector is not None:
        summary["n_polygons"] = n_polygons
        summary["outputs"]["polygons"] = "polygons.geojson"
    summary["seconds"] = round(time.time() - t0, 2)  # everything, polygons included
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def coarse_grid(grid, chip: int):
    """The grid whose pixel is one ``chip``×``chip`` block (the last row/column may overhang)."""
    return Grid(
        grid.crs,
        grid.transform @ Affine.scale(chip),
        -(-grid.width // chip),
        -(-grid.height // chip),
    )


__all__ = ["PredictOptions", "Predictor", "predict_scene", "tiles", "ChipGrid", "PredictError"]
