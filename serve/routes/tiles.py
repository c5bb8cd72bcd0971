"""Map tiles (Web Mercator XYZ PNG) and TileJSON of an owner's rasters: uploaded scenes, datasets
(image, label mask) and predictions (classes, confidence, the imagery predicted).

``GET /v1/{scenes|datasets|predictions}/{id}/tiles/{file}/{z}/{x}/{y}.png`` and
``.../tiles/{file}/tilejson.json``. ``file`` is a name from a fixed list per collection; the
object is looked up for the caller like every other route (404 for anyone else's). Imagery
takes ``bands`` (1 or 3 band names) and a linear stretch ``vmin``/``vmax`` in stored values
(default: the sensor's display range, else the 2-98 % range); a class tile takes ``threshold``
(0-1): pixels whose confidence is below it are transparent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from ..auth import current_owner
from ..context import Context, get_ctx
from ..datasets import get_dataset
from ..errors import ApiError, not_found
from ..jobs import read_json
from ..schemas import ERRORS, ERRORS_AS_JSON
from ..tiles import (
    TileError,
    band_indexes,
    below_minzoom,
    default_stretch,
    empty_png,
    file_colors,
    render_classes,
    render_confidence,
    render_rgb,
    rgb_bands,
    tilejson,
)
from .scenes import scene_store

router = APIRouter(prefix="/v1", tags=["tiles"])
PNG = {200: {"description": "a 256 x 256 PNG tile", "content": {"image/png": {}}}}
Z = PathParam(ge=0, le=24, description="zoom level")
CACHE = {"Cache-Control": "private, max-age=600"}


@dataclass
class Layer:
    """One raster an owner may see as tiles, and how it is drawn."""

    path: Path
    style: str  # rgb | classes | confidence
    bands: list[str] = field(default_factory=list)
    sensor: str | None = None
    nodata: float | None = None  # the file's, else the sensor's fill value
    colors: dict[int, str] | None = None  # classes by id; None: the file's colour table
    confidence: Path | None = None  # for the threshold of a class layer
    classes: list[dict] | None = None


class ImageQuery:
    def __init__(
        self,
        bands: str | None = Query(None, description="1 or 3 band names, e.g. red,green,blue"),
        vmin: float | None = Query(None, description="stretch: this stored value shows black"),
        vmax: float | None = Query(None, description="stretch: this stored value shows white"),
        threshold: float | None = Query(
            None, ge=0, le=1, description="class layers: hide pixels below this confidence"
        ),
    ):
        self.bands, self.vmin, self.vmax, self.threshold = bands, vmin, vmax, threshold


def _missing(kind: str, ident: str, file: str, files) -> ApiError:
    return not_found(
        f"{kind} layer", f"{ident}/{file}", f"Layers here: {', '.join(files) or 'none'}."
    )


def scene_layer(owner: str, scene_id: str, file: str) -> Layer:
    store = scene_store()
    rec = store.get(scene_id, owner)
    if rec is None:
        raise not_found("scene", scene_id, "List your scenes with GET /v1/scenes.")
    if file != "image":
        raise _missing("scene", scene_id, file, ["image"])
    return Layer(store.path(scene_id), "rgb", rec["bands"], rec.get("sensor"), rec.get("nodata"))


def dataset_layer(owner: str, dataset_id: str, file: str) -> Layer:
    ds = get_dataset(owner, dataset_id)
    m = ds.manifest
    stems = {"image": "image_t0" if m.task == "change" else "image", "mask": "mask"}
    if m.task == "change":
        stems["image_t1"] = "image_t1"
    files = {k: ds.path / f"{v}.tif" for k, v in stems.items() if (ds.path / f"{v}.tif").is_file()}
    if file not in files:
        raise _missing("dataset", dataset_id, file, sorted(files))
    if file == "mask":
        colors = {c["id"]: c["color"] for c in m["classes"]}
        return Layer(files[file], "classes", colors=colors, classes=m["classes"])
    return Layer(files[file], "rgb", list(m["bands"]), m.get("sensor"), m.get("nodata"))


def prediction_layer(ctx: Context, owner: str, prediction_id: str, file: str) -> Layer:
    folder = ctx.predictions.folder(prediction_id, owner)
    summary = read_json(folder / "outputs" / "summary.json") if folder else None
    if summary is None:
        raise not_found("prediction", prediction_id, "Predictions are listed in their answers.")
    out = folder / "outputs"
    if file in ("classes", "confidence") and file in summary["outputs"]:
        conf = out / "confidence.tif"
        path = out / summary["outputs"][file]
        layer = Layer(path, file, confidence=conf if conf.is_file() else None)
        if file == "classes":  # the legend: the colours the tiles are drawn in (the COG's table)
            colors = file_colors(path)
            layer.classes = [
                {"id": h["id"], "name": h["name"], "color": colors.get(h["id"])}
                for h in summary["class_histogram"]
            ]
        return layer
    if file == "image":
        req = read_json(folder / "request.json") or {}
        if req.get("aoi"):  # the composite the prediction was made on
            path = folder / "imagery" / summary["provenance"]["inputs"][0]
        else:
            path = folder / req["inputs"][0]
        if path.is_file():
            from ..scenes import describe

            info = describe(path, req.get("bands"), req.get("sensor"))
            return Layer(path, "rgb", info["bands"], req.get("sensor"), info["nodata"])
    raise _missing("prediction", prediction_id, file, [*summary["outputs"], "image"])


def _check_xyz(z: int, x: int, y: int) -> None:
    if not (0 <= x < 2**z and 0 <= y < 2**z):
        raise ApiError(
            422, "invalid_request", f"tile {z}/{x}/{y} does not exist: x and y run 0..{2**z - 1}"
        )


def render(layer: Layer, z: int, x: int, y: int, q: ImageQuery) -> Response:
    _check_xyz(z, x, y)
    if below_minzoom(layer.path, z):
        return Response(empty_png(), media_type="image/png", headers=CACHE)
    try:
        if layer.style == "classes":
            png = render_classes(layer.path, z, x, y, layer.colors, layer.confidence, q.threshold)
        elif layer.style == "confidence":
            png = render_confidence(layer.path, z, x, y)
        else:
            wanted = q.bands.split(",") if q.bands else rgb_bands(layer.bands)
            idx = band_indexes(layer.bands, [b.strip() for b in wanted])
            if q.vmin is None or q.vmax is None:
                d = default_stretch(layer.path, idx, layer.sensor, layer.nodata)
                q.vmin = d["vmin"] if q.vmin is None else q.vmin
                q.vmax = d["vmax"] if q.vmax is None else q.vmax
            png = render_rgb(layer.path, z, x, y, idx, q.vmin, q.vmax, layer.nodata)
    except TileError as e:
        raise ApiError(422, "invalid_request", str(e)) from None
    return Response(png, media_type="image/png", headers=CACHE)


def describe_layer(layer: Layer, request: Request, name: str, public_url: str) -> dict:
    base = public_url + request.url.path.removesuffix("/tilejson.json")
    extra: dict = {"style": layer.style}
    if layer.style == "rgb":
        rgb = rgb_bands(layer.bands)
        extra |= {
            "bands": layer.bands,
            "rgb": rgb,
            "sensor": layer.sensor,
            "stretch": default_stretch(
                layer.path, band_indexes(layer.bands, rgb), layer.sensor, layer.nodata
            ),
        }
    if layer.classes is not None:
        extra["classes"] = [{k: c.get(k) for k in ("id", "name", "color")} for c in layer.classes]
    return tilejson(layer.path, f"{base}/{{z}}/{{x}}/{{y}}.png", name, geotune=extra)


def layer_for(ctx: Context, owner: str, collection: str, ident: str, file: str) -> Layer:
    if collection == "scenes":
        return scene_layer(owner, ident, file)
    if collection == "datasets":
        return dataset_layer(owner, ident, file)
    return prediction_layer(ctx, owner, ident, file)


Collection = Literal["scenes", "datasets", "predictions"]
FILES = (
    "file: scenes have image; datasets image (image_t1 for change) and mask (the labels); "
    "predictions classes, confidence and image (the imagery predicted)"
)


@router.get(
    "/{collection}/{ident}/tiles/{file}/tilejson.json",
    responses=ERRORS,
    summary="TileJSON of a scene's, dataset's or prediction's raster: bounds, zooms, bands, "
    "default stretch, class colours",
    description=FILES,
)
def layer_tilejson(
    collection: Collection,
    ident: str,
    file: str,
    request: Request,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
):
    layer = layer_for(ctx, owner, collection, ident, file)
    name = f"{collection[:-1]} {ident} {file}"
    return describe_layer(layer, request, name, ctx.settings.public_url)


@router.get(
    "/{collection}/{ident}/tiles/{file}/{z}/{x}/{y}.png",
    response_class=Response,
    responses=ERRORS_AS_JSON | PNG,
    summary="A Web Mercator map tile (PNG) of a scene's, dataset's or prediction's raster",
    description=FILES,
)
def layer_tile(
    collection: Collection,
    ident: str,
    file: str,
    x: int,
    y: int,
    z: int = Z,
    q: ImageQuery = Depends(),
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
):
    return render(layer_for(ctx, owner, collection, ident, file), z, x, y, q)
