"""``POST /v1/models/{name}/predict`` and ``/v1/predictions``: a scene in; classes, confidence,
polygons and class areas out, each file served only to its owner."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from datamodules.errors import UserError
from trainer.options import PREDICT

from ..auth import current_owner
from ..context import Context, get_ctx
from ..downloads import Download
from ..errors import MAX_FIELDS, MAX_FILES, ApiError, not_found, validation_detail
from ..forms import multipart_properties
from ..jobs import job_view, write_json
from ..models import resolve
from ..predictions import FILES, predict_argv, result, run_prediction
from ..schemas import ERRORS, AoiPredictRequest, PredictParams
from ..untrusted import inspect_raster
from ..uploads import RASTER, save_upload, upload_errors

router = APIRouter(prefix="/v1", tags=["predict"])
HINT = "Predictions are listed in their answers; GET /v1/jobs shows asynchronous ones."

FORM_FIELDS = multipart_properties(PREDICT, PredictParams) | {
    # a form field is text: no null
    "confidence_threshold": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "pixels below this confidence (0..1) become nodata",
    },
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": FORM_FIELDS}
            },
            "application/json": {"schema": AoiPredictRequest.model_json_schema()},
        },
    }
}


async def json_object(request: Request) -> dict:
    """The request's JSON body as an object (``{}`` for another JSON value: the schema then says
    what is missing); 400 when the body is not JSON."""
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None
    return body if isinstance(body, dict) else {}


def _validate(model, data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        detail, fields = validation_detail(e.errors())
        raise ApiError(422, "invalid_request", detail, fields=fields) from None


def check_aoi(req: AoiPredictRequest, max_km2: float) -> float:
    """The AOI's area on the ellipsoid in km²; 422 for a bad geometry (the same rules as
    ``--aoi``: a geometry, Feature or FeatureCollection of polygons in CRS84), dates, or an area
    over the limit."""
    from datamodules.aoi import AoiError, AoiTooLargeError, check_area, parse_aoi

    if req.start_date > req.end_date:
        raise ApiError(422, "invalid_request", "start_date is after end_date")
    try:
        return check_area(parse_aoi(req.aoi), max_km2, fix=" (this server's limit per request)")
    except AoiTooLargeError as e:
        raise ApiError(422, "aoi_too_large", str(e), limit_km2=max_km2) from None
    except AoiError as e:
        raise ApiError(422, "invalid_request", f"aoi: {e}") from None


@router.post(
    "/models/{name}/predict",
    responses=ERRORS | {202: {"description": "queued as a job"}},
    openapi_extra=PREDICT_BODY,
    summary="Predict a GeoTIFF upload (multipart) or an AOI + dates (JSON) with a model",
)
async def predict(
    name: str,
    request: Request,
    alias: str | None = Query(None, description="model alias (default champion)"),
    version: int | None = Query(None, ge=1, description="model version, instead of an alias"),
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
):
    registered, v = await run_in_threadpool(resolve, ctx.client(), owner, name, alias, version)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        req = _validate(AoiPredictRequest, await json_object(request))
        req.output_set()
        km2 = check_aoi(req, ctx.settings.max_aoi_km2)
        alias_used = None if version is not None else (alias or "champion")
        return await run_in_threadpool(
            _predict_aoi,
            ctx,
            owner,
            name,
            alias_used,
            registered,
            v,
            req,
            km2,
            ctx.settings.public_url,
        )
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the scene as multipart/form-data (curl -F image=@scene.tif), or an AOI as "
            "application/json",
        )
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    try:
        images = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
        if not images:
            raise ApiError(
                422,
                "invalid_request",
                "upload the scene as the form field 'image' (curl -F image=@scene.tif)",
            )
        fields = {k: val for k, val in form.multi_items() if isinstance(val, str)}
        extra = set(fields) - set(FORM_FIELDS)
        if extra:
            raise ApiError(
                422,
                "invalid_request",
                f"unknown form field(s) {sorted(extra)}; accepted: {', '.join(sorted(FORM_FIELDS))}",
            )
        fields = {k: val for k, val in fields.items() if val.strip()}  # empty means "the default"
        params = _validate(
            PredictParams, {k: fields[k] for k in PredictParams.model_fields if k in fields}
        )
        outputs = sorted(params.output_set())
        alias_used = None if version is not None else (alias or "champion")
        return await run_in_threadpool(
            _predict_upload,
            ctx,
            owner,
            name,
            alias_used,
            registered,
            v,
            images,
            fields,
            params,
            outputs,
            ctx.settings.public_url,
        )
    finally:
        await form.close()  # the spooled upload files


def _predict_upload(
    ctx, owner, name, alias, registered, v, images, fields, params, outputs, base_url
):
    pred_id, folder = ctx.predictions.new()
    names = {}
    with upload_errors(names, folder):
        infos = []
        for i, up in enumerate(images, 1):
            path, shown = save_upload(up, folder, f"input{i}", RASTER, "image")
            names[path] = shown
            infos.append(inspect_raster(path, shown, ctx.limits))
        pixels = infos[0].pixels
        bands = [b.strip() for b in fields["bands"].split(",")] if fields.get("bands") else None
        dates = [d.strip() for d in fields["dates"].split(",")] if fields.get("dates") else None
        write_json(
            folder / "request.json",
            _request(owner, name, alias, registered, v)
            | {
                "inputs": [p.name for p in names],
                "input_names": list(names.values()),
                "bands": bands,
                "sensor": fields.get("sensor"),
                "dates": dates,
                "params": params.model_dump() | {"outputs": outputs},
                "pixels": pixels,
            },
        )
        return _run_or_queue(ctx, owner, name, registered, v, pred_id, folder, pixels, base_url)


def _request(owner: str, name: str, alias, registered: str, version: int) -> dict:
    """What every prediction's ``request.json`` starts with: who asked, for which model."""
    return {
        "owner": owner,
        "model": name,
        "alias": alias,
        "registered_name": registered,
        "version": version,
    }


def _run_or_queue(ctx, owner, name, registered, v, pred_id, folder, pixels, base_url):
    """Small requests run now (one lane per core, cached model); large ones become a job (202)."""
    ctx.clean_predictions(at_most_every_s=60)
    if pixels > ctx.settings.sync_pixels:
        rec = ctx.jobs.create(
            "predict",
            owner,
            {"prediction_id": pred_id, "model": name, "version": v, "pixels": pixels},
            lambda job_folder: predict_argv(folder, job_folder),
        )
        view = job_view(rec)
        return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})
    with ctx.lane.slot(), ctx.predictions.running(pred_id):
        run_prediction(folder, model=ctx.models.get(registered, v))
    return result(folder, base_url)


def _predict_aoi(ctx, owner, name, alias, registered, v, req, km2, base_url):
    """Imagery for the AOI and dates from the STAC catalogue (datamodules.composite), then the
    same predictor; large areas (pixels at the model's resolution) run as a job."""
    from datamodules.aoi import extent_km2, parse_aoi

    res = float(ctx.models.get(registered, v).record.resolution[0])
    pixels = int(max(km2, extent_km2(parse_aoi(req.aoi))) * 1e6 / (res * res))  # the grid's
    pred_id, folder = ctx.predictions.new()
    write_json(
        folder / "request.json",
        _request(owner, name, alias, registered, v)
        | {
            "inputs": [],
            "input_names": [],
            "aoi": req.aoi,
            "start_date": req.start_date.isoformat(),
            "end_date": req.end_date.isoformat(),
            "sensor": req.sensor,
            "bands": None,
            "params": req.model_dump(include=set(PredictParams.model_fields))
            | {"outputs": sorted(req.output_set())},
            "pixels": pixels,
        },
    )
    try:
        return _run_or_queue(ctx, owner, name, registered, v, pred_id, folder, pixels, base_url)
    except UserError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise ApiError(422, "invalid_input", str(e)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@router.get("/predictions/{prediction_id}", responses=ERRORS, summary="A prediction's answer")
def get_prediction(
    prediction_id: str,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    folder = ctx.predictions.folder(prediction_id, owner)
    if folder is None or not (folder / "outputs" / "summary.json").is_file():
        raise not_found("prediction", prediction_id, HINT)
    return result(folder, ctx.settings.public_url)


@router.delete(
    "/predictions/{prediction_id}",
    status_code=204,
    responses=ERRORS,
    summary="Delete a prediction: its outputs and uploaded scene",
)
def delete_prediction(
    prediction_id: str,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> None:
    folder = ctx.predictions.folder(prediction_id, owner)
    if folder is None:
        raise not_found("prediction", prediction_id, HINT)
    job = ctx.prediction_jobs().get(prediction_id)
    if job is not None or ctx.predictions.is_running(prediction_id):
        how = f"cancel its job first: DELETE /v1/jobs/{job['id']}" if job else "wait for it"
        raise ApiError(409, "conflict", f"prediction {prediction_id} is still running; {how}")
    ctx.predictions.delete(prediction_id)


@router.get(
    "/predictions/{prediction_id}/{filename}",
    responses=ERRORS,
    summary="A prediction's file: classes.tif, confidence.tif (COGs), polygons.geojson, summary.json",
)
def get_prediction_file(
    prediction_id: str,
    filename: str,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
):
    folder = ctx.predictions.folder(prediction_id, owner)
    if folder is None or filename not in FILES or not (folder / "outputs" / filename).is_file():
        raise not_found("file", f"{prediction_id}/{filename}", HINT)
    return Download(
        folder / "outputs" / filename,
        media_type=FILES[filename],
        filename=f"{prediction_id}-{filename}",
    )
