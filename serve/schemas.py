"""Request and response bodies of the HTTP API (they are also the OpenAPI page's schemas)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datamodules.options import MAX_SEED
from trainer.options import PREDICT

from .forms import params_model

OUTPUTS = ("classes", "confidence", "polygons")


class ErrorOut(BaseModel):
    error: str = Field(description="a short code, e.g. not_found, invalid_request")
    detail: str = Field(description="what is wrong and what to do about it")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "missing, unknown or revoked API key",
        404: "no such object for this owner",
        409: "conflicts with an existing object or the object's state",
        413: "upload larger than the server's limit",
        422: "invalid request or input data (the detail says which and how to fix it)",
    }.items()
}


# for routes whose success is not JSON (logs, files, tiles): their errors still are
ERRORS_AS_JSON: dict[int | str, dict[str, Any]] = {
    code: {
        "description": spec["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }
    for code, spec in ERRORS.items()
}


@dataclass(frozen=True)
class Train:
    """The ``geotune train`` override a fine-tune field becomes, ``key=value`` (``quoted``: a
    value the user typed, passed as a string); a value in ``omit`` (and None) sets nothing, so
    the config's default stands. Fine-tune jobs make their command from these
    (:func:`serve.training.train_argv`)."""

    key: str
    quoted: bool = False
    omit: tuple = (None,)


class FinetuneRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "dataset": "coast",
                    "model_name": "coast",
                    "backbone": "resnet18",
                    "weights": "pretrained",
                    "epochs": 10,
                },
                {
                    "dataset": "coast",
                    "model_name": "coast-trial",
                    "backbone": "resnet18",
                    "size": "tiny",
                    "weights": "random",
                    "epochs": 3,
                },
            ]
        },
    )

    # the dataset's folder, the size the request resolves to and the model's registered name
    # are the service's (train_argv); the other overrides are the fields' own
    dataset: Annotated[str, Train("data.dataset", quoted=True)] = Field(
        description="id of one of your datasets (GET /v1/datasets)", examples=["coast"]
    )
    model_name: Annotated[str, Train("register.name", quoted=True)] = Field(
        description="registered model name to create (letters, digits, '-', '_')",
        examples=["coast"],
    )
    backbone: Annotated[str, Train("backbone")] = Field(
        "resnet18", description="backbone config, e.g. resnet18, clay_v1_5"
    )
    size: Annotated[str | None, Train("backbone.size", quoted=True)] = Field(
        None,
        description="size variant; default the official size (pretrained weights exist for it "
        "alone); 'tiny' for trials, with weights 'random'",
    )
    weights: Annotated[
        Literal["pretrained", "random"], Train("backbone.weights", omit=(None, "pretrained"))
    ] = Field(
        "pretrained",
        description="pretrained: the official file from the server's weights directory; random: explicit opt-in",
    )
    task: Annotated[str, Train("task")] = Field(
        "segmentation", description="a task config: segmentation, ..."
    )
    alias: Annotated[str | None, Train("register.alias", quoted=True)] = Field(
        "champion", description="point this alias at the new version (null: none)"
    )
    new_version: bool = Field(False, description="add a version to an existing model of this name")
    epochs: Annotated[int, Train("trainer.max_epochs")] = Field(10, ge=1, le=1000)
    patch_size: Annotated[int | None, Train("data.patch_size")] = Field(
        None,
        ge=16,
        le=2048,
        description="training chip edge in pixels; default: the dataset's chip size "
        "(classification), else from the labels",
        examples=[64],
    )
    batch_size: Annotated[int, Train("data.batch_size")] = Field(8, ge=1, le=1024)
    learning_rate: Annotated[float, Train("task.optimizer.lr")] = Field(1e-3, gt=0, le=1)
    chips_per_epoch: Annotated[int | None, Train("data.chips_per_epoch")] = Field(
        None, ge=1, le=1_000_000, description="training chips per epoch (default: from the labels)"
    )
    finetune: Annotated[Literal["full", "frozen", "last_n"] | None, Train("backbone.finetune")] = (
        Field(
            None, description="which backbone weights train; default the backbone's recommendation"
        )
    )
    last_n: Annotated[int | None, Train("backbone.last_n")] = Field(
        None, ge=0, le=100, description="blocks trained with finetune=last_n"
    )
    num_workers: Annotated[int, Train("data.num_workers")] = Field(
        2, ge=0, le=16, description="data loader processes"
    )
    seed: Annotated[int, Train("seed")] = Field(
        0, ge=0, le=MAX_SEED, description="seeds sampling, initialisation, order"
    )


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, description="the model version the alias points at")


class _PredictParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def output_set(self) -> set[str]:
        names = {o.strip() for o in self.outputs.split(",") if o.strip()}
        unknown = names - set(OUTPUTS)
        if unknown:
            from datamodules.errors import UserError

            raise UserError(
                f"unknown output(s) {sorted(unknown)} in outputs; choose from {', '.join(OUTPUTS)}"
            )
        return names | {"classes"}


PredictParams = params_model(
    "PredictParams",
    PREDICT,
    _PredictParams,
    "Prediction options (form fields with an upload, JSON fields with an AOI); the rows of "
    ":data:`trainer.options.PREDICT`.",
)


class AoiPredictRequest(PredictParams):
    aoi: dict[str, Any] = Field(
        description="GeoJSON Polygon/MultiPolygon geometry, Feature or FeatureCollection, in CRS84 "
        "(lon, lat); cut at ±180° when it crosses the antimeridian"
    )
    start_date: date
    end_date: date
    sensor: str | None = Field(
        None,
        description="sensor id of the imagery to fetch; default (and recommended): the model's "
        "own sensor. Another sensor is converted exactly into the model's units where both "
        "measure the same quantity (with a warning in the answer), else refused.",
        examples=[None],
    )


JobKindName = Literal["finetune", "predict", "ingest", "embed"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobOut(BaseModel):
    id: str
    kind: JobKindName
    state: JobState
    created: str
    started: str | None = None
    finished: str | None = None
    params: dict[str, Any] = {}
    progress: dict[str, Any] = Field(
        {},
        description="training: epoch (1-based), max_epochs, step, latest metrics, run_id; "
        "prediction: stage (composite: an AOI's imagery, blocks_done of blocks_total; then "
        "predict: tiles_done of tiles_total)",
    )
    error: str | None = None
    result: dict[str, Any] | None = Field(
        None,
        description="finetune: the registered model and version; predict: the prediction; "
        "ingest: the dataset (as GET /v1/datasets/{id}) and the ingest's warnings; embed: the "
        "embedding set's id, chips and link",
    )
    resumes: int | None = Field(
        None, description="times the job was taken up again after a server stop or restart"
    )
    note: str | None = Field(None, description="why the job was resumed")
    links: dict[str, str] = {}
