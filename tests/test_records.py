"""Typed dataset manifests and model records read the files geotune wrote before they existed
(``tests/data/records``: written at commit 7493a75 by ``generate.py``), upgrade older versions,
refuse newer ones, and rebuild the very network a record describes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlm_check import check_mlm_item

from datamodules.manifest import FORMAT_VERSION, DatasetError, DatasetManifest, read_manifest
from trainer.heads import NETS, build_net, postprocess, probabilities
from trainer.mlm import mlm_item, output_shapes
from trainer.record import RECORD_VERSION, ModelRecord, ModelRefError
from trainer.registry import net_from_record

RECORDS = Path(__file__).parent / "data" / "records"
TASKS = ("segmentation", "classification", "change")


def _dataset(task: str) -> dict:
    return json.loads((RECORDS / f"dataset-{task}.json").read_text())


def _model(task: str) -> tuple[dict, dict]:
    data = json.loads((RECORDS / f"model-{task}.json").read_text())
    return data["model.json"], data["net_state"]


@pytest.mark.parametrize("task", TASKS)
def test_dataset_manifests_written_before_keep_loading(task, tmp_path):
    raw = _dataset(task)
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    m = read_manifest(tmp_path)
    assert isinstance(m, DatasetManifest) and m.geotune_dataset == FORMAT_VERSION
    assert (m.id, m.task, m.owner, m.sensor) == (raw["id"], task, "local", "sentinel-2-l2a")
    assert m.bands == raw["bands"] and m.classes == raw["classes"]
    assert m.to_dict() == raw and dict(m) == raw and m["splits"] == raw["splits"]
    assert m.multi_label is False
    assert m.chip_size == (32 if task == "classification" else None)


def test_a_manifest_lacking_keys_older_files_lack_reads_with_their_defaults():
    raw = {k: v for k, v in _dataset("segmentation").items() if k not in ("owner", "task")}
    m = DatasetManifest.from_dict(raw)
    assert (m.owner, m.task, m.output_nodata) == ("local", "segmentation", 255)
    assert "owner" not in m  # the mapping view is the file as written


def test_a_newer_or_broken_manifest_is_refused_with_what_to_do():
    raw = _dataset("segmentation")
    with pytest.raises(DatasetError, match="dataset format 2; .*Upgrade geotune"):
        DatasetManifest.from_dict(raw | {"geotune_dataset": FORMAT_VERSION + 1})
    with pytest.raises(DatasetError, match="lacks bands, stats.*geotune data add"):
        DatasetManifest.from_dict({k: v for k, v in raw.items() if k not in ("bands", "stats")})


@pytest.mark.parametrize("task", TASKS)
def test_model_records_written_before_rebuild_the_same_network(task):
    raw, state = _model(task)
    rec = ModelRecord.from_dict(raw)
    assert rec.geotune_model == RECORD_VERSION and rec.task == task and rec.to_dict() == raw
    assert set(rec.net) == set(NETS[task].CONFIG)
    net = net_from_record(rec)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == state
    assert net.config() == rec.net  # the network describes itself as the record does
    assert rec.input_shape() == ((-1, 4, 2, -1, -1) if task == "change" else (-1, 4, -1, -1))
    check_mlm_item(mlm_item(rec, 1), raw)


def test_a_version_1_record_is_upgraded_and_a_newer_one_refused():
    raw, state = _model("segmentation")
    v1 = {k: v for k, v in raw.items() if k != "normalization"} | {"geotune_model": 1}
    rec = ModelRecord.from_dict(v1)
    assert rec.geotune_model == 2 and rec.normalization["conversion"] == "none"
    assert {k: list(v.shape) for k, v in net_from_record(rec).state_dict().items()} == state
    with pytest.raises(ModelRefError, match="version 3; .*Upgrade geotune"):
        ModelRecord.from_dict(raw | {"geotune_model": 3})
    with pytest.raises(ModelRefError, match="lacks classes"):
        ModelRecord.from_dict({k: v for k, v in raw.items() if k != "classes"})


def test_the_multi_label_flag_shapes_outputs_and_postprocessing():
    raw, _ = _model("classification")
    single = ModelRecord.from_dict(raw)
    multi = ModelRecord.from_dict(raw | {"multi_label": True})
    assert (single.multi_label, multi.multi_label) == (False, True)
    assert output_shapes(single)["classes"] == (-1,)
    assert output_shapes(multi)["classes"] == (-1, 3)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.1, -0.2]])
    prob, classes = postprocess(logits)
    assert torch.allclose(prob.sum(1), torch.ones(2)) and classes.tolist() == [0, 1]
    prob, classes = postprocess(logits, multi_label=True)
    assert torch.equal(prob, torch.sigmoid(logits))
    assert classes.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert torch.equal(probabilities(logits, True), prob)


def test_build_net_refuses_an_unknown_task():
    with pytest.raises(Exception, match="unknown task 'detection'"):
        build_net("detection", None, 2, 10.0, {})
