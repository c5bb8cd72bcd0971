"""``GET /v1/jobs/{id}/metrics``: a fine-tune's metric history from its MLflow run, for charts
of loss and validation scores (the job record itself holds only the latest values)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from ..auth import current_owner
from ..context import Context, get_ctx
from ..errors import ApiError
from ..schemas import ERRORS
from .jobs import owned_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)
DEFAULT_KEYS = "train/loss_step,train/loss_epoch,val/loss,val/mIoU"  # as Lightning logs them


@router.get("/{job_id}/metrics", summary="A fine-tune's metric history (step, epoch, value)")
def job_metrics(
    job_id: str,
    keys: str = Query(DEFAULT_KEYS, description="comma-separated metric names"),
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    rec = owned_job(ctx, owner, job_id)
    if rec["kind"] != "finetune":
        raise ApiError(422, "invalid_request", f"job {job_id} is a {rec['kind']} job: no metrics")
    names = [k.strip() for k in keys.split(",") if k.strip()][:32]
    run_id = (rec.get("progress") or {}).get("run_id")
    out: dict[str, list] = {k: [] for k in names}
    if run_id:
        client = ctx.client()
        for k in names:
            out[k] = [
                {"step": m.step, "value": round(m.value, 6)}
                for m in client.get_metric_history(run_id, k)
            ]
    return {"job_id": job_id, "run_id": run_id, "metrics": out}
