"""The /v1 routes the Lab needs, through a real `geotune serve` and a real HTTP client: uploaded
scenes and their map tiles (a UTM pixel lands on its lon/lat in Web Mercator), owners, bad
input, backbones, benchmark results, and the Lab's static page and settings."""

import io
import zipfile

import morecantile
import numpy as np
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from test_serve import assert_error, create_key, servers  # noqa: F401

ORIGIN = (500_000.0, 4_200_000.0)  # EPSG:32633, lon 15.0, lat 37.95
MARK = (150, 100)  # row, col of the one red pixel


def rgb_scene(path, crs="EPSG:32633"):
    """A grey 8-bit RGB scene, 200 x 300 px of 10 m, with one pure red pixel at MARK."""
    data = np.full((3, 300, 200), 100, np.uint8)
    data[:, MARK[0], MARK[1]] = (255, 0, 0)
    profile = {"driver": "GTiff", "width": 200, "height": 300, "count": 3, "dtype": "uint8"}
    transform = from_origin(*ORIGIN, 10, 10)
    with rasterio.open(path, "w", **profile, crs=crs, transform=transform) as dst:
        dst.write(data)
    return path


def upload(client, path, **fields):
    with open(path, "rb") as f:
        return client.post("/v1/scenes", files={"image": (path.name, f)}, data=fields)


def rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def test_scene_tiles_line_up_with_web_mercator(servers, tmp_path):  # noqa: F811
    srv = servers("--dev", "--basemap-url", "https://{s}.tile.example.org/{z}/{x}/{y}.png")
    c = srv.client()
    r = upload(c, rgb_scene(tmp_path / "rgb.tif"), sensor="rgb")
    assert r.status_code == 201, r.text
    scene = r.json()
    assert scene["bands"] == ["red", "green", "blue"] and scene["shape"] == [300, 200]
    tj = c.get(scene["links"]["tilejson"]).json()
    assert tj["tilejson"] == "3.0.0" and tj["geotune"]["stretch"]["vmin"] == 0.0
    assert tj["geotune"]["stretch"]["vmax"] == 255.0 and tj["geotune"]["rgb"] == scene["bands"]

    # the red pixel's centre, in lon/lat, and where Web Mercator puts it in a z17 tile
    x = ORIGIN[0] + (MARK[1] + 0.5) * 10
    y = ORIGIN[1] - (MARK[0] + 0.5) * 10
    lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(x, y)
    w, s, e, n = tj["bounds"]
    assert w < lon < e and s < lat < n
    tms = morecantile.tms.get("WebMercatorQuad")
    z = 17  # a 10 m pixel is about 10 screen pixels here
    t = tms.tile(lon, lat, z)
    b = tms.xy_bounds(t)
    mx, my = tms.xy(lon, lat)
    col = (mx - b.left) / (b.right - b.left) * 256
    row = (b.top - my) / (b.top - b.bottom) * 256
    png = c.get(scene["links"]["tiles"].format(z=z, x=t.x, y=t.y))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = rgba(png.content)
    assert tuple(img[int(row), int(col)]) == (255, 0, 0, 255)
    red = np.argwhere((img[..., 0] == 255) & (img[..., 1] == 0))
    assert 60 < len(red) < 200  # one 10 m pixel at ~0.94 m per screen pixel
    assert abs(red[:, 0].mean() + 0.5 - row) < 1.0 and abs(red[:, 1].mean() + 0.5 - col) < 1.0

    # a stretch and a band choice; outside the scene, a transparent tile
    url = scene["links"]["tiles"].format(z=z, x=t.x, y=t.y)
    grey = rgba(c.get(url, params={"bands": "green", "vmin": 0, "vmax": 200}).content)
    assert 127 <= grey[0, 0, 0] <= 128 and grey[0, 0, 3] == 255
    assert tuple(grey[int(row), int(col)]) == (0, 0, 0, 255)
    far = c.get(scene["links"]["tiles"].format(z=z, x=t.x + 50, y=t.y))
    assert far.status_code == 200 and rgba(far.content)[..., 3].max() == 0

    # the Lab: its page, its settings, a policy that allows this server and the basemap only
    page = c.get("/lab/")
    assert page.status_code == 200 and '<script type="module"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "https://*.tile.example.org" in policy
    config = c.get("/lab/config.json").json()
    assert config["dev"] is True and "sentinel-2-l2a" in config["sensors"]
    assert config["basemap_url"] == "https://{s}.tile.example.org/{z}/{x}/{y}.png"
    assert c.get("/lab", follow_redirects=False).headers["location"] == "/lab/"


def test_scenes_belong_to_their_owner_and_bad_input_is_a_message(home, servers, tmp_path):  # noqa: F811
    alice_key, bob_key = create_key(home, "alice"), create_key(home, "bob")
    srv = servers()
    alice, bob, anon = srv.client(alice_key), srv.client(bob_key), srv.client()
    path = rgb_scene(tmp_path / "mine.tif")
    assert_error(upload(anon, path), 401, "needs an API key")
    r = upload(alice, path)  # no sensor: bands from the file are unnamed, the stretch from pixels
    assert r.status_code == 201, r.text
    scene = r.json()
    assert scene["bands"] == ["band1", "band2", "band3"] and not scene["bands_named"]
    assert "owner" not in scene and scene["name"] == "mine.tif"
    tj = alice.get(scene["links"]["tilejson"]).json()
    assert tj["geotune"]["stretch"]["source"] == "2-98 % of the pixels"
    links = scene["links"]
    tile = links["tiles"].format(z=14, x=8874, y=6324)
    for url in (links["self"], links["file"], links["tilejson"], tile):
        assert_error(bob.get(url), 404, "no scene")
    assert_error(bob.delete(links["self"]), 404)
    assert bob.get("/v1/scenes").json() == {"scenes": []}
    assert [s["id"] for s in alice.get("/v1/scenes").json()["scenes"]] == [scene["id"]]
    assert alice.get(links["file"]).content == path.read_bytes()  # as uploaded

    # bad tile requests say what is wrong
    assert_error(alice.get(tile, params={"bands": "red"}), 422, "band1, band2, band3")
    assert_error(alice.get(tile, params={"vmin": 5, "vmax": 1}), 422, "vmin < vmax")
    assert_error(alice.get(links["tiles"].format(z=2, x=9, y=0)), 422, "x and y run 0..3")
    assert_error(
        alice.get(links["tilejson"].replace("/image/", "/mask/")), 404, "Layers here: image"
    )

    # bad uploads: not a GeoTIFF, no CRS, not a scene id
    r = alice.post("/v1/scenes", files={"image": ("notes.txt", b"hello")})
    assert_error(r, 422, "'notes.txt' is not a format geotune reads", "GeoTIFF")
    vrt = io.BytesIO()  # a zip is named as one, whatever it holds (here a VRT)
    with zipfile.ZipFile(vrt, "w") as z:
        z.writestr("scene.vrt", "<VRTDataset/>")
    r = alice.post("/v1/scenes", files={"image": ("scene.zip", vrt.getvalue())})
    assert_error(r, 422, "'scene.zip' is a zip archive", "must be: GeoTIFF")
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as d:
        d.write(np.zeros((1, 8, 8), np.uint8))
    assert_error(upload(alice, nocrs), 422, "nocrs.tif has no CRS")
    assert_error(alice.get("/v1/scenes/scn-zzz/tiles/image/tilejson.json"), 404, "no scene")
    assert not [p for p in (home / "serve" / "scenes").iterdir() if p.name != scene["id"]]

    assert alice.delete(links["self"]).status_code == 204
    assert_error(alice.get(links["tilejson"]), 404, "no scene")


def test_backbones_lists_the_finetune_choices(servers, home):  # noqa: F811
    c = servers("--dev").client()
    body = c.get("/v1/backbones").json()
    rows = {b["name"]: b for b in body["backbones"]}
    assert {"resnet18", "clay_v1_5", "prithvi_eo_v2_300"} <= set(rows)
    assert "tiny" in rows["resnet18"]["sizes"] and rows["resnet18"]["default_size"] == "18"
    assert rows["clay_v1_5"]["pretrained_available"] is False  # an empty weights directory
    assert "segmentation" in body["tasks"]


def test_the_wheel_ships_the_lab(tmp_path):
    """`pip install` users get every file of the Lab (nested static folders) and no CDN."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src)
    for name in ("trainer", "datamodules", "serve", "conf"):
        shutil.copytree(repo / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("geotune-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("serve/static/")}
    lab = repo / "serve" / "static" / "lab"
    expected = {f"serve/static/lab/{p.relative_to(lab)}" for p in lab.rglob("*") if p.is_file()}
    assert expected <= shipped and "serve/static/lab/vendor/leaflet/images/layers.png" in shipped
    assert "serve/static/lab/vendor/leaflet-geoman/LICENSE" in shipped
    page = (lab / "index.html").read_text()
    assert "https://" not in page and "http://" not in page  # everything from this server


def centre_tile(tj: dict):
    w, s, e, n = tj["bounds"]
    return morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, tj["maxzoom"])


def opaque(png: bytes) -> int:
    return int((rgba(png)[..., 3] > 0).sum())


# a tiny model from random weights, for tests that need any trained model
TINY_TRAIN = [
    "backbone.size=tiny",
    "backbone.weights=random",
    "data.patch_size=64",
    "data.num_workers=0",
    "data.chips_per_epoch=16",
    "trainer.max_epochs=1",
    "register.alias=champion",
]


def owned_dataset(scene: dict, owner: str = "alice", name: str = "dense"):
    """The ``scene`` fixture's image and labels as ``owner``'s dataset (as an upload makes it)."""
    from datamodules.ingest import ingest
    from serve.owners import datasets_root

    return ingest(
        name=name,
        images=[scene["image"]],
        labels=scene["labels"],
        class_column="class_name",
        block_size=32,
        progress=False,
        owner=owner,
        root=datasets_root(owner),
    )


def test_prediction_and_dataset_tiles_belong_to_their_owner(home, scene, servers):  # noqa: F811
    from trainer.config import compose
    from trainer.train import train

    ds = owned_dataset(scene)
    train(compose("train", [f"data.dataset={ds.path}", "register.name=alice.dense", *TINY_TRAIN]))
    alice_key, bob_key = create_key(home, "alice"), create_key(home, "bob")
    srv = servers()
    alice, bob = srv.client(alice_key), srv.client(bob_key)
    with open(scene["image"], "rb") as f:
        r = alice.post("/v1/models/dense/predict", files={"image": ("scene.tif", f)})
    assert r.status_code == 200, r.text
    answer = r.json()
    base = f"/v1/predictions/{answer['prediction_id']}/tiles"

    # classes: the legend is the COG's colour table, i.e. the model's class colours
    tj = alice.get(f"{base}/classes/tilejson.json").json()
    model = alice.get("/v1/models/dense").json()
    assert tj["geotune"]["classes"] == [
        {k: c[k] for k in ("id", "name", "color")} for c in model["classes"]
    ]
    t = centre_tile(tj)
    tile = f"{base}/classes/{t.z}/{t.x}/{t.y}.png"
    shown = opaque(alice.get(tile).content)
    assert shown > 1000
    sure = opaque(alice.get(tile, params={"threshold": 1.0}).content)
    assert sure < shown  # pixels below 100 % confidence are hidden
    assert opaque(alice.get(f"{base}/confidence/{t.z}/{t.x}/{t.y}.png").content) == shown
    img = alice.get(f"{base}/image/tilejson.json").json()
    assert img["geotune"]["bands"] == ["blue", "green", "red", "nir08"]
    assert opaque(alice.get(f"{base}/image/{t.z}/{t.x}/{t.y}.png").content) == shown
    assert_error(alice.get(f"{base}/mask/tilejson.json"), 404, "classes, confidence")
    for url in (f"{base}/classes/tilejson.json", tile, f"{base}/image/{t.z}/{t.x}/{t.y}.png"):
        assert_error(bob.get(url), 404, "no prediction")

    # a dataset's image and its label mask (unlabelled pixels transparent)
    mask = alice.get("/v1/datasets/dense/tiles/mask/tilejson.json").json()
    assert [c["name"] for c in mask["geotune"]["classes"]] == ["field", "forest", "water"]
    labelled = opaque(alice.get(f"/v1/datasets/dense/tiles/mask/{t.z}/{t.x}/{t.y}.png").content)
    assert 0 < labelled < shown
    assert (
        opaque(alice.get(f"/v1/datasets/dense/tiles/image/{t.z}/{t.x}/{t.y}.png").content) == shown
    )
    assert_error(bob.get("/v1/datasets/dense/tiles/mask/tilejson.json"), 404, "no dataset")
