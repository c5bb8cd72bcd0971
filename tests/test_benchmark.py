"""`geotune benchmark`: the grid through the real command, its files and its MLflow runs."""

import csv
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import env_with_home
from PIL import Image

from datamodules.ingest import ingest
from trainer.benchmark import BenchmarkError, benchmark, plan_budgets, summarize, write_results
from trainer.config import compose

GEOTUNE = str(Path(sys.executable).parent / "geotune")
FAMILIES = "[resnet18,prithvi_eo_v2_300,clay_v1_5]"


@pytest.fixture
def dataset(home, scene):
    return ingest(name="synth", images=[scene["image"]], labels=scene["labels"],
                  class_column="class_name", block_size=32, progress=False)  # fmt: skip


def test_benchmark_command_runs_the_grid_and_writes_results_and_runs(dataset, home, tmp_path):
    cmd = [GEOTUNE, "benchmark", "data.dataset=synth", f"backbones={FAMILIES}", "backbone.size=tiny",
           "backbone.weights=random", "budgets=[4,all]", "seeds=[0]", "trainer.max_epochs=1",
           "data.patch_size=32", "data.num_workers=0", "data.chips_per_epoch=16", "name=grid",
           f"out_dir={tmp_path / 'experiments'}"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=env_with_home(home), timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "3 backbones x 2 budgets x 1 seeds = 6 runs" in p.stdout

    out = tmp_path / "experiments" / "grid"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["backbone"], r["budget"]) for r in rows] == [
        (b, budget)
        for b in ("resnet18", "prithvi_eo_v2_300", "clay_v1_5")
        for budget in ("4", "all")
    ]
    total = dataset.manifest["splits"]["units"]["train"]
    assert {r["units"] for r in rows} == {"4", str(total)}
    assert {r["finetune"] for r in rows if r["backbone"] == "clay_v1_5"} == {
        "frozen"
    }  # its own recipe
    for r in rows:
        assert 0 <= float(r["test_mIoU"]) <= 1 and float(r["inference_chips_per_s"]) > 0
        assert int(r["parameters"]) >= int(r["trainable_parameters"]) > 0
        assert r["git_commit"] and {"test_IoU_water", "test_IoU_forest", "test_IoU_field"} <= set(r)
    md = (out / "results.md").read_text()
    assert (
        "| clay_v1_5 (tiny, random, frozen) |" in md
        and " ± " in md
        and "Random initialisation" in md
    )
    assert Image.open(out / "plot.png").size[0] > 300

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    parent = client.search_runs(
        [client.get_experiment_by_name("geotune").experiment_id],
        "tags.`geotune.benchmark` = 'grid'",
    )[0]
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "benchmark")} == {
        "benchmark/results.csv", "benchmark/results.md", "benchmark/plot.png"}  # fmt: skip
    for r in rows:
        child = client.get_run(r["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["data.budget"] == ("None" if r["budget"] == "all" else r["budget"])
        assert child.data.params["backbone.name"] == r["backbone"]
        assert child.data.metrics["test/mIoU"] == pytest.approx(float(r["test_mIoU"]))


def test_results_are_mean_and_sample_std_over_seeds(tmp_path, dataset):
    rows = [
        {"backbone": b, "size": "tiny", "weights": "random", "finetune": "full", "budget": u, "units": u,
         "seed": s, "test_mIoU": v, "test_IoU_water": v, "epochs": 1, "train_seconds": 1.0,
         "inference_chips_per_s": 10.0, "parameters": 5, "trainable_parameters": 5}
        for b, u, s, v in [("a", 10, 0, 0.2), ("a", 10, 1, 0.4), ("a", 20, 0, 0.5), ("b", 10, 0, 0.7)]
    ]  # fmt: skip
    stats = summarize(rows)
    assert stats[("a", 10)]["mean"] == pytest.approx(0.3) and stats[("a", 10)][
        "std"
    ] == pytest.approx(0.141421, 1e-4)
    assert stats[("b", 10)] == {"mean": 0.7, "std": 0.0, "n": 1}
    cfg = compose("benchmark", ["data.dataset=synth", "seeds=[0,1]", "name=t"])
    files = write_results(tmp_path, rows, dataset, "segmentation", cfg, "abc")
    assert [f.name for f in files] == ["results.csv", "results.md", "plot.png"]
    md = (tmp_path / "results.md").read_text()
    assert "| a (tiny, random, full) | 0.300 ± 0.141 | 0.500 ± 0.000 |" in md
    assert "| b (tiny, random, full) | 0.700 ± 0.000 |  |" in md


def test_benchmark_refuses_ddp_unknown_backbones_and_bad_budgets(dataset):
    with pytest.raises(BenchmarkError, match="DDP and several devices do not combine"):
        benchmark(compose("benchmark", ["data.dataset=synth", "trainer=ddp_cpu"]))
    with pytest.raises(BenchmarkError, match="unknown backbone 'vit_huge'.*clay_v1_5"):
        benchmark(compose("benchmark", ["data.dataset=synth", "backbones=[resnet18,vit_huge]"]))
    with pytest.raises(BenchmarkError, match="numbers of label units or 'all'"):
        benchmark(compose("benchmark", ["data.dataset=synth", "budgets=[10,most]"]))


def test_budgets_beyond_the_training_units_collapse_into_all(dataset):
    cfg = compose("benchmark", ["data.dataset=synth"])
    total = dataset.manifest["splits"]["units"]["train"]
    with pytest.warns(UserWarning, match="keeps the same"):
        plan = plan_budgets(cfg, [5, 10_000, None])
    assert plan == [(5, 5), (None, total)]


def test_benchmark_help_and_bad_input_through_the_command(home):
    env = env_with_home(home)
    p = subprocess.run(
        [GEOTUNE, "benchmark", "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0 and "geotune benchmark: fine-tune every backbone" in p.stdout
    p = subprocess.run(
        [GEOTUNE, "benchmark", "data.dataset=nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert (
        p.returncode == 2 and "error: no dataset 'nope'" in p.stderr and "Traceback" not in p.stderr
    )
