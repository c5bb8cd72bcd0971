"""Ingestion: validate imagery + labels, rasterize once, stats, spatial splits → dataset folder.

One code path serves ``geotune data add`` and ``POST /v1/datasets``. Everything streams window
by window (scenes may be larger than memory). The folder is built under a temporary name and
appears only when complete (see :mod:`datamodules.manifest`).

Tasks (manifest key ``task``):

- ``segmentation``: polygons or a mask raster → ``mask.tif`` + ``units.tif`` + ``units.csv``;
  one or several dates (``image_t{i}.tif``, for multi-temporal models).
- ``change``: exactly two dates (before, after) + change polygons (or a change mask) → the
  same rasters; ``background`` names the class of every valid unlabelled pixel, so binary change
  data need only the change polygons. Or class polygons of each date (``labels`` before,
  ``labels_after`` after): where both dates are labelled, the change label is ``no_change`` or
  ``change`` (``change_classes="binary"``) or the transition, e.g. ``forest→cropland``
  (``"transitions"``); where only one date is labelled, the change is unknown (ignored).
- ``classification``: points or polygons, each the class of one chip → ``chips.csv``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from .imagery import ImageryError, date_order, open_scenes
from .ingest_manifest import labels_part, manifest
from .label_sources import CHANGE_CLASSES, mask_source, vector_source
from .labels import RASTER_SUFFIXES, LabelError
from .manifest import Dataset, DatasetWriter, check_name
from .product_quality import cloud_note
from .rasterize import IGNORE_INDEX, PolygonLabels, write_rasters
from .s2_products import offset_suspect

TASKS = ("segmentation", "classification", "change")


def check_options(
    *,
    task: str,
    labels_name: str,
    is_mask: bool,
    after_name: str | None = None,
    after_is_mask: bool = False,
    chip_size: int | None = None,
    multi_label: bool = False,
    background: str | None = None,
    split_column: str | None = None,
    block_size: int = 256,
    change_classes: str = "binary",
) -> None:
    """The checks of an ingest request that need no file opened (the service runs them before
    it queues the job; :func:`ingest` runs them first)."""
    if task not in TASKS:
        raise LabelError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    if block_size < 8:
        raise LabelError(f"--block-size {block_size} is too small; use at least 8 px")
    if after_name is not None:
        if task != "change":
            raise LabelError(
                "--labels-after is for --task change, as the class polygons of the second date; "
                "the first date's go in --labels."
            )
        if is_mask or after_is_mask:
            raise LabelError(
                "--labels and --labels-after must both be class polygons to derive change labels; "
                "for a change mask, pass it alone as --labels"
            )
        if change_classes not in CHANGE_CLASSES:
            raise LabelError(
                f"--change-classes must be one of {', '.join(CHANGE_CLASSES)}, not {change_classes!r}"
            )
    if task == "classification":
        if is_mask:
            raise LabelError(
                "--task classification takes points or polygons (one per chip), not a mask raster"
            )
        if background is not None:
            raise LabelError("--background is for segmentation and change, not classification")
    else:
        if multi_label:
            raise LabelError("--multi-label is for --task classification only")
        if chip_size is not None:
            raise LabelError(
                "--chip-size is for --task classification; for segmentation and change "
                "the training patch size is data.patch_size"
            )
    if split_column and is_mask:
        raise LabelError(
            f"--split-column needs vector labels; {labels_name} is a mask raster (its regions get "
            "spatial block splits)"
        )


def _check_scene_count(task: str, n_scenes: int) -> None:
    if task == "change" and n_scenes != 2:
        raise ImageryError(
            f"--task change needs exactly two dates, got {n_scenes}: pass "
            "--image before.tif --image after.tif (multi-band files with the same bands)"
        )
    if task == "classification" and n_scenes != 1:
        raise ImageryError(f"--task classification takes one scene, got {n_scenes} dates")


def _check_dates(scenes, labels_after: bool) -> None:
    """Several dates must come oldest first (the first is 'before'); say where nodata comes from."""
    order = date_order(scenes)
    if order is not None and order != sorted(order):
        given = ", ".join(s.date.isoformat() for s in scenes)
        labels = (
            " (and --labels of the first date, --labels-after of the second)"
            if labels_after
            else ""
        )
        raise ImageryError(
            f"the images are dated {given}: give them oldest first, one --image per date in "
            f"date order{labels}."
        )
    note = scenes[0].fill_value_note()
    if note:
        warnings.warn(note, stacklevel=3)
    for note in filter(None, map(cloud_note, scenes)):
        warnings.warn(note, stacklevel=3)


@dataclass(frozen=True, kw_only=True)
class IngestRequest:
    """The options of :func:`ingest` (``labels`` and ``labels_after`` as expanded paths).

    ``labels_after`` (change only): class polygons of the second date; ``labels`` then holds
    the first date's, and the change labels are derived from the two (:func:`change_labels`).
    ``vector_check(gdf, path)``, when given, sees every label file's features as soon as they
    are read (the service bounds their size there). ``imagery``: the provenance of imagery
    fetched by area and dates (STAC items used), recorded as ``source.imagery``.
    """

    name: str
    images: list[str | Path]
    labels: Path
    class_column: str | None = None
    labels_layer: str | None = None  # the layer of a labels file with several
    sensor: str | None = None
    bands: list[str] | None = None
    dates: list[str | None] | None = None
    classes_file: str | Path | None = None
    mask_ignore_values: list[int] | None = None
    owner: str = "local"
    dataset_id: str | None = None
    root: Path | None = None
    block_size: int = 256
    split_fractions: dict[str, float] | None = None
    seed: int = 0
    min_class_pixels: int = 20
    progress: bool = True
    task: str = "segmentation"
    chip_size: int | None = None
    multi_label: bool = False
    background: str | None = None
    split_column: str | None = None
    labels_after: Path | None = None
    change_classes: str = "binary"
    vector_check: object = None
    imagery: dict | None = None
    mask_clouds: bool = False  # products' quality bands make their clouds nodata

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "labels", Path(self.labels).expanduser())
        if self.labels_after is not None:
            set_(self, "labels_after", Path(self.labels_after).expanduser())

    @property
    def is_mask(self) -> bool:
        return self.labels.suffix.lower() in RASTER_SUFFIXES


def ingest(**options) -> Dataset:
    """Build a dataset folder from imagery + labels (the options of :class:`IngestRequest`);
    returns the committed :class:`Dataset`."""
    req = IngestRequest(**options)
    fractions = req.split_fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    dataset_id = req.dataset_id or check_name(req.name)
    after = req.labels_after
    check_options(
        task=req.task,
        labels_name=req.labels.name,
        is_mask=req.is_mask,
        after_name=after.name if after else None,
        after_is_mask=bool(after and after.suffix.lower() in RASTER_SUFFIXES),
        chip_size=req.chip_size,
        multi_label=req.multi_label,
        background=req.background,
        split_column=req.split_column,
        block_size=req.block_size,
        change_classes=req.change_classes,
    )
    masking = req.mask_clouds and req.imagery is None  # a fetched composite is masked already
    scenes = open_scenes(
        req.images, bands=req.bands, sensor=req.sensor, dates=req.dates, mask_clouds=masking
    )
    _check_scene_count(req.task, len(scenes))
    _check_dates(scenes, after is not None)
    for scene in scenes:  # a file written from an ESA product after 04.00, offset and all
        if suspect := offset_suspect(scene, req.sensor):
            warnings.warn(suspect, stacklevel=2)
    gdf, source, table = _read_labels(req, scenes[0].grid)
    writer = DatasetWriter(dataset_id, req.root)
    try:
        result = write_rasters(
            writer.tmp,
            scenes,
            req.sensor,
            source,
            req.block_size,
            table.background_id,
            req.progress,
        )
        if result.valid_pixels == 0:
            raise ImageryError(
                "the imagery is all nodata: every pixel equals the nodata value "
                f"({scenes[0].nodata}). Check the file, or its nodata value."
            )
        part, split_counts = labels_part(
            writer.tmp,
            req.task,
            gdf,
            table,
            scenes[0].grid,
            result,
            scenes[0].nodata,
            req.is_mask,
            chip_size=req.chip_size,
            block_size=req.block_size,
            fractions=fractions,
            seed=req.seed,
            multi_label=req.multi_label,
            min_class_pixels=req.min_class_pixels,
        )
        return writer.commit(
            manifest(req, dataset_id, table, scenes, result, part, fractions, split_counts, gdf)
        )
    except BaseException:
        writer.abort()
        raise


def _read_labels(req: IngestRequest, grid):
    """The label features (None for a mask), the label source to rasterize and the class table."""
    gdf = None
    if req.is_mask:
        source, table = mask_source(
            req.labels, grid, set(req.mask_ignore_values or []), req.classes_file, req.background
        )
    else:
        gdf, table = vector_source(
            req.labels,
            req.class_column,
            grid,
            req.classes_file,
            layer=req.labels_layer,
            task=req.task,
            split_column=req.split_column,
            multi_label=req.multi_label,
            background=req.background,
            labels_after=req.labels_after,
            change_classes=req.change_classes,
            vector_check=req.vector_check,
        )
        source = PolygonLabels(gdf) if req.task != "classification" else None
    k = len(table.classes)
    if k >= IGNORE_INDEX:
        raise LabelError(f"{k} classes; at most {IGNORE_INDEX - 1} are supported")
    return gdf, source, table
