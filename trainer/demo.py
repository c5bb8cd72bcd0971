"""``geotune demo``: the whole path on the packaged Sentinel-2 sample, offline, in minutes on CPU.

1. derive label polygons from the real scene (``datamodules.demo_labels``) → GeoJSON,
2. ingest image + polygons as a dataset (the code behind ``geotune data add``),
3. fine-tune a ResNet-18 UNet from random weights (``backbone.weights=random``: no weights can
   be downloaded here) with Lightning, logged to MLflow,
4. register it as ``demo`` with alias ``champion``,
5. load ``models:/demo@champion`` back and predict the scene → class COG + GeoJSON polygons,
6. print where everything is.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

SAMPLE = "s2_l1c_demo.tif"


def sample_image() -> Path:
    return Path(str(resources.files("datamodules") / "sample" / SAMPLE))


def demo_overrides(name: str, epochs: int) -> list[str]:
    return [
        f"data.dataset={name}",
        "backbone=resnet18",
        "backbone.weights=random",
        "data.patch_size=64",
        "data.batch_size=16",
        "data.chips_per_epoch=256",
        "data.num_workers=0",
        f"trainer.max_epochs={epochs}",
        "task.optimizer.lr=2e-3",
        f"register.name={name}",
        "register.alias=champion",
        f"run_name={name}-resnet18",
    ]


def majority_baseline(confusion, train_counts) -> float:
    """mIoU of always predicting the most frequent training class, on the same pixels."""
    import numpy as np

    from .metrics import scores

    cm = np.asarray(confusion, dtype=float)
    k = int(np.argmax(train_counts))
    base = np.zeros_like(cm)
    base[:, k] = cm.sum(1)
    return float(scores(__import__("torch").from_numpy(base))["mIoU"])


def _report(name: str, ds, labels: Path, image: Path, out: Path, result: dict, baseline: float):
    """The demo's last words: held-out scores, where the files are, what to run next."""
    from datamodules.paths import tracking_uri

    test = result["test"]
    width = 28
    print("\nheld-out test blocks (spatially separate from training):")
    print(f"  {'test/mIoU'.ljust(width)} {test['test/mIoU']:.3f}")
    print(f"  {'majority-class baseline mIoU'.ljust(width)} {baseline:.3f}")
    print(f"  {'test/OA'.ljust(width)} {test['test/OA']:.3f}")
    for c in ds.classes:
        key = f"test/IoU/{c['slug']}"
        if key in test:
            print(f"  {key.ljust(width)} {test[key]:.3f}")
    print(
        f"  {'val/mIoU (best epoch)'.ljust(width)} {result['val'].get('val/mIoU', float('nan')):.3f}"
    )
    print("\nwhere things are:")
    print(f"  dataset        {ds.path}")
    print(f"  labels         {labels}")
    print(f"  class COG      {out / 'classes.tif'}")
    print(f"  polygons       {out / 'polygons.geojson'}")
    print(f"  summary        {out / 'summary.json'}")
    print(f"  MLflow store   {tracking_uri()}")
    print("\nnext:")
    print(
        f"  mlflow ui --backend-store-uri {tracking_uri()}        # browse runs, figures, registered models"
    )
    print(f"  geotune predict --model {name}@champion --image {image} --out results/")
    print(
        "  geotune serve --dev                                   # the HTTP API; OpenAPI page at http://127.0.0.1:8000/docs"
    )


def run_demo(epochs: int = 12, workdir: str | Path | None = None, name: str = "demo") -> dict:
    import numpy as np

    from datamodules.demo_labels import make_demo_labels
    from datamodules.ingest import ingest
    from datamodules.manifest import DatasetError, delete_dataset
    from datamodules.paths import home

    from .config import compose
    from .loading import load_model
    from .predict import predict_scene
    from .train import train

    work = Path(workdir) if workdir else home() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    image = sample_image()
    print(
        f"[1/5] labels: deriving polygons from the real Sentinel-2 L1C sample {image.name} (spectral rule, see datamodules/demo_labels.py)"
    )
    labels = make_demo_labels(image, work / "labels.geojson")
    try:
        delete_dataset(name)
        print(f"      (replacing the previous '{name}' dataset)")
    except DatasetError:
        pass
    print(
        f"[2/5] dataset: geotune data add --name {name} --image {image} --labels {labels} --class-column class_name --sensor sentinel-2-l1c --block-size 128"
    )
    ds = ingest(
        name=name,
        images=[image],
        labels=labels,
        class_column="class_name",
        sensor="sentinel-2-l1c",
        block_size=128,
        progress=False,
    )
    print(
        f"      {ds.num_classes} classes ({', '.join(ds.class_names)}), {sum(c['units'] for c in ds.classes)} polygons, splits by 128 px blocks: {ds.manifest.splits['units']}"
    )

    overrides = demo_overrides(name, epochs)
    print(f"[3/5] fine-tune: geotune train {' '.join(overrides)}")
    print(
        "      ResNet-18 UNet from RANDOM weights (backbone.weights=random): pretrained weights cannot be downloaded here"
    )
    result = train(compose("train", overrides))
    test = result["test"]
    train_counts = [ds.manifest.splits["pixels"]["train"][c["slug"]] for c in ds.classes]
    baseline = majority_baseline(result["confusion"]["test"], train_counts)

    print(
        f"[4/5] registered: {name} version {result['model_version']}, alias champion (MLflow run {result['run_id']})"
    )
    model = load_model(f"{name}@champion")
    out = work / "prediction"
    if out.exists():
        shutil.rmtree(out)
    summary = predict_scene(model, [image], out, progress=True)
    print(
        f"[5/5] predicted models:/{name}@champion on {image.name}: {summary['n_pixels']} px, {summary.get('n_polygons', 0)} polygons"
    )

    _report(name, ds, labels, image, out, result, baseline)
    return {
        "test": test,
        "baseline_mIoU": baseline,
        "val": result["val"],
        "summary": summary,
        "dataset": ds,
        "run_id": result["run_id"],
        "model_version": result["model_version"],
        "prediction_dir": out,
        "train_counts": np.asarray(train_counts),
    }
