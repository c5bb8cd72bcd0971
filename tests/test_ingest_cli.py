"""``geotune data add|show|list|delete`` for every task, as a user types them."""

import subprocess
import sys

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from conftest import env_with_home
from synth import CLASSES, make_scene

from trainer.cli import main


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _points(tmp_path, image, cmap, n=200):
    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    rc = np.random.default_rng(1).integers(0, cmap.shape[0], (n, 2))
    names = [f"{CLASSES[cmap[r, c]]};{CLASSES[(cmap[r, c] + 1) % 3]}" if i % 4 == 0 else CLASSES[cmap[r, c]] for i, (r, c) in enumerate(rc)]  # fmt: skip
    geoms = [shapely.Point(*(t @ (c + 0.5, r + 0.5))) for r, c in rc]
    path = tmp_path / "sites.fgb"
    gpd.GeoDataFrame({"landuse": names}, geometry=geoms, crs=crs).to_file(path)
    return path


def test_classification_from_the_command_line(home, tmp_path, capsys):
    image, cmap = make_scene(tmp_path, size=256, seed=0)
    labels = _points(tmp_path, image, cmap)
    code, out, err = _cli(
        capsys, "data", "add", "--name", "Sites", "--image", str(image), "--labels", str(labels),
        "--class-column", "landuse", "--task", "classification", "--multi-label",
        "--chip-size", "32", "--block-size", "64",
    )  # fmt: skip
    assert code == 0, err
    assert "dataset 'sites' created" in out and "task: classification" in out
    assert "chips of 32 px, multi-label" in out
    assert "train chips" in out and "field" in out and "EPSG:32633" in out
    code, out, _ = _cli(capsys, "data", "show", "sites")
    assert (
        "bands: blue, green, red, nir08" in out
        and "splits: blocks of 64 px, seed 0; chips train" in out
    )
    for name in CLASSES:
        assert name in out
    code, out, _ = _cli(capsys, "data", "list")
    assert out.startswith("sites") and "classification" in out


def test_change_with_dates_background_and_split_column(home, tmp_path, capsys):
    before, cmap = make_scene(tmp_path, size=128, seed=0, name="before.tif")
    after, _ = make_scene(tmp_path, size=128, seed=9, name="after.tif")
    with rasterio.open(before) as src:
        t, crs = src.transform, src.crs
    boxes, splits = [], []
    for i, (r, c) in enumerate([(10, 10), (10, 70), (70, 10), (70, 70), (40, 40), (100, 100)]):
        x0, y0 = t @ (c, r)
        boxes.append(shapely.box(x0, y0 - 200, x0 + 200, y0))
        splits.append(["train", "train", "val", "test", "train", "val"][i])
    labels = tmp_path / "changes.geojson"
    gpd.GeoDataFrame(
        {"kind": ["new building"] * 6, "fold": splits}, geometry=boxes, crs=crs
    ).to_file(labels)
    code, out, err = _cli(
        capsys, "data", "add", "--name", "chg", "--task", "change", "--image", str(before),
        "--image", str(after), "--labels", str(labels), "--class-column", "kind",
        "--background", "unchanged", "--date", "2019-07-01", "--date", "2024-07-01",
        "--split-column", "fold", "--min-class-pixels", "1", "--block-size", "32",
    )  # fmt: skip
    assert code == 0, err
    assert "task: change" in out and "dates: 2019-07-01, 2024-07-01" in out
    assert "background class 'unchanged'" in out and "splits: from column 'fold'" in out
    assert "0 unchanged" in out and "1 new building" in out


def test_bad_input_exits_2_with_the_message(home, scene, capsys, tmp_path):
    base = ["data", "add", "--name", "x", "--image", str(scene["image"]), "--labels", str(scene["labels"]), "--class-column", "class_name"]  # fmt: skip
    code, _, err = _cli(capsys, *base, "--task", "change")
    assert code == 2 and "error: --task change needs exactly two dates, got 1" in err
    code, _, err = _cli(capsys, *base, "--split-fractions", "0.7,0.3")
    assert code == 2 and "--split-fractions takes three non-negative numbers" in err
    code, _, err = _cli(capsys, *base, "--ignore-values", "zero")
    assert code == 2 and "--ignore-values takes integers" in err
    code, _, err = _cli(capsys, *base, "--date", "yesterday")
    assert code == 2 and "date 'yesterday' is not an ISO date" in err
    code, _, err = _cli(capsys, "data", "show", "nope")
    assert code == 2 and "no dataset 'nope'" in err
    code, out, _ = _cli(capsys, "data", "list")
    assert out.startswith("no datasets yet")


def test_data_commands_stay_light(home, scene):
    """`geotune data add/show` import neither torch nor lightning (they start fast)."""
    code = (
        "import sys\nfrom trainer.cli import main\n"
        f"main(['data', 'add', '--name', 'x', '--image', {str(scene['image'])!r}, '--labels', "
        f"{str(scene['labels'])!r}, '--class-column', 'class_name', '--block-size', '32'])\n"
        "main(['data', 'show', 'x'])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'timm', 'torchgeo') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_with_home(home), timeout=120)  # fmt: skip
    assert "HEAVY []" in p.stdout, p.stdout[-800:] + p.stderr[-800:]
    assert p.stdout.count("id: x") == 2
