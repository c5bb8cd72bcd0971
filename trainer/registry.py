"""MLflow: the model record, the pyfunc model, registration, aliases, loading by URI.

A registered version carries everything needed to predict without the training config:
``weights.pt`` (the whole network's state dict), ``model.json`` (the model record: backbone
name/size/build arguments, band names, normalisation and the units of the values it expects,
class table, patch defaults, resolution, run and dataset ids), ``config.yaml`` (the resolved
Hydra config) and ``mlm-item.json`` (a STAC MLM v1.4 item whose ``value_scaling`` is the
model's z-score per band on stored values). ``mlflow.pyfunc.load_model("models:/<name>@<alias>")``
rebuilds the network from these in any Python session where geotune is installed; ``predict``
takes stored values as float32 ``[B, C, H, W]``. Records of older versions are upgraded when
read (:func:`upgrade_record`).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel

from datamodules.errors import UserError
from datamodules.paths import artifacts_dir, tracking_uri

from .inputs import input_units

EXPERIMENT = "geotune"
RECORD_VERSION = 2  # model.json's "geotune_model"; 2: normalization (units) recorded


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


def net_fields(net) -> dict:
    """The model record's description of a task network's head (what :func:`build_net` reads)."""
    from .heads import ChangeNet, ClassificationNet

    if isinstance(net, ClassificationNet):
        return {
            "pool": net.pool,
            "head": net.head_name,
            "hidden": net.hidden,
            "dropout": net.dropout,
            "multi_label": bool(net.multi_label),
        }
    fields = {"decoder": net.decoder_name, "decoder_channels": net.decoder_channels}
    if isinstance(net, ChangeNet):
        fields |= {"fusion": net.fusion, "temporal": net.temporal}
    return fields


def build_net(record: dict):
    """The network described by a model record, with random weights (load the state next).

    ``record["task"]``: ``segmentation`` → ``SegmentationNet`` (logits ``[B, K, H, W]``),
    ``change`` → ``ChangeNet`` (input ``[B, C, 2, H, W]``, logits ``[B, K, H, W]``),
    ``classification`` → ``ClassificationNet`` (logits ``[B, K]``).
    """
    from .backbones import build_backbone
    from .heads import ChangeNet, ClassificationNet, SegmentationNet

    kwargs = dict(record["backbone"]["kwargs"])
    backbone = build_backbone(record["backbone"]["name"], "random", **kwargs)
    task, k, gsd = (
        record.get("task", "segmentation"),
        record["num_classes"],
        record["resolution"][0],
    )
    if task == "classification":
        return ClassificationNet(
            backbone, k, record["pool"], record["head"], record["hidden"], record["dropout"],
            bool(record.get("multi_label")), gsd=gsd,
        )  # fmt: skip
    if task == "change":
        return ChangeNet(
            backbone, k, record["decoder"], record["decoder_channels"], gsd,
            record["fusion"], record["temporal"],
        )  # fmt: skip
    if task != "segmentation":
        raise ModelRefError(f"unknown task {task!r} in the model record")
    return SegmentationNet(backbone, k, record["decoder"], record["decoder_channels"], gsd=gsd)


def input_shape(record: dict) -> tuple[int, ...]:
    """The raw input the network takes: ``(-1, C, -1, -1)``, or ``(-1, C, T, -1, -1)`` for several dates."""
    c, t = len(record["bands"]), int(record.get("num_frames", 1))
    return (-1, c, t, -1, -1) if t > 1 else (-1, c, -1, -1)


def upgrade_record(record: dict) -> dict:
    """A model record of any version in today's shape (the stored file is never rewritten).

    Version 1 (before units were recorded): its ``mean``/``std`` were applied to the stored
    values of its ``sensor`` as they came, and that is what the upgraded record says."""
    from datamodules.sensors import stored_units

    rec = dict(record)
    version = int(rec.get("geotune_model", 1))
    if version > RECORD_VERSION:
        raise ModelRefError(
            f"this model record is version {version}; this geotune reads up to "
            f"{RECORD_VERSION}. Upgrade geotune to load it."
        )
    if version < 2:
        units = stored_units(rec.get("sensor"), list(rec["bands"]))
        rec["normalization"] = {
            "statistics": "recorded",
            "source": "model record version 1: mean/std applied to the stored values as given "
            "(units were not recorded then)",
            "sensor": rec.get("sensor"),
            "input_units": [u.to_dict() for u in units] if units else None,
            "conversion": "none",
        }
    rec["geotune_model"] = RECORD_VERSION
    return rec


class GeotuneModel(PythonModel):
    """pyfunc wrapper: ``predict(float32 raw values)`` → ``{classes, probabilities}``.

    Segmentation: ``[B, C, H, W]`` → classes ``[B, H, W]``, probabilities ``[B, K, H, W]``;
    change: ``[B, C, 2, H, W]`` → the same; classification: ``[B, C, H, W]`` → classes ``[B]``
    and probabilities ``[B, K]`` (multi-label: classes ``[B, K]`` of 0/1, per-class sigmoids).
    """

    def load_context(self, context) -> None:
        import torch

        self.record = upgrade_record(json.loads(Path(context.artifacts["record"]).read_text()))
        self.net = build_net(self.record)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

    def predict(self, context, model_input, params=None) -> dict:
        import torch

        x = np.asarray(model_input, dtype=np.float32)
        want = input_shape(self.record)
        if x.ndim != len(want) or any(w > 0 and w != g for w, g in zip(want, x.shape, strict=True)):
            dims = ", ".join(["B", *[str(w) for w in want[1:-2]], "H", "W"])
            raise ModelRefError(
                f"expected float32 [{dims}] with bands {self.record['bands']}; got shape {x.shape}"
            )
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(x))
        if self.record.get("multi_label"):
            prob = torch.sigmoid(logits)
            classes = (prob > 0.5).to(torch.int64)
        else:
            prob = torch.softmax(logits, dim=1)
            classes = prob.argmax(1)
        return {"classes": classes.numpy().astype(np.int64), "probabilities": prob.numpy()}


MLM_TASKS = {
    "segmentation": ["semantic-segmentation"],
    "change": ["semantic-segmentation"],
    "classification": ["scene-classification"],
}


def output_shapes(record: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the pyfunc outputs (``-1`` = any) for the record's task."""
    k = record["num_classes"]
    if record.get("task") == "classification":
        return {
            "classes": (-1, k) if record.get("multi_label") else (-1,),
            "probabilities": (-1, k),
        }
    return {"classes": (-1, -1, -1), "probabilities": (-1, k, -1, -1)}


def mlm_name(name: str | None) -> str:
    """The model's name as MLM's ``mlm:name`` pattern takes it (a letter first, letters, digits,
    ``_.-`` and spaces, a letter or digit last, three characters at least)."""
    text = re.sub(r"[^a-zA-Z0-9_.\-\s]", "-", f"geotune {name or 'model'}").rstrip("_.- ")
    return text if re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]", text) else "geotune model"


def mlm_item(record: dict, n_params: int) -> dict:
    """A STAC item with the Machine Learning Model (MLM) v1.4 extension describing the model.

    ``mlm:input`` takes the stored values of the record's bands; its ``value_scaling`` holds one
    z-score per band, the model's own (statistics folded onto the stored values), so applying
    the card to stored values gives exactly what the encoder sees."""
    task = record.get("task", "segmentation")
    shape = list(input_shape(record))
    shape[-2:] = [record["patch_size"], record["patch_size"]]
    dim_order = (
        ["batch", "bands", "time", "height", "width"]
        if len(shape) == 5
        else ["batch", "bands", "height", "width"]
    )
    head = record.get("decoder") or f"{record['pool']}-{record['head']}"
    out_shape = list(output_shapes(record)["probabilities"])
    out_order = ["batch", "channel", "height", "width"][: len(out_shape)]
    left, bottom, right, top = record.get("bounds_lonlat") or [-180, -90, 180, 90]
    units = input_units(record)
    sensor = record.get("sensor")
    norm = record.get("normalization") or {}
    what = f"{sensor or 'unknown sensor'} stored values"
    described = (
        [f"{what}: {u.describe()}" for u in units] if units else [what] * len(record["bands"])
    )
    bands = [{"name": b, "description": d} for b, d in zip(record["bands"], described, strict=True)]
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
            "bands": bands,
            "mlm:name": mlm_name(record.get("name")),
            "mlm:architecture": f"{record['backbone']['name']}+{head}"
            + (" (change detection)" if task == "change" else ""),
            "mlm:tasks": MLM_TASKS[task],
            "mlm:framework": "pytorch",
            "mlm:total_parameters": n_params,
            "mlm:pretrained": record["backbone"]["weights"] != "random",
            "mlm:pretrained_source": record["backbone"]["weights"],
            "mlm:input": [
                {
                    "name": "image",
                    "bands": record["bands"],
                    "description": f"stored values of {sensor or 'the training imagery'}; "
                    f"normalisation: {norm.get('source', 'recorded statistics')}",
                    "input": {
                        "shape": shape,
                        "dim_order": dim_order,
                        "data_type": "float32",
                    },
                    "value_scaling": [
                        {"type": "z-score", "mean": m, "stddev": s}
                        for m, s in zip(record["mean"], record["std"], strict=True)
                    ],
                    "resize_type": None,
                    "pre_processing_function": None,
                }
            ],
            "mlm:output": [
                {
                    "name": "classes",
                    "tasks": MLM_TASKS[task],
                    "result": {
                        "shape": out_shape,
                        "dim_order": out_order,
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
                "mlm:artifact_type": "torch.save",
            }
        },
    }


def log_model(run_id: str, net, record: dict, config_yaml: str):
    """Log the network as a pyfunc model under ``run_id``; returns MLflow's ModelInfo."""
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    shape, out = input_shape(record), output_shapes(record)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.int64), out["classes"], "classes"),
                TensorSpec(np.dtype(np.float32), out["probabilities"], "probabilities"),
            ]
        ),
    )
    mean = np.asarray(record["mean"], dtype=np.float32)
    example = np.broadcast_to(
        mean.reshape((1, -1) + (1,) * (len(shape) - 2)),
        [1, len(mean), *[abs(d) if d > 0 else 32 for d in shape[2:]]],
    ).copy()
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
        # suppress_warnings skips MLflow's installed-packages scan (1.7 s a load, measured): a
        # geotune model's requirements are geotune's own, unpinned, and present if this runs
        pyfunc = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
    except mlflow.exceptions.MlflowException as e:
        raise ModelRefError(
            f"cannot load model {uri}: {e.message}. List models with `geotune models list`."
        ) from None
    model = pyfunc.unwrap_python_model()
    if not isinstance(model, GeotuneModel):
        raise ModelRefError(f"{uri} is not a geotune model")
    model.uri = uri
    return model
