"""The per-pixel median of a composite: ``np.nanmedian`` against the sort-based median of
``datamodules.composite_write.nanmedian`` (issue 18), measured in one run.

1. The median step alone on stacks a composite makes: 512 x 512 px x 6 bands with 24 and with
   6 observations, about 40% of each observation's pixels cloudy (NaN). Both functions must give
   the same numbers (checked, NaN where every observation is cloudy).
2. A whole composite (``composite_for_aoi``) of 24 Landsat-like scenes (6 bands, 512 x 512 px,
   COGs on disk, a static catalog) with each median function, so the share of the time the
   median takes next to reading is seen.
3. The same composite in 16 blocks of 128 px with each block's median taken while the next
   block is read (``Writer._read_ahead``, what geotune does) against reading and taking the
   median in turn; both must write the same pixels.

    .venv/bin/python experiments/composite_median/bench.py   # → experiments/composite_median/
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from datamodules import composite_write  # noqa: E402
from datamodules.composite import composite_for_aoi  # noqa: E402

OUT = Path(__file__).resolve().parent


def np_nanmedian(stack: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        return np.nanmedian(stack, axis=0)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median_step(n_obs: int, repeats: int = 3) -> dict:
    rng = np.random.default_rng(n_obs)
    values = rng.integers(1, 20000, (n_obs, 6, 512, 512)).astype(np.float32)
    clear = rng.random((n_obs, 512, 512)) < 0.6
    stack = np.where(clear[:, None], values, np.nan)
    same = np.array_equal(np_nanmedian(stack), composite_write.nanmedian(stack), equal_nan=True)
    before = best_of(lambda: np_nanmedian(stack), repeats)
    after = best_of(lambda: composite_write.nanmedian(stack), repeats)
    return {
        "block": f"512x512 px x 6 bands x {n_obs} observations",
        "identical": bool(same),
        "nanmedian_s": round(before, 3),
        "sorted_s": round(after, 3),
        "speedup": round(before / after, 2),
    }


def write_catalog(folder: Path, n: int = 24) -> Path:
    """``n`` scenes on one Landsat grid, a cloud over a different part of each."""
    import pystac
    from stac_synth_landsat import LScene, l_item, write_l_scene

    cat = pystac.Catalog("bench", "median benchmark")
    col = pystac.Collection(
        "landsat-c2-l2",
        "bench",
        pystac.Extent(
            pystac.SpatialExtent([[-180, -90, 180, 90]]),
            pystac.TemporalExtent([[datetime(2023, 1, 1, tzinfo=UTC), None]]),
        ),
    )
    cat.add_child(col)
    for i in range(n):
        r0 = (i * 37) % 400
        sc = LScene(
            f"LC09_BENCH_{i:02d}",
            datetime(2023, 6, 1, 9, 40, tzinfo=UTC) + timedelta(days=i),
            10.0,
            (slice(r0, r0 + 200), slice(0, 512)),
            seed=i,
        )
        col.add_item(pystac.Item.from_dict(l_item(sc, write_l_scene(folder / "assets", sc))))
    cat.normalize_hrefs(str(folder / "catalog"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog" / "catalog.json"


def whole_composite(repeats: int = 2) -> dict:
    import stac_synth_landsat as lsyn

    lsyn.L_SIZE = 512  # scenes of 512 x 512 px
    with tempfile.TemporaryDirectory() as tmp:
        url = str(write_catalog(Path(tmp)))
        aoi = lsyn.l_aoi(cols=(0, 512), rows=(0, 512))
        args = dict(catalog="earth_search", catalog_url=url, progress=False, max_items=24)

        def run(median, name):
            composite_write.nanmedian = median
            return composite_for_aoi(
                aoi, "2023-06-01", "2023-06-30", "landsat-c2-l2", Path(tmp) / name, **args
            )

        sorted_median = composite_write.nanmedian
        times = {}
        for name, fn in (("nanmedian", np_nanmedian), ("sorted", sorted_median)):
            times[name] = best_of(
                lambda fn=fn, name=name: run(fn, f"{name}-{time.time()}"), repeats
            )
        composite_write.nanmedian = sorted_median
    return {
        "composite": "24 scenes x 6 bands, 512 x 512 px (one block), static catalog on disk",
        "nanmedian_s": round(times["nanmedian"], 2),
        "sorted_s": round(times["sorted"], 2),
        "speedup": round(times["nanmedian"] / times["sorted"], 2),
    }


def same_pixels(a: Path, b: Path) -> bool:
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return x.profile == y.profile and np.array_equal(x.read(), y.read(), equal_nan=True)


def in_turn(self, pool, obs, blocks, bands=True):
    """``Writer._read_ahead`` without reading ahead: each block read, then its median taken."""
    for win in blocks:
        aoi = self.reader.aoi_mask(win)
        views = self.reader.observe(pool, obs, win, aoi, bands=bands) if aoi.any() else []
        yield win, aoi, views


def read_ahead(repeats: int = 2) -> dict:
    import stac_synth_landsat as lsyn

    lsyn.L_SIZE = 512
    ahead = composite_write.Writer._read_ahead
    with tempfile.TemporaryDirectory() as tmp:
        url = str(write_catalog(Path(tmp)))
        aoi = lsyn.l_aoi(cols=(0, 512), rows=(0, 512))
        args = dict(catalog="earth_search", catalog_url=url, progress=False, max_items=24)
        outs: dict[str, Path] = {}

        def run(fn, name):
            composite_write.Writer._read_ahead = fn
            outs[name] = Path(tmp) / f"{name}-{time.time()}"
            composite_for_aoi(
                aoi, "2023-06-01", "2023-06-30", "landsat-c2-l2", outs[name], block_size=128, **args
            )

        try:
            times = {
                name: best_of(lambda fn=fn, name=name: run(fn, name), repeats)
                for name, fn in (("in_turn", in_turn), ("read_ahead", ahead))
            }
        finally:
            composite_write.Writer._read_ahead = ahead
        same = all(
            same_pixels(outs["in_turn"] / f, outs["read_ahead"] / f)
            for f in ("composite.tif", "count.tif")
        )
    return {
        "composite": "24 scenes x 6 bands, 512 x 512 px in 16 blocks of 128 px, static catalog",
        "identical": same,
        "in_turn_s": round(times["in_turn"], 2),
        "read_ahead_s": round(times["read_ahead"], 2),
        "speedup": round(times["in_turn"] / times["read_ahead"], 2),
    }


def main() -> None:
    steps = [median_step(24), median_step(6)]
    whole = whole_composite()
    ra = read_ahead()
    results = {"median": steps, "composite": whole, "read_ahead": ra}
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# The per-pixel median of composites: np.nanmedian vs a sort-based median",
        "",
        "`datamodules.composite_write.nanmedian` sorts each pixel's values (NaN sorts last) and "
        "takes the middle one or two: the same numbers as `np.nanmedian` (checked below).",
        "",
        "| stack | identical | np.nanmedian | sorted | speed-up |",
        "|---|---|---|---|---|",
        *[
            f"| {s['block']} | {s['identical']} | {s['nanmedian_s']} s | {s['sorted_s']} s "
            f"| {s['speedup']}x |"
            for s in steps
        ],
        "",
        f"A whole composite ({whole['composite']}): {whole['nanmedian_s']} s with np.nanmedian, "
        f"{whole['sorted_s']} s sorted ({whole['speedup']}x).",
        "",
        f"The same composite in blocks ({ra['composite']}): {ra['in_turn_s']} s reading and "
        f"taking each median in turn, {ra['read_ahead_s']} s with the next block read while "
        f"this one's median is taken ({ra['speedup']}x; same pixels: {ra['identical']}).",
        "",
        "Best of several runs, measured in one run with "
        "`.venv/bin/python experiments/composite_median/bench.py` on a 2-core machine shared with "
        "other work (ratios are what to read, not seconds).",
    ]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
