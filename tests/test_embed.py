"""Chip embeddings from the command line: a scene to GeoParquet with a tiny Clay saved in the
official checkpoint layout, read back by geopandas, pyarrow and DuckDB (with and without its
spatial extension), checked against the encoder run by hand on one chip; similarity search by
chip, place, area and vector, exact and approximate; weights never silently random; a
fine-tune's encoder and label suggestions from it."""

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import torch
from conftest import env_with_home
from synth import make_scene, train_tiny

GEOTUNE = [sys.executable, "-m", "trainer.cli"]


def run(args, home, check=True):
    p = subprocess.run(
        GEOTUNE + args, capture_output=True, text=True, env=env_with_home(home), timeout=600
    )
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 256² scene with a nodata corner, tiny Clay weights as Clay's Lightning state dict (with
    a decoder key the loader drops), and the embeddings file made by the CLI."""
    from trainer.backbones import clay

    tmp = tmp_path_factory.mktemp("embed")
    scene, _ = make_scene(tmp, size=256, seed=3, nodata_corner=96)
    torch.manual_seed(0)
    enc = clay.build("clay_v1_5", weights=None, size="tiny")
    state = {f"model.encoder.{k}": v for k, v in enc.state_dict().items()}
    state["model.decoder.mask_patch"] = torch.zeros(8)
    torch.save(state, tmp / "clay-v1.5.ckpt")
    home = tmp / "home"
    out = tmp / "emb.parquet"
    p = run(
        [
            "embed",
            "--backbone",
            "clay_v1_5",
            "--size",
            "tiny",
            "--weights",
            str(tmp / "clay-v1.5.ckpt"),
            "--sensor",
            "sentinel-2-l2a",
            "--image",
            str(scene),
            "--date",
            "2024-06-01",
            "--chip-size",
            "64",
            "--stride",
            "48",
            "--dtype",
            "float16",
            "--precision",
            "fp32",
            "--out",
            str(out),
        ],
        home,
    )
    return {"tmp": tmp, "scene": scene, "out": out, "home": home, "stdout": p.stdout}


def test_geoparquet_for_geopandas_pyarrow_and_duckdb(files):
    out, scene = files["out"], files["scene"]
    df = gpd.read_parquet(out)
    assert df.crs.equals("OGC:CRS84") and (df.geom_type == "Polygon").all()
    # chips every 48 px, the last flush with the edge: 5 x 5 grid origins 0,48,96,144,192
    lines = files["stdout"].splitlines()
    assert lines[0].startswith(f"{len(df)} chips embedded (64 values, cls pooled, 64 px chips")
    assert lines[1] == f"  {25 - len(df)} chips with less than 50% of their pixels valid: skipped"
    assert lines[2].startswith("  input: sentinel-2-l2a (given)")
    assert set(df.row) | set(df.col) <= {0, 48, 96, 144, 192}
    assert (df.valid_fraction >= 0.5).all()
    assert not ((df.row < 48) & (df.col < 48)).any()  # the nodata corner: not embedded
    with rasterio.open(scene) as src:
        from rasterio.warp import transform_bounds

        w, s, e, n = transform_bounds(src.crs, "OGC:CRS84", *src.bounds)
    assert df.total_bounds[0] >= w - 1e-9 and df.total_bounds[2] <= e + 1e-9
    assert df.total_bounds[1] >= s - 1e-9 and df.total_bounds[3] <= n + 1e-9
    assert all(shapely.is_ccw(g.exterior) for g in df.geometry)  # RFC 7946 winding
    # geopandas knows the covering column and leaves it out; pyarrow reads it
    cover = pq.read_table(out, columns=["bbox"]).column("bbox").to_pylist()
    bbox = np.array([[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in cover])
    assert np.allclose(bbox, df.geometry.bounds.to_numpy())
    assert df.backbone.unique().tolist() == ["clay_v1_5"] and df["pool"].unique().tolist() == [
        "cls"
    ]
    assert df.weights.iloc[0].startswith("clay-v1.5.ckpt sha256:")
    assert str(df.date.iloc[0]) == "2024-06-01"

    meta = pq.read_metadata(out).metadata
    geo = json.loads(meta[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    prov = json.loads(meta[b"geotune"])
    assert (
        prov["weights"]["file"].endswith("clay-v1.5.ckpt")
        and len(prov["weights"]["file_sha256"]) == 64
    )
    assert prov["bands"] == ["blue", "green", "red", "nir08"] and prov["chip_size"] == 64
    assert prov["normalisation"]["statistics"].startswith("Clay metadata.yaml sentinel-2-l2a")
    assert pq.read_schema(out).field("embedding").type.value_type == "halffloat"

    import duckdb

    con = duckdb.connect()
    x0, y0, x1, y1 = df.total_bounds
    xm = (x0 + x1) / 2
    plain = con.execute(
        f"SELECT count(*) FROM read_parquet('{out}') WHERE bbox.xmin < {xm}"
    ).fetchone()[0]
    assert plain == int((bbox[:, 0] < xm).sum()) > 0
    dim = con.execute(f"SELECT len(embedding) FROM read_parquet('{out}') LIMIT 1").fetchone()[0]
    assert dim == 64
    # DuckDB's spatial extension as a wheel ships it (rustac-duckdb-extensions): no download
    from rustac_duckdb_extensions import extension_directory

    con.execute(f"SET extension_directory = '{extension_directory()}'")
    con.execute("LOAD spatial")
    pt = df.geometry.iloc[3].centroid
    hit = con.execute(
        f"SELECT chip_id FROM read_parquet('{out}') WHERE "
        f"ST_Contains(geometry::GEOMETRY, ST_Point({pt.x}, {pt.y}))"
    ).fetchall()
    assert int(df.chip_id.iloc[3]) in {h[0] for h in hit}


def test_embedding_is_the_encoder_on_the_chip(files):
    """One chip by hand, as training would feed it: the scene's stored values, Clay's Sentinel-2
    statistics converted to them (``fit_statistics``, what training does for a dataset of this
    sensor), the encoder with the chip's date and centre, the class token; the file holds it
    (float16)."""
    from datetime import date
    from types import SimpleNamespace

    from pyproj import Transformer

    from trainer.backbones import build_backbone
    from trainer.backbones.adapt import fit_statistics
    from trainer.heads import Normalize

    df = gpd.read_parquet(files["out"])
    row = df.iloc[len(df) // 2]
    bands = ["blue", "green", "red", "nir08"]
    bb = build_backbone(
        "clay_v1_5",
        str(files["tmp"] / "clay-v1.5.ckpt"),
        size="tiny",
        sensor="sentinel-2-l2a",
        bands=bands,
        out_indices=[-1],
    )
    ds = SimpleNamespace(id="s", manifest={"sensor": "sentinel-2-l2a"}, bands=bands)
    assert fit_statistics(bb, ds) and bb.spec.normalization["conversion"].startswith("exact")
    with rasterio.open(files["scene"]) as src:
        x = src.read(window=((row.row, row.row + 64), (row.col, row.col + 64))).astype(np.float32)
        cx, cy = src.transform @ (row.col + 32, row.row + 32)
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    md = bb.make_metadata(dates=[[date(2024, 6, 1)]], lonlat=torch.tensor([[lon, lat]]), gsd=10.0)
    t = Normalize(bb.spec.mean, bb.spec.std)(torch.from_numpy(x)[None])
    with torch.no_grad():
        want = bb.forward_tokens(t, **md)[0][-1][0, 0].numpy()
    got = np.asarray(row.embedding, dtype=np.float32)
    assert np.allclose(got, want, atol=2e-3 * np.abs(want).max())
    prov = json.loads(pq.read_metadata(files["out"]).metadata[b"geotune"])
    assert prov["normalisation"]["mean"] == pytest.approx(list(bb.spec.mean))


def search(capsys, *args) -> tuple[int, dict | str]:
    """``geotune embed search ...`` in this process (the command's own code, no start-up)."""
    from trainer.cli import main

    capsys.readouterr()
    code = main(["embed", "search", *map(str, args)])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err)


def test_search_by_chip_place_area_and_vector(files, tmp_path, capsys):
    out, home = str(files["out"]), files["home"]
    df = gpd.read_parquet(out)
    E = np.stack(df.embedding.map(lambda v: np.asarray(v, np.float32)))
    U = E / np.linalg.norm(E, axis=1, keepdims=True)
    ids = list(df.chip_id)
    q = ids[len(ids) // 2]
    p = run(["embed", "search", "--index", out, "--like", str(q), "--k", "5"], home)
    ans = json.loads(p.stdout)
    sims = U @ U[ids.index(q)]
    want = [int(ids[i]) for i in np.argsort(-sims) if ids[i] != q][:5]
    assert [f["properties"]["chip_id"] for f in ans["features"]] == want  # the query left out
    scores = [f["properties"]["score"] for f in ans["features"]]
    assert scores == sorted(scores, reverse=True)
    assert abs(scores[0] - sims[ids.index(want[0])]) < 1e-4
    assert ans["query"]["method"] == "exact" and ans["features"][0]["properties"]["rank"] == 1

    pt = df.geometry.iloc[5].centroid  # inside chip 5's footprint (and maybe its neighbours')
    _, near = search(capsys, "--index", out, "--near", f"{pt.x},{pt.y}", "--k", "3")
    held = near["query"]["chip_id"]
    assert df.set_index("chip_id").geometry[held].covers(pt)
    assert held not in [f["id"] for f in near["features"]]

    # an area: the mean of its chips' unit vectors; the approximate index agrees on a small file
    poly = tmp_path / "area.geojson"
    poly.write_text(json.dumps(shapely.geometry.mapping(df.geometry.iloc[10].buffer(-1e-4))))
    _, exact = search(capsys, "--index", out, "--polygon", poly, "--k", "4", "--method", "exact")
    _, approx = search(
        capsys, "--index", out, "--polygon", poly, "--k", "4", "--method", "approximate"
    )
    assert [f["id"] for f in approx["features"]] == [f["id"] for f in exact["features"]]
    built = json.loads(Path(out + ".faiss.json").read_text())
    assert Path(out + ".faiss").is_file() and built["source"]["rows"] == len(df)

    vec = tmp_path / "v.npy"
    np.save(vec, E[0])
    _, by_vec = search(capsys, "--index", out, "--vector", vec, "--k", "1")
    assert by_vec["features"][0]["id"] == ids[0]  # a vector leaves nothing out

    code, err = search(capsys, "--index", out, "--near", "0,0")
    assert code == 2 and "no embedded chip holds the point" in err and "lon" in err
    np.save(vec, E[0][:10])
    code, err = search(capsys, "--index", out, "--vector", vec)
    assert code == 2 and "10 values" in err and "64" in err


def test_exact_top_matches_a_full_sort():
    from trainer.search import exact_top

    rng = np.random.default_rng(0)
    v = rng.normal(size=(150_000, 16)).astype(np.float16)
    inv = 1 / np.linalg.norm(v.astype(np.float32), axis=1)
    q = rng.normal(size=16).astype(np.float32)
    q /= np.linalg.norm(q)
    rows, scores = exact_top(v, inv, q, 25)
    full = (v.astype(np.float32) @ q) * inv
    assert list(rows) == list(np.argsort(-full, kind="stable")[:25])
    assert np.allclose(scores, full[rows])


def cli(capsys, *args) -> tuple[int, str, str]:
    """The geotune command in this process: exit code, standard output and error."""
    from trainer.cli import main

    capsys.readouterr()  # what the test printed before
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_weights_are_never_silently_random(home, files, tmp_path, capsys):
    out = tmp_path / "r.parquet"
    empty, _ = make_scene(tmp_path, size=64, nodata_corner=64, name="empty.tif")

    def embed(*extra, image=files["scene"]):
        tiny = ["--backbone", "clay_v1_5", "--size", "tiny", "--chip-size", "64"]
        return cli(capsys, "embed", *tiny, "--image", image, "--out", out, *extra)

    # no --weights, and no file in the (empty) weights directory
    code, _, err = embed("--sensor", "sentinel-2-l2a")
    assert code == 2 and "clay-v1.5.ckpt" in err and "weights=random" in err
    code, _, err = embed("--weights", "random")
    assert code == 2 and "--sensor" in err  # Clay's statistics need the sensor
    code, _, err = embed("--weights", "random", "--sensor", "sentinel-2-l2a", image=empty)
    assert code == 2 and "no chip of the scene has 50%" in err
    assert not out.exists()
    code, _, err = embed("--weights", "random", "--sensor", "sentinel-2-l2a")
    assert code == 0, err
    prov = json.loads(pq.read_metadata(out).metadata[b"geotune"])
    assert prov["weights"] == {"file": "random", "file_sha256": None}
    assert gpd.read_parquet(out).weights.unique().tolist() == ["random"]


def test_a_fine_tune_embeds_and_suggests_labels(home, tmp_path, capsys):
    """A registered ResNet fine-tune: its encoder embeds a scene (mean-pooled last feature map),
    and `data suggest` proposes distinct, uncertain chips of its dataset."""
    scene = train_tiny(tmp_path, "fields", size=192, seed=2, keep=0.3, chips_per_epoch=16,
                       alias=None)  # fmt: skip
    out = tmp_path / "ft.parquet"
    run(
        ["embed", "--model", "fields", "--version", "1", "--image", str(scene), "--out", str(out)],
        home,
    )
    df = gpd.read_parquet(out)
    prov = json.loads(pq.read_metadata(out).metadata[b"geotune"])
    assert len(df) == 9 and df["pool"].unique().tolist() == ["mean"]  # 64 px training patches
    assert prov["weights"]["model"] == "models:/fields/1" and prov["dataset_id"] == "fields"
    assert len(df.embedding.iloc[0]) == prov["dim"]

    code, stdout, err = cli(capsys, "data", "suggest", "fields", "--n", "4")
    assert code == 0, err
    sug = json.loads(stdout)
    feats = sug["features"]
    assert sug["model"] == "models:/fields/1" and sug["chips_scored"] == 9 and len(feats) == 4
    assert [f["properties"]["rank"] for f in feats] == [1, 2, 3, 4]
    assert len({f["id"] for f in feats}) == 4
    props = [f["properties"] for f in feats]
    assert all(0 <= q["entropy"] <= 1 and 0 <= q["labelled_fraction"] <= 1 for q in props)
    assert props[0]["score"] == max(q["score"] for q in props)
    code, _, err = cli(capsys, "data", "suggest", "nothing")
    assert code == 2 and "nothing" in err


def test_embed_help_imports_nothing_heavy(tmp_path):
    code = (
        "import sys\nfrom trainer import cli\n"
        "for argv in (['embed', '--help'], ['embed', 'search', '--help'], ['data', 'suggest', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'mlflow', 'faiss') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in p.stdout and "--near" in p.stdout and "--stride" in p.stdout
