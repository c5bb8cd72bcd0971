"""``/v1/benchmarks``: the results of ``geotune benchmark`` runs the caller owns.

A benchmark is the MLflow parent run ``geotune benchmark`` makes (tag ``geotune.benchmark``)
with ``benchmark/results.csv`` logged to it; it belongs to the owner of its dataset (the run's
``owner`` tag; runs made before that tag existed belong to the local user). Finished runs
never change, so their rows are read once.
"""

from __future__ import annotations

import csv
import io
import math
import re
from functools import lru_cache

from fastapi import APIRouter, Depends

from ..auth import current_owner
from ..context import Context, get_ctx
from ..errors import not_found
from ..owners import LOCAL
from ..schemas import ERRORS

router = APIRouter(prefix="/v1/benchmarks", tags=["benchmarks"], responses=ERRORS)
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
HINT = "List your benchmarks with GET /v1/benchmarks; run one with `geotune benchmark`."


def _value(text: str):
    for kind in (int, float):
        try:
            v = kind(text)
        except ValueError:
            continue
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return text


@lru_cache(maxsize=64)
def _rows(artifact_uri: str) -> tuple[dict, ...]:
    import mlflow

    text = mlflow.artifacts.load_text(f"{artifact_uri}/benchmark/results.csv")
    return tuple(
        {k: _value(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))
    )


def _finished(ctx: Context, owner: str) -> list:
    from trainer.registry import EXPERIMENT

    client = ctx.client()
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`geotune.benchmark` LIKE '%' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=500,
    )
    return [r for r in runs if r.data.tags.get("owner", LOCAL) == owner]


def _about(run) -> dict:
    from datetime import UTC, datetime

    tags = run.data.tags
    rid = run.info.run_id
    return {
        "id": rid,
        "name": tags["geotune.benchmark"],
        "dataset_id": tags.get("dataset_id"),
        "task": tags.get("task"),
        "git_commit": tags.get("git_commit"),
        "finished": datetime.fromtimestamp(run.info.end_time / 1000, UTC).isoformat(
            timespec="seconds"
        )
        if run.info.end_time
        else None,
        "links": {"self": f"/v1/benchmarks/{rid}"},
    }


@router.get("", summary="Your benchmark results (geotune benchmark), newest first")
def list_benchmarks(owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)) -> dict:
    out = []
    for run in _finished(ctx, owner):
        rows = _rows(run.info.artifact_uri)
        out.append(
            _about(run)
            | {
                "runs": len(rows),
                "backbones": sorted({r["backbone"] for r in rows}),
                "units": sorted({r["units"] for r in rows}),
            }
        )
    return {"benchmarks": out}


@router.get(
    "/{benchmark_id}",
    summary="A benchmark's rows (results.csv) and test mIoU mean ± std per backbone and units",
)
def get_benchmark(
    benchmark_id: str, owner: str = Depends(current_owner), ctx: Context = Depends(get_ctx)
) -> dict:
    from mlflow.exceptions import MlflowException

    from trainer.benchmark import summarize

    if not RUN_ID_RE.match(benchmark_id):
        raise not_found("benchmark", benchmark_id, HINT)
    try:
        run = ctx.client().get_run(benchmark_id)
    except MlflowException:
        raise not_found("benchmark", benchmark_id, HINT) from None
    tags = run.data.tags
    if (
        "geotune.benchmark" not in tags
        or tags.get("owner", LOCAL) != owner
        or run.info.status != "FINISHED"
    ):
        raise not_found("benchmark", benchmark_id, HINT)
    rows = [dict(r) for r in _rows(run.info.artifact_uri)]
    budget = {(r["backbone"], r["units"]): r["budget"] for r in rows}
    scored = [r for r in rows if r.get("test_mIoU") is not None]
    summary = [
        {"backbone": b, "units": u, "budget": budget[(b, u)], "metric": "test_mIoU"}
        | {k: round(v, 6) if isinstance(v, float) else v for k, v in s.items()}
        for (b, u), s in sorted(summarize(scored).items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]
    return _about(run) | {
        "columns": list(rows[0]) if rows else [],
        "rows": rows,
        "summary": summary,
    }
