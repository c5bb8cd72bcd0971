"""Predictions: a folder per request, run by the streaming predictor, served to its owner.

``$GEOTUNE_HOME/serve/predictions/<id>/`` holds ``request.json`` (owner, model, version,
options, input names), the uploaded scene and ``outputs/`` (``classes.tif``,
``confidence.tif``, ``polygons.geojson``, ``summary.json`` from
:func:`trainer.predict.predict_scene`). Small requests run in the server
(:func:`run_prediction` with a cached model); large ones run the same function in a job
process: ``python -m serve.predictions <folder>``.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from pathlib import Path

from .jobs import JobFailed, JobKind, now, read_json, write_json

PRED_ID_RE = re.compile(r"^pred-[0-9a-f]{12}$")
FILES = {
    "classes.tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    "confidence.tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    "polygons.geojson": "application/geo+json",
    "summary.json": "application/json",
}


class PredictionStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def new(self) -> tuple[str, Path]:
        pred_id = f"pred-{secrets.token_hex(6)}"
        folder = self.root / pred_id
        folder.mkdir()
        return pred_id, folder

    def folder(self, pred_id: str, owner: str) -> Path | None:
        """The folder of ``owner``'s prediction ``pred_id``; None for anyone else's or none."""
        if not PRED_ID_RE.match(pred_id or ""):
            return None
        req = read_json(self.root / pred_id / "request.json")
        if req is None or req.get("owner") != owner:
            return None
        return self.root / pred_id


def options_from(params: dict):
    from trainer.predict import PredictOptions

    outputs = set(params["outputs"])
    return PredictOptions(
        polygons="polygons" in outputs,
        confidence="confidence" in outputs,
        min_area_m2=params["min_area_m2"],
        simplify=params["simplify"],
        sieve_pixels=params["sieve_pixels"],
        confidence_threshold=params["confidence_threshold"],
        precision=params.get("precision", "auto"),
    )


def run_prediction(folder: Path, model=None, progress: bool = False) -> dict:
    """Predict the request in ``folder`` into ``folder/outputs``; returns the summary."""
    from trainer.predict import predict_scene
    from trainer.registry import load_model

    req = read_json(folder / "request.json")
    if model is None:
        model = load_model(req["registered_name"], version=req["version"])
    images = [folder / f for f in req["inputs"]]
    provenance = {"model": req["model"], "version": req["version"], "inputs": req["input_names"]}
    sensor = req.get("sensor")
    if req.get("aoi"):  # imagery by area and dates, from the STAC catalogue
        from datamodules.composite import composite_for_model

        comp = composite_for_model(
            req["aoi"], req["start_date"], req["end_date"], model.record, folder / "imagery",
            sensor=sensor, progress=progress,
        )  # fmt: skip
        images, sensor = list(comp.images), comp.sensor
        provenance |= {"inputs": [Path(p).name for p in comp.images], "imagery": comp.provenance}
    summary = predict_scene(
        model,
        images,
        folder / "outputs",
        bands=req.get("bands"),
        sensor=sensor,
        dates=None if req.get("aoi") else req.get("dates"),
        options=options_from(req["params"]),
        progress=progress,
        provenance=provenance,
    )
    write_json(folder / "done.json", {"finished": now()})
    return summary


def result(folder: Path, base_url: str) -> dict:
    """The answer to a prediction: the predictor's summary, the polygons and links to files."""
    req = read_json(folder / "request.json")
    out = folder / "outputs"
    summary = read_json(out / "summary.json")
    if summary is None:
        raise FileNotFoundError(folder)
    polygons = read_json(out / "polygons.geojson") if (out / "polygons.geojson").is_file() else None
    base = f"{base_url.rstrip('/')}/v1/predictions/{folder.name}"
    files = ["summary.json", *summary["outputs"].values()]
    return {
        "prediction_id": folder.name,
        "model": {"name": req["model"], "version": req["version"], "alias": req.get("alias")},
        "n_pixels": summary["n_pixels"],
        "class_histogram": summary["class_histogram"],
        "polygons": polygons,
        "n_polygons": summary.get("n_polygons"),
        "crs": summary["crs"],
        "resolution": summary["resolution"],
        "shape": summary["shape"],
        "provenance": summary["provenance"],
        "seconds": summary["seconds"],
        "links": {Path(f).stem: f"{base}/{f}" for f in files},
    }


class PredictKind(JobKind):
    def __init__(self, store: PredictionStore):
        self.store = store

    def finalize(self, record: dict, folder: Path) -> dict:
        pred_id = record["params"]["prediction_id"]
        if not (self.store.root / pred_id / "outputs" / "summary.json").is_file():
            raise JobFailed(f"the prediction process ended without writing outputs for {pred_id}")
        return {"prediction_id": pred_id}


def predict_argv(folder: Path) -> list[str]:
    return [sys.executable, "-m", "serve.predictions", str(folder)]


def main(argv: list[str] | None = None) -> int:
    from datamodules.errors import UserError

    folder = Path((argv or sys.argv[1:])[0])
    try:
        summary = run_prediction(folder, progress=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("n_pixels", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
