"""Task building blocks without training: metrics against torchmetrics, losses, the LR schedule,
every task network and its rebuild from a model record."""

import pytest
import torch
import torchmetrics.functional.classification as tmf

from datamodules.errors import UserError
from trainer.backbones import build_backbone
from trainer.heads import ChangeNet, ClassificationNet, SegmentationNet
from trainer.losses import ClassificationLoss, DenseLoss
from trainer.metrics import classification_metric_dict, metric_dict
from trainer.record import ModelRecord
from trainer.registry import net_from_record
from trainer.tasks import warmup_cosine

BANDS = ["blue", "green", "red", "nir08", "swir16", "swir22"]
FAMILIES = ["resnet18", "prithvi_eo_v2_300", "clay_v1_5"]


def backbone(name, **kw):
    kw = {"size": "tiny", "bands": BANDS, "mean": [1000.0] * 6, "std": [500.0] * 6} | kw
    return build_backbone(name, "random", **kw), kw


def test_classification_metrics_match_torchmetrics():
    g = torch.Generator().manual_seed(0)
    k, n = 4, 200
    target = torch.randint(0, k, (n,), generator=g)
    pred = torch.where(
        torch.rand(n, generator=g) < 0.6, target, torch.randint(0, k, (n,), generator=g)
    )
    pred[pred == 3] = 2  # class 3: labelled but never predicted
    cm = tmf.multiclass_confusion_matrix(pred, target, k)
    m = classification_metric_dict("val", cm, ["a", "b", "c", "d"])
    for avg in ("micro", "macro"):
        assert m[f"val/accuracy_{avg}"] == pytest.approx(
            float(tmf.multiclass_accuracy(pred, target, k, average=avg))
        )
        assert m[f"val/F1_{avg}"] == pytest.approx(
            float(tmf.multiclass_f1_score(pred, target, k, average=avg))
        )
    iou = tmf.multiclass_jaccard_index(pred, target, k, average="none")
    assert [m[f"val/IoU/{s}"] for s in "abcd"] == pytest.approx(iou.tolist())
    assert m["val/mIoU"] == pytest.approx(float(iou.mean()))

    labels = torch.randint(0, 2, (n, k), generator=g)
    preds = torch.where(torch.rand(n, k, generator=g) < 0.7, labels, 1 - labels)
    cm = tmf.multilabel_confusion_matrix(preds, labels, k)
    m = classification_metric_dict("test", cm, ["a", "b", "c", "d"])
    for avg in ("micro", "macro"):
        assert m[f"test/accuracy_{avg}"] == pytest.approx(
            float(tmf.multilabel_accuracy(preds, labels, k, average=avg))
        )
        assert m[f"test/F1_{avg}"] == pytest.approx(
            float(tmf.multilabel_f1_score(preds, labels, k, average=avg))
        )


def test_segmentation_metrics_skip_absent_classes_and_match_torchmetrics():
    target = torch.tensor([[0, 0, 1, 1], [1, 1, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 0, 2, 2]])
    cm = tmf.multiclass_confusion_matrix(pred, target, 3, ignore_index=255)
    m = metric_dict("val", cm, ["a", "b", "c"])
    assert "val/IoU/c" not in m  # no pixel of c labelled or predicted (ignored pixels do not count)
    assert m["val/IoU/a"] == pytest.approx(1 / 3) and m["val/IoU/b"] == pytest.approx(3 / 5)
    assert m["val/OA"] == pytest.approx(4 / 6) and m["val/mIoU"] == pytest.approx(
        (1 / 3 + 3 / 5) / 2
    )


def test_dense_loss_ignores_ignored_pixels_in_every_term():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[:, :4] = 255
    loss = DenseLoss(3, 255, ce=1.0, dice=0.5, focal=0.5, class_weights=[1.0, 2.0, 0.5])
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8, generator=g) * 10
    assert loss(logits, target) == pytest.approx(float(loss(changed, target)))
    changed[:, :, 6:] += 5 * torch.nn.functional.one_hot(target[:, 6:], 3).permute(0, 3, 1, 2)
    assert loss(changed, target) < loss(logits, target)
    with pytest.raises(UserError, match="has 2 values; the dataset has 3 classes"):
        DenseLoss(3, 255, class_weights=[1.0, 2.0])
    with pytest.raises(UserError, match="at least one"):
        DenseLoss(3, 255, ce=0.0)


def test_classification_loss_single_and_multi_label():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    ce = ClassificationLoss(3, ignore_index=255)
    assert ce(logits, torch.tensor([0, 255])) == pytest.approx(
        float(ce(logits[:1], torch.tensor([0])))
    )
    bce = ClassificationLoss(3, multi_label=True, class_weights=[1.0, 1.0, 3.0])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert bce(logits, y) > plain  # the missed positive of class 2 weighs 3x


def test_warmup_cosine_rises_then_decays_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1, min_factor=0.01)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


def _record(task: str, net, kw: dict, name: str, frames: int = 1) -> ModelRecord:
    spec = net.backbone.spec
    return ModelRecord.from_dict(
        {
            "task": task,
            "backbone": {"name": name, "kwargs": kw},
            **net.config(),
            "num_classes": net.num_classes,
            "classes": [],
            "bands": list(spec.bands),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "resolution": [10.0, 10.0],
            "patch_size": 32,
            "num_frames": frames,
        }
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_every_task_net_runs_and_rebuilds_from_its_record(name):
    torch.manual_seed(0)
    x = torch.rand(2, 6, 32, 32) * 3000
    x2 = torch.rand(2, 6, 2, 32, 32) * 3000
    cases = []
    b, kw = backbone(name)
    cases.append(("segmentation", SegmentationNet(b, 3, gsd=10.0), kw, x, (2, 3, 32, 32), 1))
    for fusion in ("diff", "concat"):
        b, kw = backbone(name, num_frames=1)
        cases.append(
            ("change", ChangeNet(b, 2, gsd=10.0, fusion=fusion), kw, x2, (2, 2, 32, 32), 2)
        )
    if name.startswith("prithvi"):
        b, kw = backbone(name, num_frames=2)
        cases.append(
            ("change", ChangeNet(b, 2, gsd=10.0, temporal="frames"), kw, x2, (2, 2, 32, 32), 2)
        )
    for head in ("linear", "mlp"):
        b, kw = backbone(name, out_indices=[4] if name == "resnet18" else [-1])
        cases.append(
            ("classification", ClassificationNet(b, 5, head=head, gsd=10.0), kw, x, (2, 5), 1)
        )
    for task, net, kw, inp, shape, frames in cases:
        net.eval()
        with torch.no_grad():
            y = net(inp)
        assert tuple(y.shape) == shape, (task, y.shape)
        rebuilt = net_from_record(_record(task, net, kw, name, frames))
        rebuilt.load_state_dict(net.state_dict(), strict=True)
        rebuilt.eval()
        with torch.no_grad():
            assert torch.allclose(rebuilt(inp), y, atol=1e-5), task


def test_change_fusions_differ_and_diff_is_symmetric_in_the_dates():
    torch.manual_seed(0)
    b, _ = backbone("resnet18", num_frames=1)
    net = ChangeNet(b, 2, fusion="diff").eval()
    x = torch.rand(1, 6, 2, 32, 32) * 3000
    with torch.no_grad():
        assert torch.allclose(net(x), net(x.flip(2)), atol=1e-5)
        same = torch.stack([x[:, :, 0], x[:, :, 0]], dim=2)
        assert not torch.allclose(net(same), net(x))


def test_task_option_errors_say_what_to_use():
    b, _ = backbone("resnet18", num_frames=1)
    with pytest.raises(UserError, match="only Prithvi backbones.*task.temporal=siamese"):
        ChangeNet(b, 2, temporal="frames")
    with pytest.raises(UserError, match="diff, signed, concat"):
        ChangeNet(b, 2, fusion="sum")
    with pytest.raises(UserError, match=r"\[B, C, 2, H, W\]"):
        ChangeNet(b, 2)(torch.rand(1, 6, 32, 32))
    with pytest.raises(UserError, match="no class token; use task.pool=mean"):
        ClassificationNet(b, 3, pool="cls")
    with pytest.raises(UserError, match="linear or mlp"):
        ClassificationNet(b, 3, head="deep")
    p, _ = backbone("prithvi_eo_v2_300", num_frames=2)
    with pytest.raises(UserError, match="siamese runs the encoder on one date"):
        ChangeNet(p, 2)


def test_directional_change_classes_get_a_fusion_that_keeps_the_direction():
    from trainer.heads import resolve_fusion

    binary = [{"name": "no_change"}, {"name": "change"}]
    transitions = [{"name": "no_change"}, {"name": "forest→cropland"}]
    kinds = [{"name": "unchanged"}, {"name": "built"}, {"name": "demolished"}]
    assert resolve_fusion("auto", binary) == "diff"
    assert resolve_fusion("auto", transitions) == resolve_fusion("auto", kinds) == "concat"
    assert resolve_fusion("signed", kinds) == "signed" and resolve_fusion("diff", binary) == "diff"
    for classes in (transitions, kinds):
        with pytest.raises(UserError, match=r"\|before − after\|.*cannot tell the direction"):
            resolve_fusion("diff", classes)
    torch.manual_seed(0)
    b, _ = backbone("resnet18", num_frames=1)
    x = torch.rand(1, 6, 2, 32, 32) * 3000
    for fusion in ("signed", "concat"):  # after, before is not before, after
        net = ChangeNet(b, 3, fusion=fusion).eval()
        with torch.no_grad():
            assert not torch.allclose(net(x), net(x.flip(2)), atol=1e-3)
