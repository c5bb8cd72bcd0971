"""Each task trains through ``train(cfg)`` (Hydra config → Lightning → MLflow → registry) from a
dataset folder ingested from GeoTIFFs + label files, and its model reloads by alias; early
stopping, best-checkpoint restore and resume work.

The scenes are seeded and synthetic (spectra per class, see ``synth.py``) so that each task is
learnable in a few CPU epochs: tiles of one class (classification, one point per tile), class
regions that change between two dates (change detection, polygons over the changes).
"""

import json
from pathlib import Path

import geopandas as gpd
import mlflow
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import torch
from mlm_check import check_mlm_item
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate
from synth import BANDS, CLASSES, SPECTRA, class_map

from datamodules.datamodule import GeotuneDataModule
from datamodules.errors import UserError
from datamodules.ingest import ingest
from trainer.cli import main
from trainer.config import compose
from trainer.registry import load_model
from trainer.train import train

EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
)
ORIGIN, RES = (500000.0, 4200000.0), 10.0
TINY = ["backbone.size=tiny", "backbone.weights=random", "data.num_workers=0", "data.batch_size=8"]
TINY_SEG = [*TINY, "data.patch_size=64", "data.chips_per_epoch=32"]


def write_scene(path: Path, cmap: np.ndarray, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    img = SPECTRA[cmap].transpose(2, 0, 1) + rng.normal(0, 150, (len(BANDS), *cmap.shape))
    profile = dict(driver="GTiff", width=cmap.shape[1], height=cmap.shape[0], count=len(BANDS),
                   dtype="uint16", crs="EPSG:32633", transform=from_origin(*ORIGIN, RES, RES), nodata=0)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.clip(img, 1, 20000).astype(np.uint16))
        dst.descriptions = tuple(BANDS)
    return path


def xy(row: float, col: float) -> tuple[float, float]:
    return ORIGIN[0] + col * RES, ORIGIN[1] - row * RES


def classification_dataset(
    folder: Path, name="tiles", multi_label=False, size=256, tile=32, seed=0
):
    """Tiles of one class (multi-label: a second class in a corner block), a point per tile."""
    rng = np.random.default_rng(seed)
    n = size // tile
    cmap = np.zeros((size, size), dtype=np.int64)
    points, labels = [], []
    for i in range(n):
        for j in range(n):
            base, other = rng.choice(len(CLASSES), 2, replace=False)
            cmap[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = base
            names = [CLASSES[base]]
            if multi_label and rng.random() < 0.6:
                cmap[i * tile : i * tile + tile // 2, j * tile : j * tile + tile // 2] = other
                names.append(CLASSES[other])
            points.append(shapely.Point(*xy((i + 0.5) * tile, (j + 0.5) * tile)))
            labels.append(";".join(names))
    image = write_scene(folder / f"{name}.tif", cmap, seed)
    gdf = gpd.GeoDataFrame({"label": labels}, geometry=points, crs="EPSG:32633")
    gdf.to_file(folder / f"{name}.geojson")
    return ingest(name=name, images=[image], labels=folder / f"{name}.geojson", class_column="label",
                  task="classification", chip_size=tile, multi_label=multi_label, block_size=2 * tile,
                  progress=False)  # fmt: skip


def change_dataset(folder: Path, name="changes", size=128, seed=0):
    """Two dates of class regions; rectangles that changed class, drawn as 'change' polygons."""
    rng = np.random.default_rng(seed)
    before = class_map(size, seed).astype(np.int64)
    after = before.copy()
    polygons = []
    for _ in range(40):
        r, c = rng.integers(0, size - 16, 2)
        h, w = rng.integers(6, 16, 2)
        after[r : r + h, c : c + w] = (before[r, c] + rng.integers(1, 3)) % 3
        polygons.append(shapely.box(*xy(r + h, c), *xy(r, c + w)))
    images = [
        write_scene(folder / f"{name}_{t}.tif", m, seed + t) for t, m in enumerate((before, after))
    ]
    changed = shapely.union_all(polygons)
    gdf = gpd.GeoDataFrame({"class": ["change"]}, geometry=[changed], crs="EPSG:32633").explode()
    gdf.to_file(folder / f"{name}.geojson")
    return ingest(name=name, images=images, labels=folder / f"{name}.geojson", class_column="class",
                  task="change", background="no change", dates=["2023-06-01", "2024-06-01"],
                  block_size=32, progress=False)  # fmt: skip


def tile_truth(labels: Path, record: dict) -> np.ndarray:
    """The class of each tile of :func:`classification_dataset` (single-label) as an 8 x 8 grid."""
    ids = {c["name"]: c["id"] for c in record["classes"]}
    truth = np.full((8, 8), 255, np.uint8)
    for label, point in zip(
        *(gpd.read_file(labels)[k] for k in ("label", "geometry")), strict=True
    ):
        row, col = (
            int((ORIGIN[1] - point.y) // (32 * RES)),
            int((point.x - ORIGIN[0]) // (32 * RES)),
        )
        truth[row, col] = ids[label]
    return truth


def figures(run_id: str) -> set[str]:
    client = mlflow.MlflowClient()
    return {
        a.path
        for folder in ("figures", "figures/val")
        for a in client.list_artifacts(run_id, folder)
    }


def test_classification_learns_logs_metrics_figures_and_predicts_from_the_registry(home, tmp_path):
    ds = classification_dataset(tmp_path)
    # no data.patch_size: the dataset's chip size (32) is the training default
    cfg = compose("train", ["data.dataset=tiles", "task=classification", *TINY,
                            "trainer.max_epochs=6", "task.optimizer.lr=3e-3",
                            "register.name=scenes", "register.alias=champion"])  # fmt: skip
    result = train(cfg)
    m = mlflow.MlflowClient().get_run(result["run_id"]).data.metrics
    for key in ("val/mIoU", "val/accuracy_micro", "val/accuracy_macro", "val/F1_micro",
                "val/F1_macro", "val/F1/water", "test/accuracy_micro", "test/IoU/field",
                "test/loss", "train/loss_epoch", "test/chips_per_s", "model/parameters"):  # fmt: skip
        assert key in m, key
    assert m["test/accuracy_micro"] > 0.8  # chance is 1/3
    figs = figures(result["run_id"])
    assert {"figures/test_confusion.png", "figures/test_per_class.png"} <= figs
    assert {"figures/val/epoch_005_overlay.png", "figures/val/epoch_005_confusion.png"} <= figs

    model = load_model("scenes@champion")
    assert model.record["task"] == "classification" and model.record["pool"] == "mean"
    assert model.record["patch_size"] == ds.manifest["chip_size"] == 32
    uri = mlflow.MlflowClient().get_model_version_download_uri("scenes", "1")
    card = json.loads(mlflow.artifacts.load_text(f"{uri}/artifacts/mlm-item.json"))
    check_mlm_item(card, model.record)  # input shape [-1, 4, 32, 32]: the trained chip
    dm = GeotuneDataModule(ds.id, patch_size=32, batch_size=8, num_workers=0)
    batch = next(iter(dm.test_dataloader()))
    pyfunc = mlflow.pyfunc.load_model("models:/scenes@champion")
    out = pyfunc.predict(batch["image"].numpy())
    n = len(batch["label"])
    assert out["classes"].shape == (n,) and out["probabilities"].shape == (n, 3)
    assert (out["classes"] == batch["label"].numpy()).mean() > 0.6
    with pytest.raises(Exception, match=r"expected float32 \[B, 4, H, W\]"):
        pyfunc.unwrap_python_model().predict(None, np.zeros((1, 3, 32, 32), np.float32))

    # the whole scene through `geotune predict`: one class per 32 px chip, a coarse 8 x 8 COG
    out = tmp_path / "pred"
    assert main(["predict", "--model", "scenes@champion", "--image", str(tmp_path / "tiles.tif"),
                 "--out", str(out), "--tile-size", "100"]) == 0  # fmt: skip
    truth = tile_truth(tmp_path / "tiles.geojson", model.record)
    with rasterio.open(out / "classes.tif") as src:
        assert cog_validate(str(out / "classes.tif"))[0]
        assert src.res == (320.0, 320.0) and src.shape == (8, 8) and src.nodata == 255
        cls = src.read(1)
    assert (cls == truth).mean() > 0.8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["n_chips"] == 64
    assert summary["n_pixels"] == 256 * 256
    for row in summary["class_histogram"]:
        assert row["chips"] == (cls == row["id"]).sum() and row["pixels"] == row["chips"] * 32 * 32
        assert row["area_m2"] == pytest.approx(row["pixels"] * 100.0, rel=2e-3)  # on the ellipsoid
    fc = json.loads((out / "polygons.geojson").read_text())
    total = sum(f["properties"]["area_m2"] for f in fc["features"])
    assert total == pytest.approx(256 * 256 * 100, rel=2e-3)


def test_multi_label_classification_with_a_vit(home, tmp_path):
    classification_dataset(tmp_path, name="mixed", multi_label=True)
    base = [
        "data.dataset=mixed",
        "experiment=prithvi_eo_v2_300_classification",
        *TINY,
        "data.patch_size=32",
    ]
    cfg = compose(
        "train", [*base, "task.multi_label=true", "task.head=mlp", "trainer.max_epochs=1"]
    )
    result = train(cfg)
    assert {"test/F1_micro", "test/F1_macro", "test/accuracy_macro", "test/mIoU"} <= set(
        result["test"]
    )
    x = np.full((2, 4, 32, 32), 1000, np.float32)
    out = mlflow.pyfunc.load_model(result["model_uri"]).predict(x)
    assert out["classes"].shape == (2, 3) and set(np.unique(out["classes"])) <= {0, 1}
    assert out["probabilities"].shape == (2, 3)
    with pytest.raises(UserError, match="several labels per chip.*task.multi_label=true"):
        train(compose("train", [*base, "+trainer.fast_dev_run=true"]))


def test_change_detection_learns_and_predicts_two_dates(home, tmp_path, capsys):
    ds = change_dataset(tmp_path)
    cfg = compose("train", ["data.dataset=changes", "task=change", *TINY, "data.patch_size=32",
                            "data.chips_per_epoch=64", "trainer.max_epochs=6", "task.optimizer.lr=3e-3",
                            "task.fusion=concat"])  # fmt: skip
    result = train(cfg)
    m = mlflow.MlflowClient().get_run(result["run_id"]).data.metrics
    assert {
        "val/mIoU",
        "val/OA",
        "val/IoU/change",
        "test/IoU/no_change",
        "test/recall/change",
    } <= set(m)
    assert m["test/IoU/change"] > 0.4  # the changed rectangles are found
    assert "figures/val/epoch_005_overlay.png" in figures(result["run_id"])
    pyfunc = mlflow.pyfunc.load_model(result["model_uri"])
    assert "(-1, 4, 2, -1, -1)" in str(pyfunc.metadata.get_input_schema())
    batch = next(
        iter(GeotuneDataModule(ds.id, patch_size=32, batch_size=8, num_workers=0).test_dataloader())
    )
    out = pyfunc.predict(batch["image"].numpy())
    n = len(batch["mask"])
    assert out["classes"].shape == (n, 32, 32) and out["probabilities"].shape == (n, 2, 32, 32)
    labelled = batch["mask"].numpy() != 255
    assert (out["classes"] == batch["mask"].numpy())[labelled].mean() > 0.8

    # both dates through `geotune predict` (oldest first): the change mask of the whole scene
    out, images = tmp_path / "pred", [str(tmp_path / f"changes_{t}.tif") for t in (0, 1)]
    model_ref = result["model_uri"]
    argv = ["predict", "--model", model_ref, "--out", str(out), "--chip-size", "64"]
    assert main([*argv, "--image", images[0], "--image", images[1]]) == 0
    for name in ("classes.tif", "confidence.tif"):
        assert cog_validate(str(out / name))[0]
    with rasterio.open(out / "classes.tif") as src:
        cls = src.read(1)
    truth = rasterio.features.rasterize(
        gpd.read_file(tmp_path / "changes.geojson").geometry, out_shape=cls.shape,
        transform=from_origin(*ORIGIN, RES, RES),
    )  # fmt: skip
    change = next(c["id"] for c in load_model(model_ref).record["classes"] if c["name"] == "change")
    assert ((cls == change) == (truth == 1)).mean() > 0.85
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "change" and summary["provenance"]["dates"] == [None, None]
    assert summary["input"]["date_order"] == "as given (a date is unknown)"
    assert main([*argv, "--image", images[0]]) == 2
    assert "takes a before and an after image" in capsys.readouterr().err

    # given after, before with their dates: predicted oldest first, and said so
    late = [
        "--image",
        images[1],
        "--image",
        images[0],
        "--date",
        "2024-06-01",
        "--date",
        "2023-06-01",
    ]
    with pytest.warns(UserWarning, match="oldest first"):
        assert main([*argv[:3], "--out", str(tmp_path / "late"), *argv[5:], *late]) == 0
    summary = json.loads((tmp_path / "late" / "summary.json").read_text())
    assert summary["input"]["date_order"] == "reordered oldest first"
    assert summary["provenance"]["dates"] == ["2023-06-01", "2024-06-01"]
    assert summary["provenance"]["inputs"] == ["changes_0.tif", "changes_1.tif"]
    with rasterio.open(tmp_path / "late" / "classes.tif") as src:
        assert (src.read(1) == cls).all()
    # the same image twice, by name or as a byte-identical copy, is no pair
    (tmp_path / "copy.tif").write_bytes(Path(images[0]).read_bytes())
    copy = (str(tmp_path / "copy.tif"), "changes_0.tif and copy.tif are byte-identical")
    for second, why in ((images[0], "changes_0.tif is given twice"), copy):
        assert main([*argv, "--image", images[0], "--image", second]) == 2
        assert why in capsys.readouterr().err


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if not e.endswith("_segmentation")])
def test_classification_and_change_experiments_fast_dev_run(home, tmp_path, experiment):
    kind = experiment.rsplit("_", 1)[1]
    ds = (classification_dataset if kind == "classification" else change_dataset)(tmp_path)
    cfg = compose("train", [f"experiment={experiment}", f"data.dataset={ds.id}", *TINY,
                            "data.patch_size=32", "+trainer.fast_dev_run=true"])  # fmt: skip
    result = train(cfg)
    assert np.isfinite(result["test"]["test/loss"]) and result["task"] == kind


def test_task_must_match_the_dataset(home, tmp_path):
    change_dataset(tmp_path)
    cfg = compose("train", ["data.dataset=changes", *TINY, "+trainer.fast_dev_run=true"])
    with pytest.raises(
        UserError, match="holds change labels but task=segmentation was asked for; use task=change"
    ):
        train(cfg)


@pytest.fixture
def seg_dataset(home, scene):
    return ingest(name="synth", images=[scene["image"]], labels=scene["labels"],
                  class_column="class_name", block_size=32, progress=False)  # fmt: skip


def test_early_stopping_best_checkpoint_restore_and_resume(seg_dataset, tmp_path):
    # no epoch can beat the first by a whole mIoU point: patience 1 stops after the second
    cfg = compose("train", ["data.dataset=synth", *TINY_SEG, "trainer.max_epochs=8",
                            "+callbacks.early_stopping.min_delta=1.0", "callbacks.early_stopping.patience=1"])  # fmt: skip
    result = train(cfg)
    assert result["epochs"] == 2

    cfg = compose("train", ["data.dataset=synth", *TINY_SEG, "trainer.max_epochs=3", "seed=1"])
    first = train(cfg)
    best = torch.load(first["best_checkpoint"], map_location="cpu", weights_only=False)
    logged = load_model(first["model_uri"]).net.state_dict()
    restored = {k[len("net.") :]: v for k, v in best["state_dict"].items() if k.startswith("net.")}
    assert all(
        torch.equal(logged[k], restored[k]) for k in logged
    )  # the registered net is the best epoch's
    last = Path(first["best_checkpoint"]).parent / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 2

    cfg = compose(
        "train", ["data.dataset=synth", *TINY_SEG, "trainer.max_epochs=5", f"resume={last}"]
    )
    resumed = train(cfg)
    assert resumed["epochs"] == 5
    steps = mlflow.MlflowClient().get_metric_history(resumed["run_id"], "train/loss_epoch")
    assert sorted(s.step for s in steps)[0] > 0  # training went on from the checkpoint's step


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_model_summary_counts_flops_on_a_chip_shaped_as_training_batches(
    home, tmp_path, scene, experiment
):
    """Lightning's summary runs the task's example input: one chip of a training batch's shape
    (dates, bands, patch), so it reports each layer's sizes and FLOPs (it printed "FLOPs 0")."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from trainer.train import build, task_class

    kind = experiment.rsplit("_", 1)[1]
    if kind == "segmentation":
        ds = ingest(name="synth", images=[scene["image"]], labels=scene["labels"],
                    class_column="class_name", block_size=32, progress=False)  # fmt: skip
    else:
        ds = (classification_dataset if kind == "classification" else change_dataset)(tmp_path)
    cfg = compose("train", [f"experiment={experiment}", f"data.dataset={ds.id}", *TINY,
                            "data.patch_size=32"])  # fmt: skip
    built = build(cfg, task_class(cfg))
    batch = next(iter(built.dm.val_dataloader()))
    summary = ModelSummary(built.task, max_depth=1)
    net = summary.layer_names.index("net")
    assert summary.in_sizes[net] == [1, *batch["image"].shape[1:]]
    assert summary.total_flops > 0
