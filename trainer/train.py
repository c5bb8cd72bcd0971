"""``train(cfg)``: dataset → backbone + task → Lightning fit/test → MLflow run → registry.

``geotune train`` runs it as a Hydra app (:func:`trainer.cli_hydra.run_hydra`); tests, the demo, the
benchmark and the service's fine-tune jobs (through ``geotune train``) call the same ``train``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from datamodules.errors import UserError

from .config import flat_params, register_resolvers


def _output_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
        from datamodules.paths import home

        d = home() / "runs" / time.strftime("%Y-%m-%d/%H-%M-%S") / f"{os.getpid()}"
        d.mkdir(parents=True, exist_ok=True)
        return d


def task_class(cfg: DictConfig):
    """The LightningModule class ``cfg.task`` builds (it says which datasets it trains on)."""
    from hydra.utils import get_class

    from .tasks import GeoTask

    cls = get_class(cfg.task._target_)
    if not issubclass(cls, GeoTask):
        raise UserError(f"task._target_ {cfg.task._target_} is not a geotune task")
    return cls


def check_task(cls, ds) -> None:
    have = ds.manifest.task
    if have != cls.kind:
        raise UserError(
            f"dataset {ds.id!r} holds {have} labels but task={cls.kind} was asked for; "
            f"use task={have}, or a dataset made for {cls.kind}"
        )


@dataclass
class Built:
    """What a run trains: the data module, its dataset, the backbone (and the arguments that
    rebuild it), the model's bands and the Lightning task."""

    dm: object
    ds: object
    backbone: object
    b_kwargs: dict
    bands: list[str]
    task: object


def build(cfg: DictConfig, cls) -> Built:
    """The data module and the task ``cfg`` describes, the backbone fitted to the dataset."""
    from hydra.utils import instantiate

    from .backbones import get_entry
    from .backbones.adapt import backbone_for_dataset
    from .chips import dataset_metres

    dm = instantiate(cfg.data, seed=cfg.seed)
    ds = dm.ds
    check_task(cls, ds)
    b_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    for key, value in cls.backbone_overrides(task_cfg, get_entry(b_cfg["name"])).items():
        if b_cfg.get(key) is None:
            b_cfg[key] = value
    backbone, b_kwargs = backbone_for_dataset(b_cfg, ds, dm.patch_size)
    bands = dm.configure_bands(list(backbone.spec.bands), backbone.spec.any_bands)
    task = instantiate(
        cfg.task,
        backbone=backbone,
        classes=ds.classes,
        ignore_index=ds.ignore_index,
        bands=bands,
        gsd=float(dataset_metres(ds.manifest)[0]),
        finetune=cfg.backbone.finetune,
        last_n=cfg.backbone.last_n,
        _convert_="all",
    )
    task.example_input_array = dm.example_image()
    return Built(dm, ds, backbone, b_kwargs, bands, task)


def train(
    cfg: DictConfig, parent_run_id: str | None = None, output_dir: str | Path | None = None
) -> dict:
    """Fine-tune as configured; returns run id, metrics, checkpoint and registered version.

    ``parent_run_id``: make the MLflow run a child of this run (the benchmark's parent run);
    ``output_dir``: where checkpoints go (default: the Hydra run folder, or a new one).
    """
    import lightning as L
    from hydra.utils import instantiate

    from .registry import setup_mlflow

    register_resolvers()
    L.seed_everything(cfg.seed, workers=True)
    setup_mlflow()
    cls = task_class(cfg)
    out_dir = Path(output_dir) if output_dir else _output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    built = build(cfg, cls)
    dm, ds = built.dm, built.ds
    held_out = {s: dm.has_labels(s) for s in ("val", "test")}
    evaluation = evaluation_plan(held_out, int(cfg.trainer.max_epochs))
    tags = run_tags(cfg, ds, cls.kind, parent_run_id, held_out)
    run_name = cfg.run_name or f"{cfg.backbone.name}-{ds.id}"
    logger = instantiate(cfg.logger, run_name=run_name, tags=tags)
    callbacks = make_callbacks(cfg.callbacks, monitor=held_out["val"])
    if "checkpoint" in callbacks:
        callbacks["checkpoint"].dirpath = str(out_dir / "checkpoints")
    trainer = build_trainer(
        cfg.trainer,
        logger=logger,
        callbacks=list(callbacks.values()),
        default_root_dir=str(out_dir),
        **({} if held_out["val"] else {"limit_val_batches": 0}),
    )
    if trainer.is_global_zero:
        announce(cfg, cls.kind, built, evaluation, logger)
    fitted, seconds = fit_and_test(
        trainer, built, cfg.resume, callbacks.get("checkpoint"), held_out
    )
    result = {
        "run_id": logger.run_id,
        "dataset_id": ds.id,
        "task": cls.kind,
        **fitted,
        "classes": [c["name"] for c in ds.classes],
        "evaluation": evaluation,
        "model_version": None,
        "output_dir": str(out_dir),
    }
    if trainer.is_global_zero:
        result |= log_and_register(cfg, built, logger, result, seconds)
    return result


def run_tags(cfg, ds, kind: str, parent_run_id: str | None, held_out: dict) -> dict:
    """The MLflow run's tags: dataset, backbone, task, owner, parent run, held-out splits."""
    tags = {
        "dataset_id": ds.id,
        "backbone": cfg.backbone.name,
        "task": kind,
        "owner": ds.manifest.owner,
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags["geotune.held_out"] = ",".join(s for s, v in held_out.items() if v) or "none"
    return tags


def announce(cfg, kind: str, built: Built, evaluation: dict, logger) -> None:
    """Rank 0: say what is trained on what, and log the config, dataset and normalisation."""
    from .backbones.adapt import describe_normalization, normalization_params

    dm, ds, spec = built.dm, built.ds, built.backbone.spec
    weights_note = (
        "random initialisation (backbone.weights=random)"
        if spec.weights == "random"
        else f"pretrained weights from {spec.weights}"
    )
    if spec.weights == "random" and cfg.backbone.finetune == "frozen":
        warnings.warn(
            "backbone.finetune=frozen with random weights: only the head learns, on a random "
            "encoder (set backbone.finetune=full to train the encoder too)",
            stacklevel=3,
        )
    print(
        f"geotune: {kind} with {cfg.backbone.name} ({spec.size}) from {weights_note}, "
        f"fine-tune {cfg.backbone.finetune}; dataset {ds.id}: {ds.num_classes} classes, bands {','.join(built.bands)}"
    )
    print(f"geotune: {describe_normalization(spec.normalization)}")
    print(f"geotune: {dm.sampling()}")
    if evaluation["note"]:
        print(f"geotune: {evaluation['note']}")
    logger.log_hyperparams(flat_params(cfg))
    logger.log_hyperparams(normalization_params(spec.normalization, spec.mean, spec.std))
    resolved = {
        "patch_size": dm.patch_size,
        "chips_per_epoch": dm.chips_per_epoch,
        "sampler": dm.sampler,
    }
    logger.log_hyperparams({f"resolved.data.{k}": v for k, v in resolved.items()})
    client = logger.experiment
    client.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
    client.log_text(
        logger.run_id, json.dumps(ds.manifest.to_dict(), indent=2), "dataset/dataset.json"
    )
    client.set_tag(logger.run_id, "weights", spec.weights)
    _log_dataset_input(logger.run_id, ds)


def fit_and_test(trainer, built: Built, resume, ckpt, held_out: dict) -> tuple[dict, float]:
    """Fit (from ``resume``, a checkpoint, if given), restore the best validation epoch, test;
    the result's metrics, checkpoint, epochs, timing, parameter counts and confusion, and the
    seconds the fit took."""
    task, dm = built.task, built.dm
    t0 = time.time()
    trainer.fit(task, datamodule=dm, ckpt_path=resume)
    train_seconds = time.time() - t0
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = None
    if held_out["val"] and ckpt is not None and ckpt.monitor and ckpt.best_model_path:
        best = ckpt.best_model_path
        if ckpt.best_model_score is not None:
            val["val/mIoU"] = float(ckpt.best_model_score)  # the restored (best) epoch's score
        if not held_out["test"]:  # the best epoch's weights are registered, as after a test
            import torch

            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            task.load_state_dict(state)
    test_metrics = (
        trainer.test(task, datamodule=dm, ckpt_path="best" if best else None, verbose=False)
        if held_out["test"]
        else []
    )
    return {
        "parameters": sum(p.numel() for p in task.net.parameters()),
        "trainable_parameters": sum(p.numel() for p in task.net.parameters() if p.requires_grad),
        "best_checkpoint": best,
        "epochs": int(trainer.current_epoch),
        "global_rank": int(trainer.global_rank),
        "train_seconds": round(train_seconds, 2),
        "val": val,
        "test": test_metrics[0] if test_metrics else {},
        "confusion": {k: v.tolist() for k, v in task.last_confusion.items()},
    }, train_seconds


def log_and_register(cfg, built: Built, logger, result: dict, train_seconds: float) -> dict:
    """Rank 0: the run's last metrics, the model logged to MLflow and, with register.name,
    registered; ends the run. Returns the result's model URI and registered version."""
    import mlflow

    from .registry import log_model, register

    for key, value in (
        ("train/seconds", train_seconds),
        ("model/parameters", result["parameters"]),
        ("model/trainable_parameters", result["trainable_parameters"]),
    ):
        logger.experiment.log_metric(logger.run_id, key, value)
    ds, task = built.ds, built.task
    record = model_record(
        cfg,
        ds,
        built.backbone,
        built.b_kwargs,
        task,
        built.bands,
        logger.run_id,
        built.dm.patch_size,
    )
    record["evaluation"] = result["evaluation"]
    info = log_model(logger.run_id, task.net, record, OmegaConf.to_yaml(cfg, resolve=True))
    out = {"model_uri": info.model_uri}
    if cfg.register.name:
        tags = {
            "run_id": logger.run_id,
            "dataset_id": ds.id,
            "backbone": cfg.backbone.name,
            "task": task.kind,
            "owner": ds.manifest.owner,
        }
        mv = register(info.model_uri, cfg.register.name, cfg.register.alias, tags)
        out |= {"model_version": int(mv.version), "registered_name": cfg.register.name}
    logger.finalize("success")
    mlflow.end_run()
    return out


def build_trainer(trainer_cfg: DictConfig, **kwargs):
    """The Lightning Trainer ``trainer_cfg`` describes, always with
    ``use_distributed_sampler=False``: geotune's samplers shard by rank themselves (no padded
    duplicates, so every held-out chip counts once); Lightning's sampler would replace them."""
    from hydra.utils import instantiate

    if trainer_cfg.get("use_distributed_sampler"):
        raise UserError(
            "trainer.use_distributed_sampler=true would replace geotune's samplers, which shard "
            "the chips by rank themselves; remove the override"
        )
    return instantiate(trainer_cfg, **kwargs, use_distributed_sampler=False)


def evaluation_plan(held_out: dict[str, bool], epochs: int) -> dict:
    """Which held-out metrics a run will have, which weights it registers, and the note that
    says so when a split has no labels."""
    val, test = held_out["val"], held_out["test"]
    note = None
    if not val:
        note = f"no validation labels: training for {epochs} epochs without early stopping; " + (
            "the last epoch is tested and registered" if test else "no held-out metric"
        )
    elif not test:
        note = "no test labels: the best validation epoch is registered without a test score"
    return {
        "metrics": ["train"] + [s for s in ("val", "test") if held_out[s]],
        "early_stopping": val,
        "weights": "best validation epoch" if val else "last epoch",
        "note": note,
    }


def make_callbacks(configs, monitor: bool) -> dict:
    """The configured callbacks; without validation labels (``monitor`` False), callbacks that
    watch a ``val/`` metric are dropped, and the checkpoint keeps the last epoch instead."""
    from hydra.utils import instantiate

    out = {}
    for key, conf in configs.items():
        if conf is None:
            continue
        watches = str(conf.get("monitor") or "").startswith("val/")
        if watches and not monitor:
            if key != "checkpoint":
                continue
            out[key] = instantiate(conf, monitor=None, mode="min")
        else:
            out[key] = instantiate(conf)
    return out


def model_record(cfg, ds, backbone, b_kwargs, task, bands, run_id, patch_size: int) -> dict:
    from rasterio.warp import transform_bounds

    from .chips import dataset_metres
    from .record import RECORD_VERSION

    spec = backbone.spec
    lonlat = transform_bounds(ds.manifest.crs_wkt, "EPSG:4326", *ds.manifest.bounds)
    return {
        "geotune_model": RECORD_VERSION,
        "name": cfg.register.name,
        "task": task.kind,
        "backbone": {
            "name": cfg.backbone.name,
            "size": spec.size,
            "weights": spec.weights,
            "kwargs": b_kwargs,
            "spec": spec.to_dict(),
        },
        **task.net.config(),
        "num_classes": ds.num_classes,
        "classes": [
            {k: c[k] for k in ("id", "name", "slug", "color", "value")} for c in ds.classes
        ],
        "ignore_index": ds.ignore_index,
        "output_nodata": ds.manifest.output_nodata,
        "bands": bands,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "normalization": spec.normalization,
        "sensor": ds.manifest.sensor,
        "resolution": dataset_metres(ds.manifest),  # metres on the ground
        "num_frames": len(ds.images),
        "patch_size": int(patch_size),
        "overlap": max(16, int(patch_size) // 8),
        "bounds_lonlat": list(lonlat),
        "run_id": run_id,
        "dataset_id": ds.id,
    }


def _log_dataset_input(run_id: str, ds) -> None:
    """The dataset as an MLflow run input (name, digest of its manifest, source folder)."""
    import hashlib
    import warnings

    from mlflow import MlflowClient
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(ds.path))
    manifest = json.dumps(ds.manifest.to_dict(), sort_keys=True)
    digest = hashlib.sha1(manifest.encode()).hexdigest()[:10]
    entity = MetaDataset(source=source, name=ds.id, digest=digest)._to_mlflow_entity()
    tags = [
        InputTag("mlflow.data.context", "training"),
        InputTag("classes", ",".join(ds.class_names)),
    ]
    MlflowClient().log_inputs(run_id, datasets=[DatasetInput(entity, tags)])
