"""Configs are composed, not copied: trainer options start from ``cpu``, tasks share one optimizer
and one scheduler group, the benchmark composes each backbone through Hydra, and the sampler
rule lives where the Trainer is built."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from datamodules.errors import UserError
from trainer.benchmark import backbone_config
from trainer.config import compose, group_options
from trainer.train import build_trainer

BASE = ["data.dataset=x"]


def _trainer(option: str, *overrides: str) -> dict:
    cfg = compose("train", [*BASE, f"trainer={option}", *overrides])
    return OmegaConf.to_container(cfg.trainer)


def test_trainer_options_are_the_cpu_default_with_small_overrides():
    cpu = _trainer("cpu")
    expected = {
        "gpu": {"accelerator": "gpu", "precision": "bf16-mixed"},
        "ddp": {
            "accelerator": "gpu",
            "precision": "bf16-mixed",
            "devices": -1,
            "strategy": "ddp",
            "sync_batchnorm": True,
        },
        "ddp_cpu": {
            "devices": 2,
            "strategy": {
                "_target_": "lightning.pytorch.strategies.DDPStrategy",
                "process_group_backend": "gloo",
            },
        },
        "multinode": {
            "accelerator": "gpu",
            "precision": "bf16-mixed",
            "devices": -1,
            "strategy": "ddp",
            "sync_batchnorm": True,
            "num_nodes": 2,
        },
    }
    assert group_options("trainer") == sorted(["cpu", *expected])
    for option, changed in expected.items():
        assert _trainer(option) == cpu | changed, option
    assert _trainer("gpu", "trainer.max_epochs=3")["max_epochs"] == 3
    assert not any("use_distributed_sampler" in _trainer(o) for o in group_options("trainer"))


def test_the_trainer_never_uses_lightnings_distributed_sampler():
    trainer = build_trainer(compose("train", BASE).trainer, logger=False, enable_progress_bar=False)
    assert trainer._accelerator_connector.use_distributed_sampler is False
    asked = compose("train", [*BASE, "+trainer.use_distributed_sampler=true"]).trainer
    with pytest.raises(UserError, match="use_distributed_sampler=true would replace"):
        build_trainer(asked, logger=False)


def test_tasks_share_one_optimizer_and_scheduler_and_keep_their_override_paths():
    for task in group_options("task"):
        cfg = compose("train", [*BASE, f"task={task}"]).task
        assert OmegaConf.to_container(cfg.optimizer) == OmegaConf.to_container(
            compose("optimizer/adamw").optimizer
        )
        assert cfg.scheduler._target_ == "trainer.tasks.warmup_cosine"
        cfg = compose(
            "train",
            [*BASE, f"task={task}", "task.optimizer.lr=0.5", "task.scheduler.warmup_fraction=0.2"],
        ).task
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.5, 0.01)
        assert cfg.scheduler.warmup_fraction == 0.2
    exp = compose("train", [*BASE, "experiment=clay_v1_5_classification"]).task.optimizer
    assert (exp.lr, exp.weight_decay, exp._target_) == (1.0e-3, 0.05, "torch.optim.AdamW")


def test_benchmark_backbone_overrides_cover_every_backbone_key():
    """``benchmark.yaml``'s ``backbone:`` block is what a user may set on top of every
    backbone; each backbone option's keys (but its name) must be settable there."""
    block = compose("benchmark", BASE).backbone
    keys = set()
    for name in group_options("backbone"):
        keys |= set(compose(f"backbone/{name}").backbone) - {"name"}
    assert set(block) == keys
    assert all(v is None for v in block.values())


def test_benchmark_composes_each_backbone_with_its_overrides_on_top():
    cell = backbone_config("clay_v1_5", {"size": "tiny", "finetune": None, "weights": "random"})
    assert OmegaConf.to_container(cell) == OmegaConf.to_container(
        compose(
            "train", [*BASE, "backbone=clay_v1_5", "backbone.size=tiny", "backbone.weights=random"]
        ).backbone
    )
    assert cell.finetune == "frozen"  # null keeps the backbone's own (recommended) value


def test_a_finetune_request_becomes_the_train_overrides_its_fields_declare(tmp_path):
    """serve/schemas.py says once which `geotune train` key each fine-tune field sets; the
    job's command composes to a config holding every value the request gave."""
    from serve.schemas import FinetuneRequest, Train
    from serve.training import train_argv

    req = FinetuneRequest(
        dataset="d",
        model_name="m",
        backbone="clay_v1_5",
        size="tiny",
        weights="random",
        task="classification",
        alias=None,
        epochs=3,
        patch_size=64,
        batch_size=4,
        learning_rate=5e-4,
        chips_per_epoch=100,
        finetune="last_n",
        last_n=2,
        num_workers=0,
        seed=7,
    )
    argv = train_argv(req, "tiny", tmp_path / "ds", "owner__m", tmp_path / "job-1")
    overrides = argv[argv.index("train") + 1 :]
    cfg = compose("train", [o for o in overrides if not o.startswith("hydra.")])
    given = {"dataset": str(tmp_path / "ds"), "model_name": "owner__m"}
    groups = {"backbone": cfg.backbone.name, "task": cfg.task._target_.rsplit(".", 1)[1]}
    assert groups == {"backbone": "clay_v1_5", "task": "ClassificationTask"}
    for field, info in FinetuneRequest.model_fields.items():
        train = next((m for m in info.metadata if isinstance(m, Train)), None)
        if train is None or train.key in groups:
            continue
        assert OmegaConf.select(cfg, train.key) == given.get(field, getattr(req, field)), field
    assert cfg.run_name == "m-job-1" and cfg.callbacks.job_progress.path.endswith("progress.json")
    default = FinetuneRequest(dataset="d", model_name="m")
    argv = train_argv(default, "18", tmp_path / "ds", "owner__m", tmp_path / "job-2")
    assert not [o for o in argv if o.startswith(("backbone.weights", "register.alias=null"))]
