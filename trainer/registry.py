"""MLflow: the model record, the pyfunc model, registration, aliases, loading by URI.

A registered version carries everything needed to predict without the training config:
``weights.pt`` (the whole network's state dict), ``model.json`` (the model record,
:mod:`trainer.record`: backbone
name/size/build arguments, band names, normalisation and the units of the values it expects,
class table, patch defaults, resolution, run and dataset ids), ``config.yaml`` (the resolved
Hydra config) and ``mlm-item.json`` (a STAC MLM v1.4 item, :mod:`trainer.mlm`, whose ``value_scaling`` is the
model's z-score per band on stored values). ``mlflow.pyfunc.load_model("models:/<name>@<alias>")``
rebuilds the network from these in any Python session where geotune is installed; ``predict``
takes stored values as float32 ``[B, C, H, W]``. Records of older versions are upgraded when
read (:func:`trainer.record.upgrade_record`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel

from datamodules.paths import artifacts_dir, tracking_uri

from .loading import load_model, load_parts, net_from_record
from .mlm import mlm_item, output_shapes
from .record import ModelRefError, as_record

EXPERIMENT = "geotune"


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


class GeotuneModel(PythonModel):
    """pyfunc wrapper: ``predict(float32 raw values)`` → ``{classes, probabilities}``.

    Segmentation: ``[B, C, H, W]`` → classes ``[B, H, W]``, probabilities ``[B, K, H, W]``;
    change: ``[B, C, 2, H, W]`` → the same; classification: ``[B, C, H, W]`` → classes ``[B]``
    and probabilities ``[B, K]`` (multi-label: classes ``[B, K]`` of 0/1, per-class sigmoids).
    """

    def load_context(self, context) -> None:
        self.record, self.net = load_parts(
            context.artifacts["record"], context.artifacts["weights"]
        )

    # typed, so MLflow leaves the input to the signature (a tensor spec) and does not warn
    # that the method has no type hints, on every command that imports this module
    def predict(self, context, model_input: np.ndarray, params=None) -> dict:
        import torch

        from .heads import postprocess

        x = np.asarray(model_input, dtype=np.float32)
        want = self.record.input_shape()
        if x.ndim != len(want) or any(w > 0 and w != g for w, g in zip(want, x.shape, strict=True)):
            dims = ", ".join(["B", *[str(w) for w in want[1:-2]], "H", "W"])
            raise ModelRefError(
                f"expected float32 [{dims}] with bands {self.record.bands}; got shape {x.shape}"
            )
        with torch.inference_mode():
            prob, classes = postprocess(self.net(torch.from_numpy(x)), self.record.multi_label)
        return {"classes": classes.numpy().astype(np.int64), "probabilities": prob.numpy()}


def log_model(run_id: str, net, record: dict, config_yaml: str):
    """Log the network as a pyfunc model under ``run_id``; returns MLflow's ModelInfo.
    ``record`` is written as ``model.json`` as given (read back as a :class:`ModelRecord`)."""
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    typed = as_record(record)
    shape, out = typed.input_shape(), output_shapes(typed)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.int64), out["classes"], "classes"),
                TensorSpec(np.dtype(np.float32), out["probabilities"], "probabilities"),
            ]
        ),
    )
    mean = np.asarray(typed.mean, dtype=np.float32)
    example = np.broadcast_to(
        mean.reshape((1, -1) + (1,) * (len(shape) - 2)),
        [1, len(mean), *[abs(d) if d > 0 else 32 for d in shape[2:]]],
    ).copy()
    n_params = sum(p.numel() for p in net.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(net.state_dict(), tmp / "weights.pt")
        (tmp / "model.json").write_text(json.dumps(dict(record), indent=2))
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "mlm-item.json").write_text(json.dumps(mlm_item(typed, n_params), indent=2))
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name="model",
                # from code, not a pickled object (which MLflow warns about when logging)
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
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
                    "geotune_task": typed.task,
                    "backbone": typed.backbone["name"],
                    "classes": [c["name"] for c in typed.classes],
                },
            )


def register(model_uri: str, name: str, alias: str | None, tags: dict[str, str]):
    client = setup_mlflow()
    version = mlflow.register_model(model_uri, name, tags=tags)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def load_with_mlflow(uri: str) -> GeotuneModel:
    """Load a model URI through MLflow's pyfunc loader; the unwrapped :class:`GeotuneModel`
    (net + record). :func:`trainer.loading.load_model` uses it where the local store cannot
    resolve the URI on its own."""
    setup_mlflow()
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


__all__ = [
    "EXPERIMENT",
    "GeotuneModel",
    "load_model",  # trainer.loading's, here for callers that import it from the registry
    "load_with_mlflow",
    "log_model",
    "net_from_record",
    "register",
    "setup_mlflow",
]
