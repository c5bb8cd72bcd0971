"""DDP through the real command line: `geotune train trainer=ddp_cpu trainer.devices=2 ...` as a
subprocess (Lightning re-executes it per rank, gloo on CPU). One MLflow run and one registered
version (rank 0 only), and validation/test count every chip exactly once across the ranks."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
from conftest import env_with_home

from datamodules.datamodule import GeotuneDataModule
from datamodules.ingest import ingest

GEOTUNE = str(Path(sys.executable).parent / "geotune")


def test_ddp_cpu_two_ranks_logs_once_and_counts_each_chip_once(home, scene, tmp_path):
    ingest(name="synth", images=[scene["image"]], labels=scene["labels"],
           class_column="class_name", block_size=32, progress=False)  # fmt: skip
    dm = GeotuneDataModule("synth", patch_size=40, batch_size=4, num_workers=0)
    expected, chips = 0, 0
    for batch in dm.test_dataloader():
        expected += int((batch["mask"] != 255).sum())
        chips += len(batch["mask"])
    assert chips >= 3 and chips % 2 == 1  # both ranks get chips; a padding sampler would repeat one

    cmd = [GEOTUNE, "train", "trainer=ddp_cpu", "trainer.devices=2", "data.dataset=synth",
           "backbone.size=tiny", "backbone.weights=random", "data.patch_size=40",
           "data.batch_size=4", "data.num_workers=0", "data.chips_per_epoch=16",
           "trainer.max_epochs=2", "register.name=ddpmodel", "register.alias=champion"]  # fmt: skip
    p = subprocess.run(
        cmd, capture_output=True, text=True, env=env_with_home(home), timeout=900, cwd=tmp_path
    )
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert "MEMBER: 2/2" in log and "Traceback" not in log

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("geotune").experiment_id])
    assert len(runs) == 1  # rank 1 created no run
    run = runs[0]
    assert {"val/mIoU", "test/mIoU", "test/loss", "train/loss_epoch"} <= set(run.data.metrics)
    versions = client.search_model_versions("name='ddpmodel'")
    assert [int(v.version) for v in versions] == [1] and versions[0].run_id == run.info.run_id
    table = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "metrics/test_confusion.json", str(tmp_path))
        ).read_text()
    )
    assert sum(map(sum, table["confusion"])) == expected  # each test pixel once, over both ranks
