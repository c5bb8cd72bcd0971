"""``/v1/finetunes`` queues training jobs; ``/v1/jobs`` follows, cancels and answers them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import PlainTextResponse

from ..auth import current_owner
from ..context import Context, get_ctx
from ..datasets import get_dataset
from ..errors import ApiError, not_found
from ..jobs import FINISHED, clean_log, job_view
from ..predictions import result as prediction_result
from ..schemas import ERRORS, ERRORS_AS_JSON, FinetuneRequest, JobKindName, JobOut, JobState
from ..training import check_alias, check_backbone, check_dataset_fits, check_name_free, train_argv

router = APIRouter(prefix="/v1")
HINT = "List your jobs with GET /v1/jobs."


def owned_job(ctx: Context, owner: str, job_id: str) -> dict:
    rec = ctx.jobs.get(job_id)
    if rec is None or rec["owner"] != owner:
        raise not_found("job", job_id, HINT)
    return rec


@router.post(
    "/finetunes",
    status_code=202,
    response_model=JobOut,
    responses=ERRORS,
    tags=["finetunes"],
    summary="Queue a fine-tune: dataset + backbone → a registered model version",
)
def create_finetune(
    req: FinetuneRequest,
    response: Response,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    ds = get_dataset(owner, req.dataset)
    if req.alias:
        check_alias(req.alias)
    size = check_backbone(req)
    check_dataset_fits(req, ds, size)
    with ctx.jobs.lock:  # the name check and the new record go together
        name = check_name_free(ctx.client(), ctx.jobs, owner, req)
        params = req.model_dump() | {"size": size, "mlflow_name": name}
        rec = ctx.jobs.create(
            "finetune", owner, params, lambda folder: train_argv(req, size, ds.path, name, folder)
        )
    response.headers["Location"] = f"/v1/jobs/{rec['id']}"
    return job_view(rec)


@router.get("/jobs", tags=["jobs"], responses=ERRORS, summary="List your jobs, newest first")
def list_jobs(
    state: JobState | None = Query(None, description="only jobs in this state"),
    kind: JobKindName | None = Query(None, description="only jobs of this kind"),
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    rows = [
        job_view(r)
        for r in reversed(ctx.jobs.all())
        if r["owner"] == owner
        and (state is None or r["state"] == state)
        and (kind is None or r["kind"] == kind)
    ]
    return {"jobs": rows}


@router.get(
    "/jobs/{job_id}",
    tags=["jobs"],
    response_model=JobOut,
    responses=ERRORS,
    summary="A job's state",
)
def get_job(job_id: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)):
    return job_view(owned_job(ctx, owner, job_id))


@router.get(
    "/jobs/{job_id}/logs",
    tags=["jobs"],
    response_class=PlainTextResponse,
    responses=ERRORS_AS_JSON,
    summary="A job's output (training log, progress bars at their last state)",
)
def job_logs(
    job_id: str,
    tail: int | None = Query(None, ge=1, le=100_000, description="only the last N lines"),
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> str:
    owned_job(ctx, owner, job_id)
    folder = ctx.jobs.dir(job_id)
    path = folder / "log.txt"
    text = clean_log(path.read_text(errors="replace"), folder) if path.is_file() else ""
    if tail:
        text = "\n".join(text.splitlines()[-tail:])
    return text


@router.delete(
    "/jobs/{job_id}", tags=["jobs"], response_model=JobOut, responses=ERRORS, summary="Cancel a job"
)
def cancel_job(job_id: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)):
    rec = owned_job(ctx, owner, job_id)
    if rec["state"] in FINISHED:
        raise ApiError(
            409, "conflict", f"job {job_id} has already {rec['state']}; nothing to cancel"
        )
    return job_view(ctx.scheduler.cancel(job_id))


@router.get(
    "/jobs/{job_id}/result", tags=["jobs"], responses=ERRORS, summary="The answer of a finished job"
)
def job_result(
    job_id: str,
    owner: str = Depends(current_owner),
    ctx: Context = Depends(get_ctx),
) -> dict:
    rec = owned_job(ctx, owner, job_id)
    if rec["state"] in ("queued", "running"):
        raise ApiError(
            409,
            "not_finished",
            f"job {job_id} is {rec['state']}; poll GET /v1/jobs/{job_id} until it has succeeded",
        )
    if rec["state"] != "succeeded":
        raise ApiError(
            409, "job_" + rec["state"], f"job {job_id} {rec['state']}: {rec.get('error')}"
        )
    if rec["kind"] == "predict":
        pred_id = rec["result"]["prediction_id"]
        folder = ctx.predictions.folder(pred_id, owner)
        if folder is None:
            raise ApiError(
                410,
                "gone",
                f"prediction {pred_id} of job {job_id} was deleted (predictions are kept "
                f"{ctx.settings.keep_predictions_hours:g} h after they finish, unless deleted "
                "earlier); predict again",
            )
        return prediction_result(folder, ctx.settings.public_url)
    return rec["result"]
