"""``POST /v1/geospatial/{task}``: the prediction in the shape users of hosted geospatial APIs
expect: a task, a model ``name@alias``, an area and dates in; class areas, polygons and the
class raster's URL out.

A thin layer over ``POST /v1/models/{name}/predict`` with an AOI (the same checks, imagery from
the STAC catalogue, the same predictor, a job for large areas): it adds only that the task must
be the model's task.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..auth import current_owner
from ..context import Context, get_ctx
from ..errors import ApiError
from ..models import model_record, resolve
from ..schemas import ERRORS, AoiPredictRequest
from .predict import _predict_aoi, check_aoi

router = APIRouter(prefix="/v1/geospatial", tags=["geospatial"], responses=ERRORS)
TASKS = {"segment": "segmentation", "classify-landuse": "classification", "detect-change": "change"}
ENDPOINT = {v: k for k, v in TASKS.items()}


class GeospatialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        description="one of your models as name@alias (name alone: alias champion)",
        examples=["coast@champion"],
    )
    aoi: dict[str, Any] = Field(description="GeoJSON Polygon/MultiPolygon or Feature, CRS84")
    start_date: date
    end_date: date
    sensor: str | None = Field(
        None, description="sensor id of the imagery (default: the model's)", examples=[None]
    )
    output_format: Literal["geojson", "cog"] = Field(
        "geojson", description="geojson: polygons in the answer; cog: only the class raster's URL"
    )


def parse_model(text: str) -> tuple[str, str]:
    name, _, alias = text.partition("@")
    if not name:
        raise ApiError(
            422, "invalid_request", f"model {text!r}: give name@alias, e.g. coast@champion"
        )
    return name, alias or "champion"


@router.post(
    "/{task}",
    responses={202: {"description": "a large area: queued as a job (GET /v1/jobs/{id}/result)"}},
    summary="Predict an area and dates with a model of this task: segment, classify-landuse, "
    "detect-change",
)
def geospatial(
    task: Literal["segment", "classify-landuse", "detect-change"],
    req: GeospatialRequest,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
):
    name, alias = parse_model(req.model)
    client = ctx.client()
    registered, version = resolve(client, owner, name, alias, None)
    rec = model_record(client, registered, version)
    kind = rec.task
    if kind != TASKS[task]:
        raise ApiError(
            422,
            "task_mismatch",
            f"model {name}@{alias} (version {version}) is a {kind} model, not {TASKS[task]}; "
            f"send it to POST /v1/geospatial/{ENDPOINT.get(kind, kind)}, or choose a "
            f"{TASKS[task]} model (GET /v1/models)",
            model_task=kind,
        )
    sensor = req.sensor or rec.get("sensor")
    if not sensor:
        raise ApiError(
            422,
            "invalid_request",
            f"model {name!r} records no sensor, so the imagery's cannot be guessed: send "
            '"sensor", e.g. "sentinel-2-l2a"',
        )
    outputs = (
        "classes,confidence,polygons" if req.output_format == "geojson" else "classes,confidence"
    )
    aoi_req = AoiPredictRequest(
        aoi=req.aoi,
        start_date=req.start_date,
        end_date=req.end_date,
        sensor=sensor,
        outputs=outputs,
    )
    km2 = check_aoi(aoi_req, ctx.settings.max_aoi_km2)
    base = ctx.settings.public_url
    answer = _predict_aoi(ctx, owner, name, alias, registered, version, aoi_req, km2, base)
    if isinstance(answer, JSONResponse):  # 202: a job
        return answer
    if req.output_format == "cog":
        answer.pop("polygons", None)
    return {"task": task, "raster_url": answer["links"]["classes"], **answer}
