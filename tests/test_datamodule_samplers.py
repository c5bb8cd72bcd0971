"""Samplers under data parallelism, with explicit rank and world size: training chips differ
between ranks and epochs, validation/test chips are split without padding (each exactly once),
and Lightning leaves the samplers alone instead of wrapping them in its own."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import env_with_home
from lightning.pytorch.trainer.connectors.data_connector import _DataConnector

from datamodules.datamodule import GeotuneDataModule
from datamodules.ingest import ingest
from datamodules.samplers import ShardedSampler, ShuffledShardSampler


@pytest.fixture
def seg(home, scene):
    return ingest(
        name="seg", images=[scene["image"]], labels=scene["labels"], class_column="class_name",
        block_size=32, progress=False,
    )  # fmt: skip


def _ranked(ds, rank, world, seed=0, **kw):
    dm = GeotuneDataModule(
        ds.id, patch_size=32, batch_size=4, num_workers=0, chips_per_epoch=40, seed=seed, **kw
    )
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)  # what Lightning sets
    return dm


def _origins(sampler):
    return [(round(x.start), round(y.start)) for x, y in sampler]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharded_sampler_gives_each_item_exactly_once(world):
    items = list(range(10))
    shards = [list(ShardedSampler(items, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == items  # no padding, no repeats
    assert [len(ShardedSampler(items, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_shuffled_shards_differ_per_rank_and_epoch():
    items = list(range(23))
    world = 3
    samplers = [ShuffledShardSampler(items, r, world, seed=5) for r in range(world)]
    epochs = []
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        assert all(len(sh) == 7 == len(s) for sh, s in zip(shards, samplers, strict=True))
        flat = [i for sh in shards for i in sh]
        assert len(set(flat)) == len(flat) == 21  # disjoint across ranks
        epochs.append(shards)
    assert epochs[0] != epochs[1] != epochs[2]
    samplers[0].set_epoch(1)
    assert list(samplers[0]) == epochs[1][0]  # (seed, epoch) fixes the draw
    # without set_epoch (no Lightning) the epoch advances after each pass
    fresh = ShuffledShardSampler(items, 0, world, seed=5)
    assert [list(fresh), list(fresh)] == [epochs[0][0], epochs[1][0]]


def test_training_chips_differ_per_rank_and_epoch_and_are_reproducible(seg):
    world = 2
    samplers = [_ranked(seg, r, world)._split("train")[1] for r in range(world)]
    assert [len(s) for s in samplers] == [20, 20]  # chips_per_epoch shared among ranks
    draws = {}
    for epoch in range(2):
        for r, s in enumerate(samplers):
            s.set_epoch(epoch)
            draws[r, epoch] = _origins(s)
    assert draws[0, 0] != draws[1, 0] and draws[0, 0] != draws[0, 1] and draws[1, 0] != draws[1, 1]
    again = _ranked(seg, 1, world)._split("train")[1]
    again.set_epoch(1)
    assert _origins(again) == draws[1, 1]
    other_seed = _ranked(seg, 1, world, seed=1)._split("train")[1]
    other_seed.set_epoch(1)
    assert _origins(other_seed) != draws[1, 1]


@pytest.mark.parametrize("world", [2, 3])
def test_eval_chips_split_across_ranks_without_padding(seg, world):
    single = {s: _origins(_ranked(seg, 0, 1)._split(s)[1]) for s in ("val", "test")}
    for split, chips in single.items():
        per_rank = [_origins(_ranked(seg, r, world)._split(split)[1]) for r in range(world)]
        flat = [c for p in per_rank for c in p]
        assert sorted(flat) == sorted(chips) and len(set(flat)) == len(flat)


def test_lightning_does_not_wrap_the_samplers(seg):
    """Lightning's own check (use_distributed_sampler and a distributed run) says no."""
    fake = SimpleNamespace(
        trainer=SimpleNamespace(
            _accelerator_connector=SimpleNamespace(
                use_distributed_sampler=True, is_distributed=True
            )
        )
    )
    dm = _ranked(seg, 0, 2)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert not _DataConnector._requires_distributed_sampler(fake, loader)


DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from datamodules.datamodule import GeotuneDataModule


class Record(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = {"train": {}, "val": []}

    def training_step(self, batch, i):
        key = str(self.current_epoch)
        self.seen["train"].setdefault(key, []).extend(map(tuple, batch["window"].tolist()))
        return (self.w * batch["image"].mean()).sum()

    def validation_step(self, batch, i):
        if self.current_epoch == 0:
            self.seen["val"].extend(map(tuple, batch["window"].tolist()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_fit_end(self):
        with open(f"{sys.argv[2]}/rank{self.global_rank}.json", "w") as f:
            json.dump(self.seen, f)


dm = GeotuneDataModule(sys.argv[1], patch_size=32, batch_size=4, num_workers=0, chips_per_epoch=16)
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
)
trainer.fit(Record(), datamodule=dm)
"""


@pytest.mark.slow
def test_ddp_two_ranks_see_different_training_chips_and_every_val_chip_once(seg, home, tmp_path):
    script = tmp_path / "ddp_record.py"
    script.write_text(DDP_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), seg.id, str(tmp_path)],
        env=env_with_home(home), check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        a, b = (set(map(tuple, s["train"][epoch])) for s in seen)
        assert len(seen[0]["train"][epoch]) == len(seen[1]["train"][epoch]) == 8
        assert a != b
    assert seen[0]["train"]["0"] != seen[0]["train"]["1"]  # reshuffled every epoch
    val = [tuple(w) for s in seen for w in s["val"]]
    expected = _origins_windows(seg)
    assert sorted(val) == sorted(expected) and len(set(val)) == len(val)


def _origins_windows(ds):
    dm = GeotuneDataModule(ds.id, patch_size=32, batch_size=4, num_workers=0)
    return [tuple(w) for b in dm.val_dataloader() for w in b["window"].tolist()]
