"""``GET /v1/backbones``: what a fine-tune can use (the choices of ``POST /v1/finetunes``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import current_owner
from ..schemas import ERRORS
from ..training import config_choices

router = APIRouter(prefix="/v1/backbones", tags=["finetunes"], responses=ERRORS)


@router.get("", summary="Backbones, their sizes, and whether their pretrained weights are here")
def list_backbones(owner: str = Depends(current_owner)) -> dict:
    from trainer.backbones import weights_status

    configs = set(config_choices("backbone"))
    rows = [
        {k: r[k] for k in ("name", "description", "sizes", "default_size", "weights_file")}
        | {"pretrained_available": r["present"]}
        for r in weights_status()
        if r["name"] in configs
    ]
    return {"backbones": rows, "tasks": config_choices("task")}
