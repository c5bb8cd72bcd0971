"""Checks of a written STAC MLM item with a third-party reader: the ``stac-model`` package
(the MLM extension's own pydantic models) and pystac."""

from __future__ import annotations

import re

import numpy as np


def check_mlm_item(item: dict, record: dict) -> list[dict]:
    """Validate ``item`` (a model's mlm-item.json) and return its ``value_scaling``."""
    import pystac
    import pystac.validation
    from stac_model.input import ModelInput
    from stac_model.output import ModelOutput
    from stac_model.schema import MLModelProperties

    assert "https://stac-extensions.github.io/mlm/v1.4.0/schema.json" in item["stac_extensions"]
    pystac.Item.from_dict(item)  # a valid STAC item as pystac reads it
    # STAC 1.1's core item schema, bundled with pystac (extensions=[]: nothing fetched)
    pystac.validation.validate_dict(item, extensions=[])
    props = MLModelProperties.model_validate(item["properties"])
    # MLM v1.4's JSON schema pattern of mlm:name (stac-model does not check it)
    assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]", props.name), props.name
    assert props.input and props.output
    # MLM: pretrained_source is null for a model trained from scratch
    assert props.pretrained == (record["backbone"]["weights"] != "random")
    assert (props.pretrained_source is None) == (not props.pretrained)
    for inp in item["properties"]["mlm:input"]:
        ModelInput.model_validate(inp)
        assert "norm_type" not in inp and "statistics" not in inp  # pre-1.3 fields
    for out in item["properties"]["mlm:output"]:
        ModelOutput.model_validate(out)
        # the classification extension v1.1 (MLM v1.4's) requires value and description
        for cl in out["classification:classes"]:
            assert isinstance(cl["value"], int) and cl["description"], cl
    (inp,) = item["properties"]["mlm:input"]
    assert inp["bands"] == record["bands"]
    # MLM v1.4: named input bands are STAC 1.1 band objects of the item
    assert [b["name"] for b in item["properties"]["bands"]] == record["bands"]
    # ... which STAC 1.1 allows in properties only when an asset carries bands: the model's
    (model,) = [a for a in item["assets"].values() if "mlm:model" in a["roles"]]
    assert [b["name"] for b in model["bands"]] == record["bands"]
    assert inp["input"]["shape"][-2:] == [record["patch_size"], record["patch_size"]]
    scaling = inp["value_scaling"]
    assert len(scaling) == len(record["bands"])
    assert all(s["type"] == "z-score" and s["stddev"] > 0 for s in scaling)
    return scaling


def apply_value_scaling(scaling: list[dict], stored: np.ndarray) -> np.ndarray:
    """What a third-party reader computes from the card: ``(stored - mean) / stddev`` per band
    (``stored``: ``[C, ...]``)."""
    shape = (-1,) + (1,) * (stored.ndim - 1)
    mean = np.array([s["mean"] for s in scaling], dtype=np.float64).reshape(shape)
    std = np.array([s["stddev"] for s in scaling], dtype=np.float64).reshape(shape)
    return (stored - mean) / std
