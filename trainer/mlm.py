"""The model card: a STAC item with the Machine Learning Model (MLM) v1.4 extension, written
beside every registered version as ``mlm-item.json``, and the shapes the pyfunc model answers."""

from __future__ import annotations

import re
from pathlib import PurePath

from .inputs import input_units
from .record import ModelRecord, as_record

MLM_TASKS = {
    "segmentation": ["semantic-segmentation"],
    "change": ["semantic-segmentation"],
    "classification": ["scene-classification"],
}


def output_shapes(record: ModelRecord) -> dict[str, tuple[int, ...]]:
    """Shapes of the pyfunc outputs (``-1`` = any) for the record's task."""
    k = record.num_classes
    if record.task == "classification":
        return {
            "classes": (-1, k) if record.multi_label else (-1,),
            "probabilities": (-1, k),
        }
    return {"classes": (-1, -1, -1), "probabilities": (-1, k, -1, -1)}


def mlm_name(name: str | None) -> str:
    """The model's name as MLM's ``mlm:name`` pattern takes it (a letter first, letters, digits,
    ``_.-`` and spaces, a letter or digit last, three characters at least)."""
    text = re.sub(r"[^a-zA-Z0-9_.\-\s]", "-", f"geotune {name or 'model'}").rstrip("_.- ")
    return text if re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]", text) else "geotune model"


def mlm_item(record: ModelRecord, n_params: int) -> dict:
    """A STAC item with the Machine Learning Model (MLM) v1.4 extension describing the model.

    ``mlm:input`` takes the stored values of the record's bands; its ``value_scaling`` holds one
    z-score per band, the model's own (statistics folded onto the stored values), so applying
    the card to stored values gives exactly what the encoder sees."""
    record = as_record(record)
    task = record.task
    net = record.net
    head = net.get("decoder") or f"{net['pool']}-{net['head']}"
    left, bottom, right, top = record.bounds_lonlat or [-180, -90, 180, 90]
    units = input_units(record)
    what = f"{record.sensor or 'unknown sensor'} stored values"
    described = [f"{what}: {u.describe()}" for u in units] if units else [what] * len(record.bands)
    bands = [{"name": b, "description": d} for b, d in zip(record.bands, described, strict=True)]
    weights = str(record.backbone["weights"])
    pretrained = weights != "random"
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/mlm/v1.4.0/schema.json"],
        "id": record.name or record.run_id,
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
            "mlm:name": mlm_name(record.name),
            "mlm:architecture": f"{record.backbone['name']}+{head}"
            + (" (change detection)" if task == "change" else ""),
            "mlm:tasks": MLM_TASKS[task],
            "mlm:framework": "pytorch",
            "mlm:total_parameters": n_params,
            "mlm:pretrained": pretrained,
            # MLM: null when trained from scratch; the weights file's name, not this machine's path
            "mlm:pretrained_source": PurePath(weights).name if pretrained else None,
            "mlm:input": [_mlm_input(record)],
            "mlm:output": [_mlm_output(record)],
        },
        "links": [],
        "assets": {
            "weights": {
                "href": "weights.pt",
                "type": "application/octet-stream",
                "roles": ["mlm:model", "mlm:weights"],
                "mlm:artifact_type": "torch.save",
                # STAC 1.1 allows ``bands`` in properties only when an asset carries bands too;
                # MLM asks for them on the model asset, by name, the details in properties
                "bands": [{"name": b} for b in record.bands],
            }
        },
    }


def _mlm_input(record: ModelRecord) -> dict:
    """``mlm:input``: the record's bands as stored, at its patch size, and its z-score."""
    shape = list(record.input_shape())
    shape[-2:] = [record.patch_size, record.patch_size]
    dim_order = (
        ["batch", "bands", "time", "height", "width"]
        if len(shape) == 5
        else ["batch", "bands", "height", "width"]
    )
    norm = record.normalization or {}
    return {
        "name": "image",
        "bands": record.bands,
        "description": f"stored values of {record.sensor or 'the training imagery'}; "
        f"normalisation: {norm.get('source', 'recorded statistics')}",
        "input": {
            "shape": shape,
            "dim_order": dim_order,
            "data_type": "float32",
        },
        "value_scaling": [
            {"type": "z-score", "mean": m, "stddev": s}
            for m, s in zip(record.mean, record.std, strict=True)
        ],
        "resize_type": None,
        "pre_processing_function": None,
    }


def _mlm_output(record: ModelRecord) -> dict:
    """``mlm:output``: the class probabilities and the class table."""
    out_shape = list(output_shapes(record)["probabilities"])
    return {
        "name": "classes",
        "tasks": MLM_TASKS[record.task],
        "result": {
            "shape": out_shape,
            "dim_order": ["batch", "channel", "height", "width"][: len(out_shape)],
            "data_type": "float32",
        },
        "classification:classes": [
            {
                "value": cl["id"],
                "name": cl["name"],
                # the classification extension v1.1 (MLM v1.4's) requires a description
                "description": _class_description(cl),
                "color_hint": cl["color"].lstrip("#"),
            }
            for cl in record.classes
        ],
        "post_processing_function": None,
    }


def _class_description(cl: dict) -> str:
    """What a class of the model's output stands for: its label value in the training labels."""
    value = cl.get("value", cl["name"])
    text = f"{cl['name']}: pixels labelled {value!r} in the training labels"
    return text + " (background)" if cl.get("background") else text
