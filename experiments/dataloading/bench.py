"""Data-loading speed: geotune's dataset folder vs the naive TorchGeo pipeline, in one run.

Source: the real Sentinel-2 L1C sample (../shared/data/sentinel2-l1c-sample/, one file per band),
six bands: blue (B02), green (B03), red (B04) at 10 m and nir08 (B8A), swir16 (B11), swir22
(B12) at 20 m. Labels: ``datamodules.demo_labels`` polygons derived from the scene (its
spectral rule), written to a GeoJSON as a user would bring them.

Pipelines, each 256x256 chips, 6 bands, batch 8, 2 DataLoader workers, random chips:

- ``naive``: what a new user writes from TorchGeo's docs: a ``RasterDataset`` over the band
  files (``separate_files=True``; the 20 m bands are resampled to 10 m on every read) ``&`` a
  ``VectorDataset`` over the GeoJSON (re-read and rasterized for every chip),
  ``RandomPatchSampler``, ``stack_samples``.
- ``torchgeo_folder``: TorchGeo ``RasterDataset`` ``&`` ``RasterDataset`` over geotune's
  dataset folder (``image.tif`` + ``mask.tif``): TorchGeo's own reader on the pre-rasterized files.
- ``geotune``: ``GeotuneDataModule.train_dataloader()`` over the dataset folder (TorchGeo
  ``RandomPatchSampler`` + labelled-area filter, rasterio window reads of image, mask, units).

Each pipeline runs warm-up batches first (worker start-up, file opening), then chips/s is timed
over a fixed number of batches. All pipelines run in the same process, one after the other, so
the ratios are measured on the same machine state. Results go to ``results.md`` next to this file
(``--write``) and are printed.

    .venv/bin/python experiments/dataloading/bench.py --write
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "sentinel2-l1c-sample"
BAND_FILES = ["s2_B02.jp2", "s2_B03.jp2", "s2_B04.jp2", "s2_B8A.jp2", "s2_B11.jp2", "s2_B12.jp2"]
ASSETS = ("B02", "B03", "B04", "B8A", "B11", "B12")
PATCH, BATCH, WORKERS = 256, 8, 2


def prepare(work: Path, sample: Path, n_polygons: int) -> dict:
    """Band files → stacked preview for the label rule → labels GeoJSON → geotune dataset."""
    import geopandas as gpd
    import rasterio

    from datamodules.demo_labels import CLASSES, make_demo_labels
    from datamodules.imagery import gtiff_profile, open_scenes
    from datamodules.ingest import ingest
    from datamodules.manifest import DatasetError, delete_dataset
    from datamodules.scene_reader import SceneReader

    bands = [sample / f for f in BAND_FILES]
    scene = open_scenes(bands, sensor="sentinel-2-l1c")[0]
    stack = work / "stack_for_labels.tif"
    if not stack.exists():  # the label rule reads one multi-band file with band names
        with (
            SceneReader(scene) as r,
            rasterio.open(
                stack,
                "w",
                **gtiff_profile(
                    scene.grid, len(scene.bands), scene.dtype, scene.nodata, layout="image"
                ),
            ) as dst,
        ):
            dst.write(r.read(rasterio.windows.Window(0, 0, scene.grid.width, scene.grid.height)))
            dst.descriptions = tuple(scene.bands)
            dst.update_tags(sensor="sentinel-2-l1c")
    labels = work / "labels.geojson"
    make_demo_labels(stack, labels, n_polygons=n_polygons)
    gdf = gpd.read_file(labels)
    gdf["class_id"] = gdf["class_name"].map({c: i + 1 for i, c in enumerate(CLASSES)})
    naive_labels = work / "naive" / "labels.geojson"  # numeric ids: VectorDataset rasterizes them
    naive_labels.parent.mkdir(exist_ok=True)
    gdf.to_file(naive_labels, driver="GeoJSON")
    try:
        delete_dataset("bench_s2")
    except DatasetError:
        pass
    t0 = time.perf_counter()
    ds = ingest(
        name="bench_s2",
        images=bands,
        labels=labels,
        class_column="class_name",
        sensor="sentinel-2-l1c",
        block_size=256,
        progress=False,
    )
    return {
        "dataset": ds,
        "ingest_s": time.perf_counter() - t0,
        "naive_labels": naive_labels,
        "n_polygons": len(gdf),
        "bands": scene.bands,
        "shape": (scene.grid.height, scene.grid.width),
    }


def naive_loader(sample: Path, labels: Path, n_chips: int, seed: int):
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, VectorDataset, stack_samples
    from torchgeo.samplers import RandomPatchSampler

    class Sentinel2Bands(RasterDataset):  # as in TorchGeo's "custom raster datasets" tutorial
        filename_glob = "s2_B02.*"
        filename_regex = r"^s2_(?P<band>B[0-9A]{2})\..*$"
        is_image = True
        separate_files = True
        all_bands = ASSETS

    image = Sentinel2Bands(paths=str(sample), bands=ASSETS)
    labels_ds = VectorDataset(
        paths=str(labels), crs=image.crs, res=image.res, label_name="class_id"
    )
    data = image & labels_ds
    sampler = RandomPatchSampler(data, size=PATCH, length=n_chips, generator=seed)
    return DataLoader(
        data, batch_size=BATCH, sampler=sampler, num_workers=WORKERS, collate_fn=stack_samples
    )


def torchgeo_folder_loader(folder: Path, n_chips: int, seed: int):
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import RandomPatchSampler

    class Image(RasterDataset):
        filename_glob = "image.tif"
        is_image = True

    class Mask(RasterDataset):
        filename_glob = "mask.tif"
        is_image = False

    data = Image(paths=str(folder)) & Mask(paths=str(folder))
    sampler = RandomPatchSampler(data, size=PATCH, length=n_chips, generator=seed)
    return DataLoader(
        data, batch_size=BATCH, sampler=sampler, num_workers=WORKERS, collate_fn=stack_samples
    )


def geotune_loader(dataset_id: str, n_chips: int, seed: int):
    from datamodules.datamodule import GeotuneDataModule

    dm = GeotuneDataModule(
        dataset_id,
        patch_size=PATCH,
        batch_size=BATCH,
        num_workers=WORKERS,
        chips_per_epoch=n_chips,
        seed=seed,
    )
    return dm.train_dataloader()


def measure(loader, warmup: int) -> dict:
    """chips/s over the batches after ``warmup``; checks every batch's shape."""
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(it)
    t1 = time.perf_counter()
    chips = 0
    for batch in it:
        image = batch["image"]
        assert tuple(image.shape[1:]) == (6, PATCH, PATCH), image.shape
        chips += image.shape[0]
    t2 = time.perf_counter()
    del it
    return {"chips": chips, "seconds": t2 - t1, "chips_s": chips / (t2 - t1), "warmup_s": t1 - t0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sample", type=Path, default=SAMPLE)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--n-polygons", type=int, default=300, help="demo_labels' default")
    p.add_argument("--naive-batches", type=int, default=40)
    p.add_argument("--batches", type=int, default=200, help="for the faster pipelines")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    p.add_argument("--write", action="store_true", help="write results.md next to this script")
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geotune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GEOTUNE_HOME", str(work / "home"))
    prep = prepare(work, args.sample, args.n_polygons)
    ds = prep["dataset"]
    print(
        f"dataset {ds.id}: {prep['shape'][1]}x{prep['shape'][0]} px, bands {','.join(prep['bands'])}, "
        f"{prep['n_polygons']} polygons, ingested in {prep['ingest_s']:.1f} s"
    )
    w = args.warmup
    pipelines = {
        "naive": (lambda n: naive_loader(args.sample, prep["naive_labels"], n, args.seed),
                  args.naive_batches),
        "torchgeo_folder": (lambda n: torchgeo_folder_loader(ds.path, n, args.seed),
                            args.batches // 2),
        "geotune": (lambda n: geotune_loader(ds.id, n, args.seed), args.batches),
    }  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in pipelines}
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):  # interleaved, so a busy moment hits every pipeline alike
        for name, (make, batches) in pipelines.items():
            res = measure(make((batches + w) * BATCH), w)
            runs[name].append(res)
            print(
                f"round {r + 1}: {name:16s} {res['chips_s']:8.1f} chips/s  "
                f"({res['chips']} chips in {res['seconds']:.1f} s)"
            )
    summary = {
        name: {
            "chips_s": float(np.median([x["chips_s"] for x in rs])),
            "rounds": [round(x["chips_s"], 1) for x in rs],
            "chips": sum(x["chips"] for x in rs),
            "seconds": sum(x["seconds"] for x in rs),
        }
        for name, rs in runs.items()
    }
    per_round = [
        g["chips_s"] / n["chips_s"] for g, n in zip(runs["geotune"], runs["naive"], strict=True)
    ]
    ratio = summary["geotune"]["chips_s"] / summary["naive"]["chips_s"]
    print(
        f"geotune / naive = {ratio:.1f}x on the medians (per round: "
        f"{', '.join(f'{x:.1f}x' for x in per_round)}; target >= 10x)"
    )
    load = (load_before, os.getloadavg()[0])
    print(f"load average (1 min) before/after: {load[0]:.1f} / {load[1]:.1f}")
    if args.write:
        write_results(args, prep, summary, ratio, per_round, load)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def write_results(args, prep, summary, ratio, per_round, load) -> None:
    import rasterio

    with rasterio.open(prep["dataset"].images[0]) as src:
        p = src.profile
        interleave = src.interleaving.name.lower()
    layout = (
        f"{p.get('compress') or 'uncompressed'}, {p['blockxsize']}x{p['blockysize']} tiles, "
        f"{interleave} interleave"
    )
    naive = summary["naive"]["chips_s"]
    rows = "\n".join(
        f"| {name} | {r['chips_s']:.1f} | {r['chips_s'] / naive:.1f}x | "
        f"{', '.join(str(x) for x in r['rounds'])} | {r['chips']} | {r['seconds']:.1f} |"
        for name, r in summary.items()
    )
    text = f"""# Data loading: chips/s from a dataset folder vs the naive TorchGeo pipeline

Measured {time.strftime("%Y-%m-%d")} on {os.cpu_count()} CPU cores (shared with other work), one
run of

    .venv/bin/python experiments/dataloading/bench.py --write

Source: the real Sentinel-2 L1C sample, {prep["shape"][1]}x{prep["shape"][0]} px at 10 m, six band
files ({", ".join(BAND_FILES)}; the last three at 20 m); labels: {prep["n_polygons"]} polygons from
`datamodules.demo_labels` on that scene, in a GeoJSON. Chips {PATCH}x{PATCH}, 6 bands, batch
{BATCH}, {WORKERS} DataLoader workers, random positions; each measurement is timed after
{args.warmup} warm-up batches. The pipelines run in {args.rounds} interleaved rounds (naive,
torchgeo_folder, geotune, naive, ...) so that load from other processes hits all of them alike;
the table gives the median chips/s and every round's figure. The machine's 1-minute load
average was {load[0]:.1f} before and {load[1]:.1f} after the run (other work shares its cores,
so absolute chips/s move from run to run; read the ratio within a round).

| pipeline | chips/s (median) | vs naive | chips/s per round | chips timed | seconds |
|---|---|---|---|---|---|
{rows}

**geotune / naive = {ratio:.1f}x** on the medians (within each round:
{", ".join(f"{x:.1f}x" for x in per_round)}); target >= 10x. Ingesting the dataset (stacking the
20 m bands at 10 m, rasterizing the polygons once, statistics, splits) took
{prep["ingest_s"]:.1f} s, once, before any training.

- `naive`: TorchGeo `RasterDataset` over the band files (`separate_files=True`) `&`
  `VectorDataset` over the GeoJSON, `RandomPatchSampler`, `stack_samples`: every chip re-reads
  and rasterizes the GeoJSON and resamples the 20 m bands.
- `torchgeo_folder`: TorchGeo's `RasterDataset` reader over geotune's `image.tif` + `mask.tif`.
- `geotune`: `GeotuneDataModule.train_dataloader()`: TorchGeo `RandomPatchSampler` inside the
  labelled area; each worker reads a whole batch (`__getitems__`) straight into one
  shared-memory tensor (no per-chip tensors, no stacking copy), the image window and the unit
  raster only (classes come from the unit table, which also masks other splits).

Dataset folder layout: `image.tif` {layout}; `units.tif` int32 and `mask.tif` uint8, ZSTD, same
tiling. Why this layout: `layouts.md` (`experiments/dataloading/layouts.py`).
"""
    (HERE / "results.md").write_text(text)
    print(f"wrote {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
