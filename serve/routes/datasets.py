"""``/v1/datasets``: upload imagery + labels (the CLI's ingestion), list, get, delete."""

from __future__ import annotations

import secrets
import shutil

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from datamodules.errors import UserError
from datamodules.ingest import check_options
from datamodules.manifest import check_name, delete_dataset, list_datasets
from datamodules.options import INGEST, integers, split_fractions
from datamodules.options import csv_list as _csv
from datamodules.sensors import get_sensor

from ..auth import current_owner
from ..context import Context, get_ctx
from ..datasets import detail, get_dataset, summary
from ..errors import ApiError
from ..forms import form_fields
from ..ingestion import ingest_argv, write_request
from ..jobs import ACTIVE, job_view
from ..owners import datasets_root
from ..schemas import ERRORS
from ..settings import serve_dir
from ..untrusted import inspect_raster
from ..uploads import RASTER, VECTOR, rename_in_message, save_upload, upload_errors

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=202,
    responses=ERRORS,
    summary="Upload imagery + labels: a job makes the dataset (202; GET /v1/jobs/{id})",
)
@form_fields(INGEST)
def create_dataset(
    form: dict, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
) -> JSONResponse:
    # the form's fields are the rows of datamodules.options.INGEST, as geotune data add's flags
    name, sensor = form["name"], form["sensor"]
    try:
        dataset_id = check_name(name)
        split = split_fractions(form["split_fractions"])
        ignore = integers(form["ignore_values"], "--ignore-values")
        if sensor:
            get_sensor(sensor)
    except UserError as e:
        raise ApiError(422, "invalid_request", rename_in_message(str(e), {})) from None
    _check_free(ctx, owner, dataset_id)
    options = {
        "class_column": form["class_column"] or None,
        "labels_layer": form["labels_layer"] or None,
        "sensor": sensor or None,
        "bands": _csv(form["bands"]),
        "dates": _csv(form["dates"]),
        "mask_ignore_values": ignore,
        "split_fractions": split,
        "background": form["background"] or None,
        "split_column": form["split_column"] or None,
    } | {
        k: form[k]
        for k in ("block_size", "seed", "min_class_pixels", "task", "chip_size", "multi_label")
        + ("change_classes", "mask_clouds")
    }
    staging = serve_dir() / "uploads" / secrets.token_hex(8)
    staging.mkdir(parents=True)
    try:
        request = _stage(ctx, staging, form, options)
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


def _stage(ctx: Context, staging, form: dict, options: dict) -> dict:
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
        images = [
            keep(up, f"image{i}", RASTER, "image")["file"] for i, up in enumerate(form["image"], 1)
        ]
        lab = keep(form["labels"], "labels", VECTOR | RASTER, "labels")
        after = None
        if form["labels_after"] is not None:
            after = keep(form["labels_after"], "labels_after", VECTOR, "labels_after")
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
            job["owner"] == owner
            and job["kind"] == "finetune"
            and job["state"] in ("queued", "running")
            and job["params"]["dataset"] == ds.id
        ):
            raise ApiError(
                409,
                "conflict",
                f"dataset {ds.id!r} is used by job {job['id']} ({job['state']}); cancel it first "
                f"with DELETE /v1/jobs/{job['id']}",
            )
    delete_dataset(ds.id, root=datasets_root(owner))
    return Response(status_code=204)
