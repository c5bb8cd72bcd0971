"""``/v1/datasets``: upload imagery + labels (the CLI's ingestion), list, get, delete."""

from __future__ import annotations

import secrets
import shutil
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi.responses import JSONResponse

from datamodules.errors import UserError
from datamodules.ingest import check_options
from datamodules.manifest import check_name, delete_dataset, list_datasets
from datamodules.options import csv_list as _csv
from datamodules.sensors import get_sensor

from ..auth import current_owner
from ..context import Context, get_ctx
from ..datasets import detail, get_dataset, summary
from ..errors import ApiError
from ..ingestion import ingest_argv, write_request
from ..jobs import ACTIVE, job_view
from ..owners import datasets_root
from ..schemas import ERRORS, MAX_SEED
from ..settings import serve_dir
from ..untrusted import inspect_raster
from ..uploads import RASTER, VECTOR, rename_in_message, save_upload, upload_errors

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _numbers(text: str | None, field: str, kind=float) -> list | None:
    try:
        return [kind(v) for v in _csv(text)] if text else None
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"{field}: {text!r} is not a comma-separated list of numbers"
        ) from None


@router.post(
    "", status_code=202, responses=ERRORS,
    summary="Upload imagery + labels: a job makes the dataset (202; GET /v1/jobs/{id})",
)  # fmt: skip
def create_dataset(
    name: Annotated[str, Form(description="dataset name (1-64 characters); its id is the name in lower case with other characters as '_'", examples=["coast"])],
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
    seed: Annotated[int, Form(ge=0, le=MAX_SEED)] = 0,
    min_class_pixels: Annotated[int, Form(ge=0, description="labelled pixels a class needs in val or test to count there")] = 20,
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
) -> JSONResponse:  # fmt: skip
    try:
        dataset_id = check_name(name)
        fractions = _numbers(split_fractions, "split_fractions")
        if fractions is not None and len(fractions) != 3:
            raise ApiError(
                422, "invalid_request", "split_fractions takes three numbers: train,val,test"
            )
        if sensor:
            get_sensor(sensor)
    except UserError as e:
        raise ApiError(422, "invalid_request", rename_in_message(str(e), {})) from None
    _check_free(ctx, owner, dataset_id)
    split = dict(zip(("train", "val", "test"), fractions, strict=True)) if fractions else None
    options = {
        "class_column": class_column or None,
        "sensor": sensor or None,
        "bands": _csv(bands),
        "dates": _csv(dates),
        "mask_ignore_values": _numbers(ignore_values, "ignore_values", int),
        "block_size": block_size,
        "seed": seed,
        "min_class_pixels": min_class_pixels,
        "split_fractions": split,
        "task": task,
        "chip_size": chip_size,
        "multi_label": multi_label,
        "background": background or None,
        "split_column": split_column or None,
        "change_classes": change_classes,
    }
    staging = serve_dir() / "uploads" / secrets.token_hex(8)
    staging.mkdir(parents=True)
    try:
        request = _stage(ctx, staging, image, labels, labels_after, options)
        request |= {
            "name": name,
            "dataset_id": dataset_id,
            "owner": owner,
            "root": str(datasets_root(owner)),
            "options": options,
        }
        with ctx.jobs.lock:  # the name check and the new record go together
            _check_free(ctx, owner, dataset_id)
            rec = ctx.jobs.create(
                "ingest",
                owner,
                {"dataset": dataset_id, "name": name},
                ingest_argv,
                prepare=lambda folder: write_request(folder, staging, request, ctx.limits),
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    view = job_view(rec)
    return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})


def _check_free(ctx: Context, owner: str, dataset_id: str) -> None:
    """409 when the owner has this dataset, or an ingest job is making it."""
    if (datasets_root(owner) / dataset_id).exists():
        raise ApiError(
            409,
            "conflict",
            f"you already have a dataset {dataset_id!r}; choose another name, or delete it first "
            f"with DELETE /v1/datasets/{dataset_id}",
        )
    for job in ctx.jobs.all():
        mine = job["owner"] == owner and job["kind"] == "ingest"
        if mine and job["state"] in ACTIVE and job["params"]["dataset"] == dataset_id:
            raise ApiError(
                409,
                "conflict",
                f"job {job['id']} ({job['state']}) is already making dataset {dataset_id!r}; wait "
                f"for it (GET /v1/jobs/{job['id']}) or choose another name",
            )


def _stage(ctx: Context, staging, image, labels, labels_after, options) -> dict:
    """Store the uploads under the server's names and check what needs no label file opened:
    kinds, every raster's header (pixels, bands, whole file) and the options. Returns the
    files part of the job's request."""
    files, names = [], {}

    def keep(up, base, allowed, role) -> dict:
        path, shown = save_upload(up, staging, base, allowed, role)
        names[path] = shown
        entry = {"file": path.name, "shown": shown, "kind": path.suffix.lstrip(".")}
        if entry["kind"] == "tif":
            inspect_raster(path, shown, ctx.limits)
        files.append(entry)
        return entry

    with upload_errors(names):  # the caller removes the staging folder
        images = [keep(up, f"image{i}", RASTER, "image")["file"] for i, up in enumerate(image, 1)]
        lab = keep(labels, "labels", VECTOR | RASTER, "labels")
        after = None
        if labels_after is not None:
            after = keep(labels_after, "labels_after", VECTOR, "labels_after")
        check_options(
            task=options["task"],
            labels_name=lab["shown"],
            is_mask=lab["kind"] == "tif",
            after_name=after["shown"] if after else None,
            chip_size=options["chip_size"],
            multi_label=options["multi_label"],
            background=options["background"],
            split_column=options["split_column"],
            block_size=options["block_size"],
            change_classes=options["change_classes"],
        )
    return {"files": files, "images": images, "labels": lab, "labels_after": after}


@router.get("", responses=ERRORS, summary="List your datasets")
def list_owned(owner: str = Depends(current_owner)) -> dict:
    rows = [ds for ds in list_datasets(datasets_root(owner)) if ds.manifest.owner == owner]
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
