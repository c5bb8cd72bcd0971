"""``/v1/embeddings``: a scene (upload) or an area and dates → an embedding set made by a job,
owned by the caller; its metadata, its GeoParquet file, and similarity search over it."""

from __future__ import annotations

import os
import shutil

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile

from datamodules.options import csv_list as _csv
from trainer.options import EMBED, ENCODER

from ..auth import current_owner
from ..context import Context, get_ctx
from ..downloads import Download
from ..embedding_requests import (
    EmbedAoiRequest,
    EmbedParams,
    EmbedSceneRequest,
    SearchRequest,
    check_chips,
    check_encoder,
)
from ..embeddings import FILE, INPUTS, REQUEST, SUMMARY, EmbeddingStore, embed_argv, index, state
from ..errors import MAX_FIELDS, MAX_FILES, ApiError, not_found
from ..forms import multipart_properties
from ..jobs import ACTIVE, job_view, read_json, write_json
from ..schemas import ERRORS
from ..settings import serve_dir
from ..untrusted import inspect_raster
from ..uploads import RASTER, save_upload, upload_errors
from .predict import _validate, check_aoi, json_object

router = APIRouter(prefix="/v1", tags=["embeddings"], responses=ERRORS)
HINT = "List your embedding sets with GET /v1/embeddings."


FORM_FIELDS = {o.name for o in ENCODER + EMBED if o.http and o.name != "image"}


def store() -> EmbeddingStore:
    return EmbeddingStore(serve_dir() / "embeddings")


@router.post(
    "/embeddings",
    status_code=202,
    summary="Embed a GeoTIFF upload (multipart), an AOI + dates or one of your scenes (JSON): a "
    "job makes the set",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": multipart_properties(ENCODER + EMBED, EmbedParams),
                    }
                },
                "application/json": {
                    "schema": {
                        "oneOf": [
                            EmbedAoiRequest.model_json_schema(),
                            EmbedSceneRequest.model_json_schema(),
                        ]
                    }
                },
            },
        }
    },
)
async def create_embeddings(
    request: Request, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
):
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        body = await json_object(request)
        if "scene" in body:  # one of the caller's scenes (the Lab's)
            scene = _validate(EmbedSceneRequest, body)
            return await run_in_threadpool(_create_from_scene, ctx, owner, scene)
        req = _validate(EmbedAoiRequest, body)
        return await run_in_threadpool(_create_aoi, ctx, owner, req)
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the scene as multipart/form-data "
            "(curl -F image=@scene.tif), or an AOI as application/json",
        )
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    try:
        images = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
        if not images:
            raise ApiError(422, "invalid_request", "upload the scene as the form field 'image'")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        extra = set(fields) - FORM_FIELDS
        if extra:
            raise ApiError(
                422,
                "invalid_request",
                f"unknown form field(s) {sorted(extra)}; accepted: {', '.join(sorted(FORM_FIELDS))}",
            )
        fields = {k: v for k, v in fields.items() if v.strip()}
        params = _validate(
            EmbedParams, {k: fields[k] for k in EmbedParams.model_fields if k in fields}
        )
        return await run_in_threadpool(_create_upload, ctx, owner, images, fields, params)
    finally:
        await form.close()


def _queue(ctx: Context, owner: str, request: dict, prepare=None) -> JSONResponse:
    """Make a set, let ``prepare(folder)`` put its inputs there (it returns more request
    fields), write its request and queue its job. Any failure removes the set."""
    emb_id, folder = store().new()
    try:
        if prepare is not None:
            request = request | prepare(folder)
        write_json(
            folder / REQUEST, request | {"owner": owner, "created": _now(), "limits": _limits(ctx)}
        )
        encoder = request["encoder"]
        rec = ctx.jobs.create(
            "embed",
            owner,
            {"embeddings_id": emb_id, "encoder": encoder.get("backbone") or encoder.get("model")},
            lambda _job: embed_argv(folder),
        )
    except BaseException:
        store().delete(emb_id)
        raise
    view = job_view(rec) | {"embeddings_id": emb_id}
    view["links"]["embeddings"] = f"/v1/embeddings/{emb_id}"
    return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})


def _create_upload(ctx, owner, images, fields, params):
    sensor = fields.get("sensor")
    encoder = check_encoder(ctx, owner, params, sensor)

    def save(folder) -> dict:
        names = {}
        (folder / INPUTS).mkdir()
        with upload_errors(names):  # _queue removes the set
            for i, up in enumerate(images, 1):
                path, shown = save_upload(up, folder / INPUTS, f"image{i}", RASTER, "image")
                names[path] = shown
                info = inspect_raster(path, shown, ctx.limits)
                check_chips(info.width, info.height, params)
        return {"inputs": [p.name for p in names], "input_names": list(names.values())}

    request = {
        "encoder": encoder,
        "options": _options(params),
        "bands": _csv(fields.get("bands")),
        "sensor": sensor,
        "dates": _csv(fields.get("dates")),
    }
    return _queue(ctx, owner, request, save)


def _create_from_scene(ctx, owner, req: EmbedSceneRequest):
    """A scene the caller uploaded (POST /v1/scenes; checked then): the job reads a link to
    it, with the same isolation as an upload."""
    from .scenes import owned, scene_store

    rec = owned(owner, req.scene)
    sensor = req.sensor or rec.get("sensor")
    encoder = check_encoder(ctx, owner, req, sensor)
    check_chips(rec["shape"][1], rec["shape"][0], req)

    def link(folder) -> dict:
        (folder / INPUTS).mkdir()
        path = folder / INPUTS / "image1-scene.tif"
        try:
            os.link(scene_store().path(req.scene), path)
        except OSError:  # another file system
            shutil.copyfile(scene_store().path(req.scene), path)
        return {"inputs": [path.name], "input_names": [rec["name"]]}

    named = rec.get("bands_named", True)
    request = {
        "encoder": encoder,
        "options": _options(req),
        "scene": req.scene,
        "bands": req.bands or (rec.get("bands") if named else None),
        "sensor": sensor,
        "dates": req.dates,
    }
    return _queue(ctx, owner, request, link)


def _create_aoi(ctx, owner, req: EmbedAoiRequest):
    km2 = check_aoi(req, ctx.settings.max_aoi_km2)
    encoder = check_encoder(ctx, owner, req, req.sensor)
    side = (km2 * 1e6) ** 0.5 / 10.0  # px at 10 m, the finest any preset sensor has
    check_chips(int(side) + 1, int(side) + 1, req)
    request = {
        "encoder": encoder,
        "options": _options(req),
        "aoi": req.aoi,
        "start_date": req.start_date.isoformat(),
        "end_date": req.end_date.isoformat(),
        "sensor": req.sensor,
        "bands": req.bands,
        "inputs": [],
        "input_names": [],
    }
    return _queue(ctx, owner, request)


def _options(p: EmbedParams) -> dict:
    return p.model_dump(
        include={"chip_size", "stride", "dtype", "min_valid", "precision", "mask_clouds"}
    )


def _limits(ctx) -> dict:
    from dataclasses import asdict

    return asdict(ctx.limits)


def _now() -> str:
    from ..jobs import now

    return now()


def _job_of(ctx: Context, emb_id: str) -> dict | None:
    jobs = [
        r
        for r in ctx.jobs.all()
        if r["kind"] == "embed" and r["params"].get("embeddings_id") == emb_id
    ]
    return jobs[-1] if jobs else None


def _owned(owner: str, emb_id: str):
    folder = store().folder(emb_id, owner)
    if folder is None:
        raise not_found("embedding set", emb_id, HINT)
    return folder


def view(ctx: Context, folder) -> dict:
    req = read_json(folder / REQUEST)
    summary = read_json(folder / SUMMARY)
    job = _job_of(ctx, folder.name)
    base = f"/v1/embeddings/{folder.name}"
    out = {
        "id": folder.name,
        "state": state(folder),
        "created": req.get("created"),
        "encoder": {k: v for k, v in req["encoder"].items() if k != "registered_name"},
        "options": req["options"],
        "sensor": req.get("sensor"),
        "inputs": req.get("input_names") or None,
        "scene": req.get("scene"),
        "aoi": req.get("aoi"),
        "start_date": req.get("start_date"),
        "end_date": req.get("end_date"),
        "job": job["id"] if job else None,
        "error": job.get("error") if job else None,
        "links": {"self": base} | ({"job": f"/v1/jobs/{job['id']}"} if job else {}),
    }
    if summary is not None:
        from trainer.embedfile import read_provenance

        prov = read_provenance(folder / FILE)
        keep = (
            "backbone",
            "family",
            "size",
            "pool",
            "dim",
            "dtype",
            "weights",
            "bands",
            "normalisation",
            "sensor",
            "chip_size",
            "stride",
            "min_valid",
            "precision",
            "dates",
            "scene",
            "imagery",
            "run_id",
            "dataset_id",
        )
        out |= {
            "chips": summary["chips"],
            "skipped": summary["skipped"],
            "seconds": summary["seconds"],
            "provenance": {k: prov[k] for k in keep if k in prov},
        }
        out["links"] |= {
            "file": f"{base}/{FILE}",
            "search": f"{base}/search",
            "projection": f"{base}/projection",
        }
    return out


@router.get("/embeddings", summary="Your embedding sets, newest first")
def list_embeddings(owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)) -> dict:
    sets = [view(ctx, f) for f in store().all(owner)]
    return {"embeddings": sorted(sets, key=lambda s: s["created"] or "", reverse=True)}


@router.get(
    "/embeddings/{emb_id}", summary="An embedding set: state, encoder, chips, provenance, links"
)
def get_embeddings(
    emb_id: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
) -> dict:
    return view(ctx, _owned(owner, emb_id))


@router.get(
    "/embeddings/{emb_id}/embeddings.parquet",
    response_class=FileResponse,
    summary="The set's GeoParquet file (one row per chip)",
)
def get_embeddings_file(emb_id: str, owner: str = Depends(current_owner)):
    folder = _owned(owner, emb_id)
    if not (folder / SUMMARY).is_file():
        raise not_found("file", f"{emb_id}/{FILE}", "The set is not ready yet; see its job.")
    return Download(
        folder / FILE, media_type="application/vnd.apache.parquet", filename=f"{emb_id}.parquet"
    )


@router.delete("/embeddings/{emb_id}", status_code=204, summary="Delete an embedding set")
def delete_embeddings(
    emb_id: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
) -> Response:
    _owned(owner, emb_id)
    job = _job_of(ctx, emb_id)
    if job is not None and job["state"] in ACTIVE:
        raise ApiError(
            409,
            "conflict",
            f"set {emb_id} is still being made; cancel its job first: DELETE /v1/jobs/{job['id']}",
        )
    store().delete(emb_id)
    return Response(status_code=204)


@router.post(
    "/embeddings/{emb_id}/search",
    summary="The chips most similar to a chip (like), a place (near), an area (polygon) or a vector, as GeoJSON",
)
def search(
    emb_id: str,
    req: SearchRequest,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    from trainer.search import SearchError

    folder = _owned(owner, emb_id)
    if not (folder / SUMMARY).is_file():
        raise ApiError(
            409,
            "conflict",
            f"set {emb_id} is {state(folder)}; search it once its job has succeeded",
        )
    given = [k for k in ("near", "like", "polygon", "vector") if getattr(req, k) is not None]
    if len(given) != 1:
        raise ApiError(
            422,
            "invalid_request",
            "give exactly one of near [lon, lat], like (a chip_id), polygon (GeoJSON) or vector",
        )
    try:
        idx = index(folder)
        kind = given[0]
        q = idx.near(*req.near) if kind == "near" else getattr(idx, kind)(getattr(req, kind))
        return idx.answer(q, req.k, req.method)
    except SearchError as e:
        raise ApiError(422, "invalid_request", str(e)) from None


@router.get(
    "/embeddings/{emb_id}/projection",
    summary="A 2-D view of the set's embedding space (PCA), with each chip's centre",
)
def projection(
    emb_id: str,
    max_points: int = Query(5000, ge=2, le=20000, description="a random sample past this"),
    owner: str = Depends(current_owner),
) -> dict:
    folder = _owned(owner, emb_id)
    if not (folder / SUMMARY).is_file():
        raise ApiError(409, "conflict", f"set {emb_id} is {state(folder)}; wait for its job")
    return index(folder).projection(max_points)
