"""``/v1/datasets``: upload imagery + labels (the CLI's ingestion), list, get, delete."""

from __future__ import annotations

import re
import secrets
import shutil
import warnings
from typing import Annotated, Literal

import rasterio
from fastapi import APIRouter, Depends, File, Form, Response, UploadFile

from datamodules.errors import UserError
from datamodules.ingest import ingest
from datamodules.manifest import DatasetError, delete_dataset, list_datasets, load_dataset, slugify

from ..auth import current_owner
from ..context import Context, get_ctx
from ..errors import ApiError, not_found
from ..owners import datasets_root
from ..schemas import ERRORS
from ..settings import serve_dir
from ..uploads import RASTER, VECTOR, UploadError, rename_in_message, save_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
ID_RE = re.compile(r"^[a-z0-9_]{1,100}$")
HINT = "List your datasets with GET /v1/datasets."


def summary(ds) -> dict:
    m = ds.manifest
    return {
        "id": m["id"],
        "name": m["name"],
        "created": m.get("created"),
        "task": m.get("task", "segmentation"),
        "classes": [c["name"] for c in m.get("classes", [])],
        "bands": m.get("bands"),
        "sensor": m.get("sensor"),
        "shape": m.get("shape"),
        "crs": m.get("crs"),
        "resolution": m.get("resolution"),
        "links": {"self": f"/v1/datasets/{m['id']}"},
    }


def detail(ds) -> dict:
    m = {k: v for k, v in ds.manifest.items() if k not in ("crs_wkt",)}
    return m | {"links": {"self": f"/v1/datasets/{m['id']}"}}


def get_dataset(owner: str, dataset_id: str):
    if not ID_RE.match(dataset_id or ""):
        raise not_found("dataset", dataset_id, HINT)
    try:
        ds = load_dataset(dataset_id, root=datasets_root(owner))
    except DatasetError:
        raise not_found("dataset", dataset_id, HINT) from None
    if ds.manifest.get("owner", "local") != owner:
        raise not_found("dataset", dataset_id, HINT)
    return ds


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _numbers(text: str | None, field: str, kind=float) -> list | None:
    try:
        return [kind(v) for v in _csv(text)] if text else None
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"{field}: {text!r} is not a comma-separated list of numbers"
        ) from None


@router.post("", status_code=201, responses=ERRORS, summary="Upload imagery + labels as a dataset")
def create_dataset(
    name: Annotated[str, Form(description="dataset name; its id is the name's slug", examples=["coast"])],
    image: Annotated[
        list[UploadFile],
        File(description="GeoTIFF/COG: one multi-band file per date, or one file per band"),
    ],
    labels: Annotated[
        UploadFile,
        File(description="polygons (GeoJSON, GeoPackage, zipped Shapefile, GeoParquet, FlatGeobuf) or a mask GeoTIFF"),
    ],
    class_column: Annotated[str | None, Form(description="the labels' class column (default 'class')", examples=[""])] = None,
    sensor: Annotated[str | None, Form(description="sensor id, e.g. sentinel-2-l2a", examples=[""])] = None,
    bands: Annotated[str | None, Form(description="band names in file order, comma-separated", examples=[""])] = None,
    dates: Annotated[str | None, Form(description="acquisition date per scene (YYYY-MM-DD), comma-separated", examples=[""])] = None,
    ignore_values: Annotated[str | None, Form(description="mask values meaning unlabelled, comma-separated", examples=[""])] = None,
    block_size: Annotated[int, Form(ge=8, le=8192, description="edge of the spatial split blocks (px)")] = 256,
    split_fractions: Annotated[str | None, Form(description="train,val,test shares, e.g. 0.7,0.15,0.15", examples=[""])] = None,
    seed: Annotated[int, Form(ge=0)] = 0,
    min_class_pixels: Annotated[int, Form(ge=0, description="labelled pixels every class needs per split")] = 20,
    task: Annotated[Literal["segmentation", "classification", "change"], Form(
        description="change: two image dates + change polygons; classification: one chip per label")] = "segmentation",
    chip_size: Annotated[int | None, Form(ge=8, le=4096, description="classification chip edge in px (default 64)", examples=[""])] = None,
    multi_label: Annotated[bool, Form(description="classification: ';'-separated class names")] = False,
    background: Annotated[str | None, Form(description="class name for every valid unlabelled pixel", examples=[""])] = None,
    split_column: Annotated[str | None, Form(description="the labels' train/val/test column, instead of block splits", examples=[""])] = None,
    labels_after: Annotated[
        UploadFile | None,
        File(description="change: class polygons of the second date (labels: of the first); change labels are derived where both are labelled"),
    ] = None,
    change_classes: Annotated[Literal["binary", "transitions"], Form(
        description="with labels_after: no_change/change, or one class per transition (forest→cropland)")] = "binary",
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:  # fmt: skip
    dataset_id = slugify(name)
    root = datasets_root(owner)
    if (root / dataset_id).exists():
        raise ApiError(
            409, "conflict",
            f"you already have a dataset {dataset_id!r}; choose another name, or delete it first "
            f"with DELETE /v1/datasets/{dataset_id}",
        )  # fmt: skip
    fractions = _numbers(split_fractions, "split_fractions")
    if fractions is not None and len(fractions) != 3:
        raise ApiError(
            422, "invalid_request", "split_fractions takes three numbers: train,val,test"
        )
    ignore = _numbers(ignore_values, "ignore_values", int)
    staging = serve_dir() / "uploads" / secrets.token_hex(8)
    staging.mkdir(parents=True)
    names = {}
    try:
        paths = []
        for i, up in enumerate(image, 1):
            path, shown = save_upload(up, staging, f"image{i}", RASTER, "image")
            names[path] = shown
            paths.append(path)
        label_path, shown = save_upload(labels, staging, "labels", VECTOR | RASTER, "labels")
        names[label_path] = shown
        after_path = None
        if labels_after is not None:
            after_path, shown = save_upload(
                labels_after, staging, "labels_after", VECTOR, "labels_after"
            )
            names[after_path] = shown
        check_pixels(paths, names, ctx.settings.max_pixels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = ingest(
                name=name, images=paths, labels=label_path, class_column=class_column or None,
                sensor=sensor or None, bands=_csv(bands), dates=_csv(dates),
                mask_ignore_values=ignore, owner=owner, dataset_id=dataset_id, root=root,
                block_size=block_size, seed=seed, min_class_pixels=min_class_pixels,
                split_fractions=dict(zip(("train", "val", "test"), fractions, strict=True)) if fractions else None,
                progress=False, task=task, chip_size=chip_size, multi_label=multi_label,
                background=background or None, split_column=split_column or None,
                labels_after=after_path, change_classes=change_classes,
            )  # fmt: skip
    except DatasetError as e:
        if "already exists" in str(e) or "meanwhile" in str(e):
            raise ApiError(409, "conflict", f"you already have a dataset {dataset_id!r}") from None
        raise ApiError(422, "invalid_input", rename_in_message(str(e), names)) from None
    except UserError as e:
        raise ApiError(422, "invalid_input", rename_in_message(str(e), names)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    notes = [
        rename_in_message(str(w.message), names)
        for w in caught
        if issubclass(w.category, UserWarning)
    ]
    return detail(ds) | {"warnings": notes}


def check_pixels(paths, names, limit: int) -> None:
    for p in paths:
        try:
            with rasterio.open(p) as src:
                n = src.width * src.height
        except rasterio.errors.RasterioIOError:
            raise UploadError(f"{names[p]} is not a readable GeoTIFF") from None
        if n > limit:
            raise ApiError(
                422, "too_many_pixels",
                f"{names[p]} has {n:,} pixels; this server accepts at most {limit:,} pixels per "
                "scene. Crop the scene, or split it into parts.",
                limit_pixels=limit,
            )  # fmt: skip


@router.get("", responses=ERRORS, summary="List your datasets")
def list_owned(owner: str = Depends(current_owner)) -> dict:
    rows = [
        ds
        for ds in list_datasets(datasets_root(owner))
        if ds.manifest.get("owner", "local") == owner
    ]
    return {"datasets": [summary(ds) for ds in rows]}


@router.get("/{dataset_id}", responses=ERRORS, summary="A dataset's manifest")
def get_one(dataset_id: str, owner: str = Depends(current_owner)) -> dict:
    return detail(get_dataset(owner, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses=ERRORS, summary="Delete a dataset")
def delete_one(
    dataset_id: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
) -> Response:
    ds = get_dataset(owner, dataset_id)
    for job in ctx.jobs.all():
        if (
            job["owner"] == owner and job["kind"] == "finetune"
            and job["state"] in ("queued", "running") and job["params"]["dataset"] == ds.id
        ):  # fmt: skip
            raise ApiError(
                409, "conflict",
                f"dataset {ds.id!r} is used by job {job['id']} ({job['state']}); cancel it first "
                f"with DELETE /v1/jobs/{job['id']}",
            )  # fmt: skip
    delete_dataset(ds.id, root=datasets_root(owner))
    return Response(status_code=204)
