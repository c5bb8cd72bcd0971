"""``/v1/scenes``: upload a GeoTIFF to look at on a map (tiles), label on, or predict later."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi.responses import FileResponse

from ..auth import current_owner
from ..context import Context, get_ctx
from ..downloads import Download
from ..errors import not_found
from ..scenes import SceneStore, add_overviews, describe, record, save_record
from ..schemas import ERRORS, ERRORS_AS_JSON
from ..settings import serve_dir
from ..untrusted import inspect_raster
from ..uploads import RASTER, save_upload, upload_errors

router = APIRouter(prefix="/v1/scenes", tags=["scenes"], responses=ERRORS)
HINT = "List your scenes with GET /v1/scenes."


def scene_store() -> SceneStore:
    return SceneStore(serve_dir() / "scenes")


def view(rec: dict, public_url: str) -> dict:
    """The scene as answers show it; links start with the server's --public-url (relative
    when it is not set, as in every answer)."""
    own = f"{public_url}/v1/scenes/{rec['id']}"
    out = {k: v for k, v in rec.items() if k != "owner"}
    return out | {
        "links": {
            "self": own,
            "file": f"{own}/scene.tif",
            "tilejson": f"{own}/tiles/image/tilejson.json",
            "tiles": f"{own}/tiles/image/{{z}}/{{x}}/{{y}}.png",
        }
    }


@router.post("", status_code=201, summary="Upload a GeoTIFF scene (to view as map tiles)")
def create_scene(
    image: Annotated[UploadFile, File(description="a GeoTIFF/COG with a CRS")],
    sensor: Annotated[
        str | None, Form(description="sensor id, e.g. sentinel-2-l2a", examples=[""])
    ] = None,
    bands: Annotated[
        str | None, Form(description="band names in file order, comma-separated", examples=[""])
    ] = None,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    store = scene_store()
    scene_id, folder = store.new()
    names = {}
    with upload_errors(names, folder):
        path, shown = save_upload(image, folder, "upload", RASTER, "image")
        names[path] = shown
        inspect_raster(path, shown, ctx.limits)  # a readable, whole GeoTIFF within the limits
        path = path.rename(store.path(scene_id))
        names.clear()
        names[path] = shown
        band_list = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
        info = describe(path, band_list, sensor or None)
        add_overviews(path)
        rec = record(scene_id, owner, shown, info)
        save_record(folder, rec)
    return view(rec, ctx.settings.public_url)


@router.get("", summary="List your scenes, newest first")
def list_scenes(owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)) -> dict:
    return {"scenes": [view(r, ctx.settings.public_url) for r in scene_store().all(owner)]}


def owned(owner: str, scene_id: str) -> dict:
    rec = scene_store().get(scene_id, owner)
    if rec is None:
        raise not_found("scene", scene_id, HINT)
    return rec


@router.get("/{scene_id}", summary="A scene: bands, sensor, CRS, size, lon/lat bounds, links")
def get_scene(
    scene_id: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
) -> dict:
    return view(owned(owner, scene_id), ctx.settings.public_url)


@router.get(
    "/{scene_id}/scene.tif",
    response_class=FileResponse,
    responses=ERRORS_AS_JSON | {200: {"description": "the GeoTIFF", "content": {"image/tiff": {}}}},
    summary="The scene's file, as uploaded (plus overviews)",
)
def get_scene_file(scene_id: str, owner: str = Depends(current_owner)):
    rec = owned(owner, scene_id)
    return Download(scene_store().path(scene_id), media_type="image/tiff", filename=rec["name"])


@router.delete("/{scene_id}", status_code=204, summary="Delete a scene")
def delete_scene(scene_id: str, owner: str = Depends(current_owner)) -> Response:
    owned(owner, scene_id)
    scene_store().delete(scene_id)
    return Response(status_code=204)
