"""Fine-tune jobs: a request → checks → ``geotune train`` overrides → a registered version.

The job is ``geotune train`` run as its own process with Hydra overrides, exactly what a user
would type; the service adds only a progress callback (``serve.progress.JobProgress``) and the
run folder. When the process exits 0, the registered version is looked up in MLflow by the run
id the callback recorded, and the registered model is tagged with its owner.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from trainer.config import group_options as config_choices  # the groups' options, by Hydra

from .errors import ApiError
from .jobs import JobFailed, JobKind, read_json
from .owners import LOCAL, NAME_RE, NAME_RULE, mlflow_name, owns
from .schemas import FinetuneRequest, Train

ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias) or alias.lower() == "latest" or re.match(r"^v\d+$", alias):
        raise ApiError(
            422,
            "invalid_request",
            f"alias {alias!r} is not valid: use 1-64 letters, digits, '-' or '_'; "
            "'latest' and v<number> are reserved by MLflow",
        )
    return alias


def check_model_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ApiError(422, "invalid_request", f"model name {name!r} is not valid: use {NAME_RULE}")
    return name


def check_backbone(req: FinetuneRequest) -> str:
    """The size to train; 422 for an unknown backbone/size/task or absent pretrained weights."""
    from trainer.backbones import BACKBONES, WeightsError, get_entry, resolve_weights, sizes

    choices = [b for b in config_choices("backbone") if b in BACKBONES]
    if req.backbone not in choices:
        raise ApiError(
            422,
            "invalid_request",
            f"unknown backbone {req.backbone!r}; choose one of: {', '.join(choices)}",
        )
    tasks = config_choices("task")
    if req.task not in tasks:
        raise ApiError(
            422, "invalid_request", f"unknown task {req.task!r}; choose one of: {', '.join(tasks)}"
        )
    entry = get_entry(req.backbone)
    size = req.size or entry.default_size
    known = sizes(req.backbone)
    if size not in known:
        raise ApiError(
            422,
            "invalid_request",
            f"backbone {req.backbone!r} has no size {size!r}; its sizes are: {', '.join(known)}",
        )
    if req.weights == "pretrained":
        if size != entry.default_size:
            raise ApiError(
                422,
                "invalid_request",
                f"pretrained weights of {req.backbone!r} exist only for its official size "
                f'{entry.default_size!r}; for size {size!r} ask for "weights": "random"',
            )
        try:
            resolve_weights(req.backbone, None)
        except WeightsError:
            raise ApiError(
                422,
                "weights_missing",
                f"backbone {req.backbone!r} needs its pretrained weights file "
                f"{entry.weights_file!r}, which is not in this server's weights directory. Ask the "
                f"operator to put {entry.weights_file} there (geotune backbones list shows the "
                'directory), or ask for "weights": "random" to train from random initialisation.',
                expected_file=entry.weights_file,
            ) from None
    return size


def check_dataset_fits(req: FinetuneRequest, ds, size: str) -> None:
    """What ``geotune train`` would refuse as it starts, refused at once (422): a task that trains
    on other labels than the dataset holds, a chip larger than the dataset's scene. The task's
    kind is read from the config the job will compose (its overrides, as :func:`train_argv`)."""
    from trainer.config import compose, config_error
    from trainer.train import task_class

    try:
        kind = task_class(compose("train", train_overrides(req, dataset=ds.path, size=size))).kind
    except Exception as e:
        message = config_error(e)
        if message is None:
            raise
        raise ApiError(422, "invalid_request", message) from None
    have = ds.manifest.task
    if have != kind:
        raise ApiError(
            422,
            "invalid_request",
            f"dataset {req.dataset!r} holds {have} labels but task {req.task!r} trains on "
            f'{kind} labels; send "task": "{have}", or choose a dataset made for {kind}',
        )
    h, w = ds.manifest.shape[-2:]
    if have != "classification" and req.patch_size and req.patch_size > min(h, w):
        raise ApiError(
            422,
            "invalid_request",
            f"patch_size {req.patch_size} is larger than dataset {req.dataset!r}'s scene "
            f'({h} x {w} px); send a "patch_size" of at most {min(h, w)}, or leave it out to '
            "take one from the labels",
        )


def check_name_free(client, store, owner: str, req: FinetuneRequest) -> str:
    """The MLflow name for the new model; 409 if it is taken and no new version was asked for."""
    from mlflow.exceptions import MlflowException

    name = mlflow_name(owner, check_model_name(req.model_name))
    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        rm = None
    if rm is not None and not owns(client, owner, rm):
        raise ApiError(
            409, "conflict", f"the model name {req.model_name!r} is taken; choose another"
        )
    if rm is not None and not req.new_version:
        raise ApiError(
            409,
            "conflict",
            f"you already have a model {req.model_name!r}; to add a new version of it send "
            '"new_version": true, or choose another model_name',
        )
    for job in store.all():
        if (
            job["owner"] == owner
            and job["kind"] == "finetune"
            and job["state"] in ("queued", "running")
            and job["params"]["model_name"] == req.model_name
            and not req.new_version
        ):
            raise ApiError(
                409,
                "conflict",
                f"job {job['id']} ({job['state']}) is already training model {req.model_name!r}; "
                'wait for it, cancel it, or send "new_version": true',
            )
    return name


def _q(value) -> str:
    """A Hydra override value as a quoted string."""
    text = str(value)
    quote = "'" if "'" not in text else '"'
    if quote in text:
        raise ApiError(422, "invalid_request", f"value {text!r} cannot be passed to the trainer")
    return f"{quote}{text}{quote}"


def geotune_command() -> list[str]:
    exe = Path(sys.executable).with_name("geotune")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "trainer.cli"]


def train_overrides(req: FinetuneRequest, **given) -> list[str]:
    """``key=value`` for every request field with a :class:`serve.schemas.Train` override
    (``given`` replaces a field's value: the dataset's folder, the size, the registered name)."""
    out = []
    for field, info in type(req).model_fields.items():
        train = next((m for m in info.metadata if isinstance(m, Train)), None)
        value = given.get(field, getattr(req, field))
        if train is None or value in train.omit:
            continue
        out.append(f"{train.key}={_q(value) if train.quoted else value}")
    return out


def train_argv(req: FinetuneRequest, size: str, dataset_path: Path, name: str, folder: Path):
    """``geotune train`` with the request as Hydra overrides (:class:`serve.schemas.Train`),
    the run's name and folder, and the progress callback."""
    o = [
        *train_overrides(req, dataset=dataset_path, size=size, model_name=name),
        f"run_name={_q(f'{req.model_name}-{folder.name}')}",
        f"hydra.run.dir={_q(folder / 'run')}",
        "+callbacks.job_progress._target_=serve.progress.JobProgress",
        f"+callbacks.job_progress.path={_q(folder / 'progress.json')}",
    ]
    return [*geotune_command(), "train", *o]


class FinetuneKind(JobKind):
    def __init__(self, client_factory):
        self.client = client_factory

    def finalize(self, record: dict, folder: Path) -> dict:
        progress = read_json(folder / "progress.json") or {}
        run_id = progress.get("run_id")
        name = record["params"]["mlflow_name"]
        client = self.client()
        versions = (
            client.search_model_versions(f"name='{name}' and run_id='{run_id}'") if run_id else []
        )
        if not versions:
            raise JobFailed(
                f"training finished but no version of model {record['params']['model_name']!r} was "
                f"registered for its run {run_id}; see GET /v1/jobs/{record['id']}/logs"
            )
        version = max(versions, key=lambda v: int(v.version))
        client.set_registered_model_tag(name, "owner", record["owner"])
        run = client.get_run(run_id)
        metrics = {
            k: round(v, 6) for k, v in run.data.metrics.items() if k.startswith(("test/", "val/"))
        }
        return {
            "model": record["params"]["model_name"],
            "version": int(version.version),
            "alias": record["params"].get("alias"),
            "run_id": run_id,
            "metrics": dict(sorted(metrics.items())),
            "held_out": [s for s in ("val", "test") if any(k.startswith(f"{s}/") for k in metrics)],
        }

    def completed(self, record: dict, folder: Path) -> dict | None:
        """A version registered from this job's run means the fine-tune finished."""
        run_id = (read_json(folder / "progress.json") or {}).get("run_id")
        name = record["params"]["mlflow_name"]
        if not run_id or not self.client().search_model_versions(
            f"name='{name}' and run_id='{run_id}'"
        ):
            return None
        return self.finalize(record, folder)

    def abandon(self, record: dict, folder: Path, state: str) -> None:
        run_id = (read_json(folder / "progress.json") or {}).get("run_id")
        if not run_id:
            return
        client = self.client()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED" if state == "failed" else "KILLED")

    def resume(self, record: dict, folder: Path) -> tuple[list[str], str]:
        """``geotune train ... resume=<last checkpoint>`` (a new MLflow run continues from that
        epoch); from the start when no epoch's checkpoint exists yet."""
        last = folder / "run" / "checkpoints" / "last.ckpt"
        argv = [a for a in record["argv"] if not a.startswith("resume=")]
        if not last.is_file():
            return argv, "from the start (no epoch had finished)"
        return [*argv, f"resume={_q(last)}"], "from its last checkpoint"


__all__ = [
    "LOCAL",
    "FinetuneKind",
    "check_backbone",
    "check_dataset_fits",
    "check_name_free",
    "train_argv",
]
