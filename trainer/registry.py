"""MLflow: the model record, the pyfunc model, registration, aliases, loading by URI.

A registered version carries everything needed to predict without the training config:
``weights.pt`` (the whole network's state dict), ``model.json`` (backbone name/size/build
arguments, band names, normalisation, class table, patch defaults, resolution, run and dataset
ids), ``config.yaml`` (the resolved Hydra config) and ``mlm-item.json`` (a STAC MLM item).
``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` rebuilds the network from these in any
Python session where geotune is installed; ``predict`` takes raw float32 ``[B, C, H, W]``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel

from datamodules.errors import UserError
from datamodules.paths import artifacts_dir, tracking_uri

EXPERIMENT = "geotune"


class ModelRefError(UserError):
    pass


def setup_mlflow() -> MlflowClient:
    """Point MLflow at geotune's store and make sure the experiment has a local artifact root."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        location = artifacts_dir().as_uri() if uri.startswith("sqlite:") else None
        client.create_experiment(EXPERIMENT, artifact_location=location)
    return client


def build_net(record: dict):
    """The network described by a model record, with random weights (load the state next)."""
    from .backbones import build_backbone
    from .heads import SegmentationNet

    kwargs = dict(record["backbone"]["kwargs"])
    backbone = build_backbone(record["backbone"]["name"], "random", **kwargs)
    return SegmentationNet(
        backbone,
        record["num_classes"],
        record["decoder"],
        record["decoder_channels"],
        gsd=record["resolution"][0],
    )


class GeotuneModel(PythonModel):
    """pyfunc wrapper: ``predict(float32 [B,C,H,W] raw values)`` → ``{classes, probabilities}``."""

    def load_context(self, context) -> None:
        import torch

        self.record = json.loads(Path(context.artifacts["record"]).read_text())
        self.net = build_net(self.record)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

    def predict(self, context, model_input, params=None) -> dict:
        import torch

        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != len(self.record["bands"]):
            raise ModelRefError(
                f"expected float32 [B, {len(self.record['bands'])}, H, W] with bands {self.record['bands']}; got shape {x.shape}"
            )
        with torch.inference_mode():
            prob = torch.softmax(self.net(torch.from_numpy(x)), dim=1)
        return {"classes": prob.argmax(1).numpy().astype(np.int64), "probabilities": prob.numpy()}


def mlm_item(record: dict, n_params: int) -> dict:
    """A STAC item with the Machine Learning Model (MLM) extension describing the model."""
    c = len(record["bands"])
    left, bottom, right, top = record.get("bounds_lonlat") or [-180, -90, 180, 90]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/mlm/v1.4.0/schema.json"],
        "id": record.get("name") or record["run_id"],
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
            ],
        },
        "bbox": [left, bottom, right, top],
        "properties": {
            "datetime": None,
            "start_datetime": "1970-01-01T00:00:00Z",
            "end_datetime": "9999-12-31T23:59:59Z",
            "mlm:name": record.get("name") or "geotune-model",
            "mlm:architecture": f"{record['backbone']['name']}+{record['decoder']}",
            "mlm:tasks": ["semantic-segmentation"],
            "mlm:framework": "pytorch",
            "mlm:total_parameters": n_params,
            "mlm:pretrained": record["backbone"]["weights"] != "random",
            "mlm:pretrained_source": record["backbone"]["weights"],
            "mlm:input": [
                {
                    "name": "image",
                    "bands": record["bands"],
                    "input": {
                        "shape": [-1, c, record["patch_size"], record["patch_size"]],
                        "dim_order": ["batch", "bands", "height", "width"],
                        "data_type": "float32",
                    },
                    "norm_type": "z-score",
                    "statistics": [
                        {"mean": m, "stddev": s}
                        for m, s in zip(record["mean"], record["std"], strict=True)
                    ],
                    "resize_type": None,
                }
            ],
            "mlm:output": [
                {
                    "name": "classes",
                    "tasks": ["semantic-segmentation"],
                    "result": {
                        "shape": [-1, record["num_classes"], -1, -1],
                        "dim_order": ["batch", "channel", "height", "width"],
                        "data_type": "float32",
                    },
                    "classification:classes": [
                        {
                            "value": cl["id"],
                            "name": cl["name"],
                            "color_hint": cl["color"].lstrip("#"),
                        }
                        for cl in record["classes"]
                    ],
                    "post_processing_function": None,
                }
            ],
        },
        "links": [],
        "assets": {
            "weights": {
                "href": "weights.pt",
                "type": "application/octet-stream",
                "roles": ["mlm:model", "mlm:weights"],
            }
        },
    }


def log_model(run_id: str, net, record: dict, config_yaml: str):
    """Log the network as a pyfunc model under ``run_id``; returns MLflow's ModelInfo."""
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    c, k = len(record["bands"]), record["num_classes"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, -1, -1))]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.int64), (-1, -1, -1), "classes"),
                TensorSpec(np.dtype(np.float32), (-1, k, -1, -1), "probabilities"),
            ]
        ),
    )
    example = np.tile(
        np.asarray(record["mean"], dtype=np.float32)[None, :, None, None], (1, 1, 32, 32)
    )
    n_params = sum(p.numel() for p in net.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(net.state_dict(), tmp / "weights.pt")
        (tmp / "model.json").write_text(json.dumps(record, indent=2))
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "mlm-item.json").write_text(json.dumps(mlm_item(record, n_params), indent=2))
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=GeotuneModel(),
                artifacts={
                    k: str(tmp / f)
                    for k, f in (
                        ("weights", "weights.pt"),
                        ("record", "model.json"),
                        ("config", "config.yaml"),
                        ("mlm", "mlm-item.json"),
                    )
                },
                signature=signature,
                input_example=example,
                pip_requirements=["geotune", "torch", "segmentation-models-pytorch", "timm"],
                metadata={
                    "geotune_task": record["task"],
                    "backbone": record["backbone"]["name"],
                    "classes": [c["name"] for c in record["classes"]],
                },
            )


def register(model_uri: str, name: str, alias: str | None, tags: dict[str, str]):
    client = setup_mlflow()
    version = mlflow.register_model(model_uri, name, tags=tags)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def model_uri(ref: str, version: int | str | None = None, alias: str | None = None) -> str:
    """``NAME@ALIAS``, ``NAME`` + version/alias, ``models:/...`` or ``runs:/...`` → a model URI."""
    if ref.startswith(("models:/", "runs:/")):
        return ref
    if "@" in ref:
        if version is not None:
            raise ModelRefError("give either NAME@ALIAS or --version, not both")
        return f"models:/{ref}"
    if version is not None:
        return f"models:/{ref}/{version}"
    if alias:
        return f"models:/{ref}@{alias}"
    raise ModelRefError(f"say which version of {ref!r}: {ref}@champion, or --version N")


def load_model(ref: str, version=None, alias=None) -> GeotuneModel:
    """Load a registered model; returns the unwrapped :class:`GeotuneModel` (net + record)."""
    setup_mlflow()
    uri = model_uri(ref, version, alias)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    except mlflow.exceptions.MlflowException as e:
        raise ModelRefError(
            f"cannot load model {uri}: {e.message}. List models with `geotune models list`."
        ) from None
    model = pyfunc.unwrap_python_model()
    if not isinstance(model, GeotuneModel):
        raise ModelRefError(f"{uri} is not a geotune model")
    model.uri = uri
    return model
