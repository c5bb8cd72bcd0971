"""``POST /v1/datasets/{id}/suggestions``: the chips of a dataset where labelling next helps
most (:func:`trainer.suggest.suggest`), answered at once for datasets up to the server's
synchronous size, in the synchronous predictions' lanes."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from datamodules.errors import UserError

from ..auth import current_owner
from ..context import Context, get_ctx
from ..datasets import get_dataset
from ..errors import ApiError
from ..models import resolve
from ..owners import api_name, datasets_root
from ..schemas import ERRORS

router = APIRouter(prefix="/v1", tags=["datasets"], responses=ERRORS)


class SuggestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    n: int = Field(20, ge=1, le=500)
    model: str | None = Field(
        None, description="one of your models (default: the newest version trained on this dataset)"
    )
    alias: str | None = None
    version: int | None = Field(None, ge=1)


@router.post(
    "/datasets/{dataset_id}/suggestions",
    summary="Chips of a dataset where labelling next helps most, as GeoJSON",
)
def suggestions(
    dataset_id: str,
    req: SuggestRequest | None = None,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    from trainer.suggest import suggest

    req = req or SuggestRequest()
    ds = get_dataset(owner, dataset_id)
    h, w = ds.manifest.shape
    if h * w > ctx.settings.sync_pixels:
        raise ApiError(
            422,
            "too_many_pixels",
            f"dataset {dataset_id!r} has {h * w:,} pixels; this server answers suggestions for at "
            f"most {ctx.settings.sync_pixels:,} at once. Run geotune data suggest {dataset_id} "
            "where the dataset is.",
            limit_pixels=ctx.settings.sync_pixels,
        )
    model = None
    if req.model:
        registered, v = resolve(ctx.client(), owner, req.model, req.alias, req.version)
        model = f"models:/{registered}/{v}"
    try:
        with ctx.lane.slot():
            answer = suggest(ds.id, req.n, model=model, root=datasets_root(owner))
    except UserError as e:
        raise ApiError(422, "invalid_request", str(e)) from None
    # the answer names the model as its owner calls it
    name, _, version = answer["model"].removeprefix("models:/").rpartition("/")
    answer["model"] = {"name": api_name(owner, name), "version": int(version)}
    return answer
