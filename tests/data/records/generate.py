"""Write dataset manifests and model records exactly as a given geotune checkout writes them.

The files here were written by geotune at commit 7493a75 (dataset format 1, model record
version 2), before the typed readers existed; ``tests/test_records.py`` checks that today's
readers load them. Run today, it writes the same files but for the datasets' ``created`` time
(the records and every tensor shape alike). Regenerate only to add files of a *new* format
version (keep the old ones):

    GEOTUNE_HOME=$(mktemp -d) PYTHONPATH=$PWD python tests/data/records/generate.py

- ``dataset-<task>.json``: the ``dataset.json`` that ``geotune data add`` wrote for a small
  synthetic scene (segmentation, classification, change).
- ``model-<task>.json``: the ``model.json`` a fine-tune registers (built as ``train`` builds it,
  without the fitting), with ``net_state``, the key and shape of every tensor of the network's
  state dict (``weights.pt``), so a reader can check that the record rebuilds the same network.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/: the synthetic data helpers

MODELS = {  # task -> backbone and task overrides
    "segmentation": ["backbone=resnet18", "task.decoder_channels=32"],
    "classification": ["backbone=prithvi_eo_v2_300", "task.head=mlp", "task.hidden=16"],
    "change": ["backbone=resnet18", "task.fusion=concat", "task.decoder_channels=32"],
}


def datasets(tmp: Path) -> dict:
    from synth import make_labels, make_scene
    from test_ingest_tasks import _change_pair, _points

    from datamodules.ingest import ingest

    image, cmap = make_scene(tmp, size=128, seed=0)
    common = {"block_size": 32, "progress": False, "sensor": "sentinel-2-l2a"}
    out = {
        "segmentation": ingest(
            name="seg",
            images=[image],
            labels=make_labels(tmp, image, cmap),
            class_column="class_name",
            **common,
        ),
        "classification": ingest(
            name="cls",
            images=[image],
            labels=_points(tmp, image, cmap)[0],
            class_column="lc",
            task="classification",
            chip_size=32,
            **common,
        ),
    }
    before, after, labels, *_ = _change_pair(tmp)
    out["change"] = ingest(
        name="chg",
        images=[before, after],
        labels=labels,
        task="change",
        background="no_change",
        **common,
    )
    return out


def record(task: str, ds, overrides: list[str]) -> dict:
    from trainer.config import compose
    from trainer.train import build, evaluation_plan, model_record, task_class

    cfg = compose(
        "train",
        [
            f"data.dataset={ds.path}",
            f"task={task}",
            "backbone.size=tiny",
            "backbone.weights=random",
            "register.name=fixture",
            "data.patch_size=32",
            *overrides,
        ],
    )
    b = build(cfg, task_class(cfg))  # what train() fits, without the fitting
    rec = model_record(
        cfg, b.ds, b.backbone, b.b_kwargs, b.task, b.bands, "0" * 32, b.dm.patch_size
    )
    rec["evaluation"] = evaluation_plan({"val": True, "test": True}, cfg.trainer.max_epochs)
    rec = json.loads(json.dumps(rec))  # as model.json holds it
    state = {k: list(v.shape) for k, v in b.task.net.state_dict().items()}
    return rec, state


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for task, ds in datasets(Path(tmp)).items():
            manifest = json.loads((ds.path / "dataset.json").read_text())
            (HERE / f"dataset-{task}.json").write_text(json.dumps(manifest, indent=2) + "\n")
            rec, state = record(task, ds, MODELS[task])
            out = {"model.json": rec, "net_state": state}
            (HERE / f"model-{task}.json").write_text(json.dumps(out, indent=2) + "\n")
            print(task, ds.path.name, len(state), "tensors")


if __name__ == "__main__":
    main()
