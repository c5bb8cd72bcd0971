"""Loading a registered model for prediction: the local store's resolver (aliases that move,
missing aliases, versions, names), MLflow-free start-up of ``geotune predict`` on a ResNet
model, and the plain-torch ResNet trunk and U-Net decoder against timm's and smp's."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import rasterio
import torch
from conftest import env_with_home
from synth import make_scene, train_tiny

from trainer.backbones.resnet_net import ResNetTrunk
from trainer.loading import load_model
from trainer.record import ModelRefError
from trainer.unet import UnetDecoder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A home with model ``p``: version 1 trained (``champion``), version 2 the same network
    with other weights."""
    tmp = tmp_path_factory.mktemp("loading")
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOTUNE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        path = train_tiny(tmp)
        from trainer.registry import log_model, register, setup_mlflow

        v1 = load_model("p@champion")
        net = v1.net
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05)
        setup_mlflow()
        mlflow.set_experiment("geotune")
        with mlflow.start_run() as run:
            pass
        info = log_model(run.info.run_id, net, dict(v1.record), "")
        register(info.model_uri, "p", None, {})
    return {"home": home, "scene": path, "tmp": tmp}


@pytest.fixture
def at_home(store, monkeypatch):
    monkeypatch.setenv("GEOTUNE_HOME", str(store["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return store


def geotune(home, *args):
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args],
        env=env_with_home(home),
        capture_output=True,
        text=True,
    )


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_alias_that_moves_resolves_to_its_new_version(at_home):
    from trainer.registry import load_with_mlflow

    home = at_home["home"]
    one = load_model("p@champion")
    assert one.resolved == "models:/p/1" and one.uri == "models:/p@champion"
    assert same_weights(one.net, load_with_mlflow("models:/p/1").net)
    two = load_model("p", version=2)
    assert two.resolved == "models:/p/2" and not same_weights(one.net, two.net)
    assert same_weights(two.net, load_with_mlflow("models:/p/2").net)
    r = geotune(home, "models", "alias", "p", "champion", "2")
    assert r.returncode == 0, r.stderr
    try:
        moved = load_model("p@champion")
        assert moved.resolved == "models:/p/2" and same_weights(moved.net, two.net)
    finally:
        assert geotune(home, "models", "alias", "p", "champion", "1").returncode == 0
    assert load_model("p", alias="champion").resolved == "models:/p/1"


def test_a_missing_alias_says_what_exists_and_its_hint_works(at_home):
    with pytest.raises(ModelRefError) as e:
        load_model("p@staging")
    msg = str(e.value)
    assert "no alias 'staging'" in msg and "champion → 1" in msg and "versions: 1, 2" in msg
    hint = msg.split("`")[1]
    assert hint == "geotune models alias p staging 2"
    r = geotune(at_home["home"], *hint.split()[1:])
    assert r.returncode == 0, r.stderr
    assert load_model("p@staging").resolved == "models:/p/2"


def test_a_name_without_version_lists_what_resolves_and_each_hint_works(at_home):
    with pytest.raises(ModelRefError) as e:
        load_model("p")
    msg = str(e.value)  # (another test points p@staging at 2: every alias is listed)
    assert msg.startswith("say which version of 'p' (versions: 1, 2): p@champion (version 1)")
    assert msg.endswith(", or --version 2")
    assert load_model("p@champion").resolved == "models:/p/1"
    assert load_model("p", version=2).resolved == "models:/p/2"
    with pytest.raises(ModelRefError, match=r"no registered model 'q'. Registered models: p\."):
        load_model("q")


def test_a_model_without_an_alias_is_told_to_give_a_version_or_name_one(home, tmp_path):
    train_tiny(tmp_path, name="solo", alias=None)
    with pytest.raises(ModelRefError) as e:
        load_model("solo")
    msg = str(e.value)
    assert msg == (
        "say which version of 'solo' (versions: 1): --version 1; or name one with an alias, "
        "`geotune models alias solo champion 1`, and predict with solo@champion"
    )
    assert load_model("solo", version=1).resolved == "models:/solo/1"
    r = geotune(home, *msg.split("`")[1].split()[1:])
    assert r.returncode == 0, r.stderr
    assert load_model("solo@champion").resolved == "models:/solo/1"


def test_unknown_names_and_versions_are_user_errors(at_home):
    with pytest.raises(ModelRefError, match=r"no registered model 'q'. Registered models: p\."):
        load_model("q@champion")
    with pytest.raises(ModelRefError, match=r"no version 7; its versions: 1, 2"):
        load_model("p", version=7)
    r = geotune(
        at_home["home"],
        "predict",
        "--model",
        "p@nope",
        "--image",
        str(at_home["scene"]),
        "--out",
        str(at_home["tmp"] / "never"),
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr and "no alias 'nope'" in r.stderr
    assert not (at_home["tmp"] / "never").exists()


HEAVY = (
    "mlflow",
    "timm",
    "torchvision",
    "segmentation_models_pytorch",
    "lightning",
    "torch._dynamo",
)
IN_PROCESS = """import json, sys
from trainer.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))"""


def test_geotune_predict_on_a_resnet_model_imports_no_mlflow_nor_timm(at_home, tmp_path):
    out = tmp_path / "out"
    args = [
        "predict",
        "--model",
        "p@champion",
        "--image",
        str(at_home["scene"]),
        "--out",
        str(out),
        "--precision",
        "fp32",
    ]
    r = subprocess.run(
        [sys.executable, "-c", IN_PROCESS % (HEAVY,), *args],
        env=env_with_home(at_home["home"]),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == {"code": 0, "heavy": []}
    # the same classes as the model loaded through MLflow's pyfunc loader
    from trainer.predict import PredictOptions, predict_scene
    from trainer.registry import load_with_mlflow

    via = tmp_path / "via-mlflow"
    s = predict_scene(
        load_with_mlflow("models:/p/1"),
        [at_home["scene"]],
        via,
        options=PredictOptions(precision="fp32"),
        progress=False,
    )
    with rasterio.open(out / "classes.tif") as a, rasterio.open(via / "classes.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))
    assert json.loads((out / "summary.json").read_text())["n_polygons"] == s["n_polygons"]


def same_random_weights(ref, mine) -> None:
    """``ref``'s state (its values shifted at random) loaded into both; the same keys in order."""
    state = {
        k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in ref.state_dict().items()
    }
    assert list(state) == list(mine.state_dict())
    ref.load_state_dict(state)
    mine.load_state_dict(state, strict=True)


@pytest.mark.parametrize("block,layers", [("basic", (2, 2, 2, 2)), ("bottleneck", (1, 1, 1, 1))])
@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 2, 3)])
def test_the_resnet_trunk_is_timms(block, layers, out_indices):
    from timm.models import FeatureListNet
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    kind = BasicBlock if block == "basic" else Bottleneck
    ref = ResNet(block=kind, layers=layers, in_chans=6, num_classes=0)
    ref = FeatureListNet(ref, out_indices=out_indices).eval()
    mine = ResNetTrunk(block, layers, 6, out_indices).eval()
    same_random_weights(ref, mine)
    x = torch.randn(2, 6, 96, 96)
    with torch.inference_mode():
        for a, b in zip(ref(x), mine(x), strict=True):
            assert torch.equal(a, b)
    assert mine.channels() == ref.feature_info.channels()
    assert mine.reduction() == ref.feature_info.reduction()


@pytest.mark.parametrize(
    "enc,dec",
    [([0, 64, 64, 128, 256, 512], [256, 128, 64, 32, 16]), ([0, 0, 128, 256], [256, 128, 64])],
)
def test_the_unet_decoder_is_smps(enc, dec):
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder as Ref

    ref = Ref(encoder_channels=enc, decoder_channels=dec, n_blocks=len(dec)).eval()
    mine = UnetDecoder(enc, dec, len(dec)).eval()
    same_random_weights(ref, mine)
    feats = [torch.randn(2, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate(enc)]
    with torch.inference_mode():
        assert torch.equal(ref(feats), mine(feats))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_folded_batch_norms_predict_the_classes_of_the_plain_network(
    at_home, tmp_path, monkeypatch, precision
):
    """On the CPU the network runs with its batch norms folded into the convolutions, in
    float32 and under bfloat16 autocast alike: the plain network's classes and polygons."""
    import trainer.inference
    from trainer.predict import PredictOptions, predict_scene

    scene, _ = make_scene(tmp_path, size=300, seed=3)
    opts = PredictOptions(precision=precision, chip_size=96, overlap=16, tile_size=128)
    model = load_model("p@champion")
    folded = predict_scene(model, [scene], tmp_path / "folded", options=opts, progress=False)
    net = model.__dict__["_folded_nets"]["cpu"]
    assert net is not model.net and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()
    )
    monkeypatch.setattr(trainer.inference, "fold_batch_norms", lambda n: n)
    plain_model = load_model("p@champion")
    plain = predict_scene(plain_model, [scene], tmp_path / "plain", options=opts, progress=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain_model.net.modules())
    with (
        rasterio.open(tmp_path / "folded" / "classes.tif") as a,
        rasterio.open(tmp_path / "plain" / "classes.tif") as b,
    ):
        assert (a.read(1) == b.read(1)).mean() >= 0.999
    # a near-tie pixel that flips class may split one polygon or leave one behind (bf16 rounds
    # more coarsely than fp32: a flip or two among these ~30 polygons)
    slack = 1 if precision == "fp32" else 2
    n = plain["n_polygons"]
    assert abs(folded["n_polygons"] - n) <= max(slack, 0.005 * n)


def test_gdal_block_cache_is_bounded_not_off_and_a_users_setting_stays(
    at_home, tmp_path, monkeypatch
):
    """While a scene is predicted GDAL's block cache (one per process, every thread's) holds
    64 MiB: bounded, so memory stays flat, and a real cache. It once held 64 bytes (rasterio
    takes ``GDAL_CACHEMAX=64`` as bytes), which evicts every block at once, the written blocks
    of another thread's outputs too: a CI run lost a whole tile of a prediction to it. A
    ``GDAL_CACHEMAX`` the user set in the environment is kept."""
    from rasterio.env import get_gdal_config

    from datamodules.imagery import BLOCK_CACHE_BYTES
    from trainer.predict import PredictOptions, predict_scene

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    scene, _ = make_scene(tmp_path, size=160, seed=5)
    seen = []
    opts = PredictOptions(chip_size=96, overlap=16, tile_size=64)
    predict_scene(
        load_model("p@champion"), [scene], tmp_path / "out", options=opts, progress=False,
        report=lambda done, total: seen.append(get_gdal_config("GDAL_CACHEMAX")),
    )  # fmt: skip
    assert seen and set(seen) == {BLOCK_CACHE_BYTES} == {64 * 2**20}

    users = "from datamodules.imagery import bound_block_cache as b; from rasterio.env import "
    users += "get_gdal_config as g; b(); print(g('GDAL_CACHEMAX'))"
    env = env_with_home(at_home["home"]) | {"GDAL_CACHEMAX": "300"}
    out = subprocess.run([sys.executable, "-c", users], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [str(300 * 2**20)], out.stderr


def test_output_tiles_written_while_other_threads_read_are_all_kept(tmp_path):
    """GDAL's block cache is the process's, and a thread that needs room in it flushes the
    oldest blocks, another thread's half-written output block too, which that thread may then
    read back from disk without its last tile (OSGeo/gdal#2011). With the 64-byte cache geotune
    once set, 17 of 1000 files written in 128-px tiles into 512-px blocks beside two reading
    threads lost pixels (0 of 1000 with either change below). The outputs' temporary files, as
    the sink makes them, with the bounded cache: every tile kept, for a tile edge GeoTIFF can
    use as its block (whole blocks, no cache) and for one it cannot (partial blocks, cached)."""
    import threading

    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from datamodules.imagery import Grid, bound_block_cache
    from trainer.sink import OutputLayout, _profile

    bound_block_cache()
    rng = np.random.default_rng(0)
    busy = tmp_path / "busy.tif"
    with rasterio.open(
        busy, "w", driver="GTiff", width=1024, height=1024, count=6, dtype="uint16",
        tiled=True, compress="deflate", transform=from_origin(0, 0, 10, 10), crs="EPSG:32633",
    ) as dst:  # fmt: skip
        dst.write(rng.integers(1, 5000, (6, 1024, 1024), dtype=np.uint16))
    stop = threading.Event()

    def read():
        with rasterio.open(busy) as src:
            r = np.random.default_rng(threading.get_ident() % 1000)
            while not stop.is_set():
                src.read(window=Window(*r.integers(0, 800, 2), 200, 200))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    grid = Grid(rasterio.crs.CRS.from_epsg(32633), from_origin(0, 0, 10, 10), 1000, 1000)
    lost = []
    try:
        for tile in [128] * 150 + [120] * 150:
            block = OutputLayout(grid, tile).block
            assert block == (128 if tile == 128 else 512)
            path = tmp_path / "out.tif"
            with rasterio.open(path, "w", **_profile(grid, "uint8", 255, block)) as dst:
                for r in range(0, 1000, tile):
                    for c in range(0, 1000, tile):
                        h, w = min(tile, 1000 - r), min(tile, 1000 - c)
                        dst.write(np.ones((h, w), np.uint8), 1, window=Window(c, r, w, h))
            with rasterio.open(path) as src:
                lost.append(int((src.read(1) == 255).sum()))
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert lost == [0] * 300


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_sign_bit_relus_are_relu_bit_for_bit(at_home, dtype):
    """The folded CPU network's in-place ReLUs clamp a bfloat16 tensor's bits: relu's numbers
    for every value (signed zeros, tiny and huge values, infinities), and the network's output
    unchanged bit for bit, in bfloat16 autocast and float32."""
    import copy

    from trainer.inference import fold_batch_norms, sign_bit_relus

    special = torch.tensor([-0.0, 0.0, 1e-40, -1e-40, 3e38, -3e38, float("inf"), -float("inf")])
    x = torch.cat([special, torch.randn(4096) * 10]).to(dtype)
    relu = sign_bit_relus(torch.nn.Sequential(torch.nn.ReLU(inplace=True)))
    assert type(relu[0]) is not torch.nn.ReLU
    assert torch.equal(relu(x.clone()), torch.relu(x))
    if dtype is torch.bfloat16:  # clamped bits: -0 becomes +0 (equal to it, as relu's -0 is)
        assert not torch.signbit(relu(x.clone())).any()

    model = load_model("p@champion")
    net = fold_batch_norms(copy.deepcopy(model.net.eval()))
    n_relus = sum(type(m) is torch.nn.ReLU for m in net.modules())
    fast = sign_bit_relus(copy.deepcopy(net))
    assert n_relus > 0 and not any(type(m) is torch.nn.ReLU for m in fast.modules())
    chips = torch.randn(2, len(model.record["bands"]), 96, 96) * 3
    chips = chips.contiguous(memory_format=torch.channels_last)
    auto = torch.autocast("cpu", torch.bfloat16, enabled=dtype is torch.bfloat16)
    with torch.inference_mode(), auto:
        assert torch.equal(fast(chips), net(chips))


@pytest.mark.parametrize("name", ["resnet18", "prithvi_eo_v2_300", "clay_v1_5"])
def test_bfloat16_weights_leave_the_bf16_forward_unchanged(name):
    """Convolution and linear weights cast to bfloat16 once: under bfloat16 autocast the
    network's output is the float32-weighted network's bit for bit (autocast casts them the
    same way on every call), for the ResNet, Prithvi and Clay families; the normalisations keep
    float32."""
    import copy

    from trainer.backbones import build_backbone
    from trainer.heads import SegmentationNet
    from trainer.inference import bfloat16_weights, fold_batch_norms

    torch.manual_seed(0)
    bands = ["blue", "green", "red", "nir08", "swir16", "swir22"]
    kw = {"size": "tiny", "bands": bands, "mean": [1000.0] * 6, "std": [500.0] * 6}
    net = SegmentationNet(build_backbone(name, "random", **kw), 3, gsd=10.0).eval()
    net = fold_batch_norms(net)
    fast = bfloat16_weights(copy.deepcopy(net))
    dtypes = {p.dtype for p in fast.parameters()}
    assert dtypes == {torch.bfloat16, torch.float32} or (
        name == "resnet18" and dtypes == {torch.bfloat16}
    )
    x = torch.rand(2, 6, 64, 64) * 3000
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        want, got = net(x), fast(x)
    assert got.dtype == want.dtype and torch.equal(got, want)
    # the check can fail: weights rounded another way give other numbers
    worse = copy.deepcopy(fast)
    with torch.no_grad():
        next(p for p in worse.parameters() if p.dtype is torch.bfloat16).mul_(1.01)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert not torch.equal(worse(x), want)


_BUFFERS = """
import ctypes
import numpy as np
from trainer.inference import give_back_free_memory, keep_large_buffers

class MallInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo
tuned = keep_large_buffers()
a = np.ones(48 << 20, dtype=np.uint8)  # 48 MB: above glibc's largest mmap threshold
mapped = libc.mallinfo2().hblkhd >= 48 << 20  # in a mapping of its own
del a
kept = libc.mallinfo2().fordblks >= 48 << 20  # freed, and still in the heap for the next one
give_back_free_memory()
returned = libc.mallinfo2().fordblks < 48 << 20  # after a prediction: back to the system
print(tuned, mapped, kept, returned)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_large_buffers_stay_in_the_heap_unless_the_user_tunes_malloc():
    """After :func:`keep_large_buffers`, a 48 MB buffer comes from malloc's heap and, freed,
    stays there for the next one until the prediction gives it back; glibc's default maps it
    privately and unmaps it when freed (every forward pass then faults the pages in again). A
    user's ``MALLOC_*`` setting is left alone."""
    import os

    # a process started before may have set some (Dask's nanny sets MALLOC_TRIM_THRESHOLD_)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}

    def run(**env):
        out = subprocess.run(
            [sys.executable, "-c", _BUFFERS],
            env={**clean, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split()

    assert run() == ["True", "False", "True", "True"]
    assert run(MALLOC_TOP_PAD_=str(128 << 10)) == ["False", "True", "False", "True"]


def test_concurrent_requests_for_one_version_share_one_loaded_model(at_home, monkeypatch):
    import threading

    import trainer.loading
    from serve.models import ModelCache
    from trainer.inference import _LANES, inference_net

    loads = []
    real = trainer.loading.load_model

    def counting(*a, **k):
        loads.append(a)
        return real(*a, **k)

    monkeypatch.setattr(trainer.loading, "load_model", counting)
    cache, got = ModelCache(2), []
    threads = [threading.Thread(target=lambda: got.append(cache.get("p", 1))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(got) == 4 and all(m is got[0] for m in got)
    cpu = torch.device("cpu")
    assert inference_net(got[0], cpu, True) is inference_net(got[1], cpu, True)
    # the bfloat16 copy runs its forward passes in the float32 copy's lane
    bf16 = inference_net(got[0], cpu, True, "bf16")
    assert bf16 is not inference_net(got[0], cpu, True) and bf16 is inference_net(
        got[1], cpu, True, "bf16"
    )
    assert _LANES[bf16] is _LANES[inference_net(got[0], cpu, True)]


def _with_running_statistics(net):
    """``net`` in eval mode with batch norms whose statistics and affine parameters are not the
    identity: a folded or fused network that dropped or misplaced one gives other numbers."""
    g = torch.Generator().manual_seed(5)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return net.eval()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_fused_activations_compute_the_folded_network(name):
    """On the CPU each convolution's ReLU, and a ResNet block's residual sum with its ReLU, run
    as post-operations of the convolution's oneDNN primitive: in float32 the folded network's
    output bit for bit, channels_last or not; under bfloat16 autocast (a sum rounded once
    instead of twice) the same classes; and the primitive was used (no ReLU left after a
    convolution, the blocks replaced)."""
    import copy

    from trainer.backbones import build_backbone
    from trainer.heads import SegmentationNet
    from trainer.inference import (
        bfloat16_weights,
        fold_batch_norms,
        fuse_activations,
        pointwise_convolutions,
        sign_bit_relus,
    )

    assert pointwise_convolutions()  # the pinned torch has it: the test below must not pass idle
    torch.manual_seed(0)
    bands = ["blue", "green", "red", "nir08", "swir16", "swir22"]
    kw = {"size": "tiny", "bands": bands, "mean": [1000.0] * 6, "std": [500.0] * 6}
    net = _with_running_statistics(
        SegmentationNet(build_backbone(name, "random", **kw), 4, gsd=10.0)
    )
    folded = sign_bit_relus(fold_batch_norms(copy.deepcopy(net)))
    fused = sign_bit_relus(fuse_activations(fold_batch_norms(copy.deepcopy(net))))
    kinds = [type(m).__name__ for m in fused.modules()]
    assert "PointwiseConv2d" in kinds and "_FusedBlock" in kinds and "_Block" not in kinds
    assert kinds.count("SignBitReLU") < [type(m).__name__ for m in folded.modules()].count(
        "SignBitReLU"
    )
    x = torch.rand(2, 6, 64, 64) * 3000
    for layout in (torch.channels_last, torch.contiguous_format):
        xl = x.contiguous(memory_format=layout)
        a, b = folded.to(memory_format=layout), fused.to(memory_format=layout)
        with torch.inference_mode():
            assert torch.equal(b(xl), a(xl))
        a16, b16 = bfloat16_weights(copy.deepcopy(a)), bfloat16_weights(copy.deepcopy(b))
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            want, got = a16(xl).float(), b16(xl).float()
        assert got.shape == want.shape and (got.argmax(1) == want.argmax(1)).float().mean() > 0.99
        assert (got - want).abs().max() <= 0.05 * want.abs().max()


def test_bfloat16_copies_run_where_onednn_computes_no_bfloat16(monkeypatch):
    """On a CPU whose oneDNN computes no bfloat16 (AVX2 only: its bfloat16 primitives refuse to
    run), the fused network's bfloat16 copy runs torch's own convolution, residual sum and ReLU,
    with nothing packed: the same classes as the folded network's bfloat16 forward."""
    import copy

    import trainer.inference as inference
    from trainer.backbones import build_backbone
    from trainer.heads import SegmentationNet

    monkeypatch.setattr(inference, "onednn_bfloat16", lambda: False)
    torch.manual_seed(0)
    bands = ["blue", "green", "red", "nir08"]
    kw = {"size": "tiny", "bands": bands, "mean": [1000.0] * 4, "std": [500.0] * 4}
    net = _with_running_statistics(
        SegmentationNet(build_backbone("resnet18", "random", **kw), 4, gsd=10.0)
    )
    fold = inference.fold_batch_norms
    folded = inference.bfloat16_weights(fold(copy.deepcopy(net)))
    fused = inference.bfloat16_weights(inference.fuse_activations(fold(copy.deepcopy(net))))
    convs = [m for m in fused.modules() if type(m).__name__ == "PointwiseConv2d"]
    assert convs and all(c.packed_weight() is c.weight for c in convs)
    x = (torch.rand(2, 4, 64, 64) * 3000).contiguous(memory_format=torch.channels_last)
    a, b = (n.to(memory_format=torch.channels_last) for n in (folded, fused))
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        want, got = a(x).float(), b(x).float()
    assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.99
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


def test_fused_activations_leave_unfolded_batch_norms_alone():
    """A batch norm that was not folded (still a ``BatchNorm2d``) stands between a convolution
    and its ReLU: nothing there is fused, and the output is the network's."""
    from trainer.inference import fuse_activations

    trunk = _with_running_statistics(ResNetTrunk("basic", (1, 1), 6, (0, 1, 2)))
    x = torch.rand(1, 6, 64, 64)
    with torch.inference_mode():
        want = trunk(x)
        fuse_activations(trunk)
        got = trunk(x)
    assert not any(type(m).__name__ in ("PointwiseConv2d", "_FusedBlock") for m in trunk.modules())
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_pointwise_convolutions_pack_their_weights_once_and_again_when_they_change():
    """A fused convolution reorders its weight into oneDNN's layout once, not on every call:
    the same output as the plain weight bit for bit, the same packed tensor call after call, a
    new one when the weight changes in place or is cast to bfloat16 (as ``bfloat16_weights``
    does to a copy: the copy carries no packed weight of the original), and a deep copy made
    after a forward computes the same."""
    import copy

    from torch import nn

    from trainer.inference import bfloat16_weights, pointwise

    torch.manual_seed(0)
    conv = pointwise(nn.Conv2d(6, 8, 3, padding=1), relu=True)
    x = torch.rand(2, 6, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = torch.relu(nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        got = conv(x)
        first = conv.packed_weight()
        assert torch.equal(got, want) and first.is_mkldnn and conv.packed_weight() is first
        assert torch.equal(copy.deepcopy(conv)(x), want)
    with torch.no_grad():
        conv.weight.mul_(-1)
    with torch.inference_mode():
        want = torch.relu(nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        assert torch.equal(conv(x), want) and conv.packed_weight() is not first
        bf = bfloat16_weights(copy.deepcopy(conv))
        assert (
            bf.packed_weight().dtype is torch.bfloat16
            and conv.packed_weight().dtype is torch.float32
        )
        with torch.autocast("cpu", torch.bfloat16):
            assert (bf(x).float() - want).abs().max() <= 0.05 * want.abs().max()
