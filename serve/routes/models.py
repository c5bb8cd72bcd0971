"""``/v1/models``: your registered models, their versions and metrics, aliases."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import current_owner
from ..context import Context, get_ctx
from ..models import list_models, model_detail, set_alias
from ..schemas import ERRORS, AliasRequest
from ..training import check_alias

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", responses=ERRORS, summary="List your registered models")
def list_owned(owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)) -> dict:
    return {"models": list_models(ctx.client(), owner)}


@router.get(
    "/{name}",
    responses=ERRORS,
    summary="A model: versions, aliases, classes, bands, each version's run metrics",
)
def get_one(
    name: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
) -> dict:
    return model_detail(ctx.client(), owner, name)


@router.put("/{name}/aliases/{alias}", responses=ERRORS, summary="Point an alias at a version")
def put_alias(
    name: str,
    alias: str,
    body: AliasRequest,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    return set_alias(ctx.client(), owner, name, check_alias(alias), body.version)
