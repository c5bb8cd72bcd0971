"""The remote path, as in production: pystac-client against a real STAC API server
(stac-fastapi-geoparquet) and COGs read over HTTP with range requests from a real asset server,
both on loopback ports; retries, timeouts, signed and authenticated assets."""

import shutil

import httpx
import numpy as np
import pytest
import rasterio
import rasterio.cache
from omegaconf import OmegaConf
from stac_synth import AssetServer, aoi, serve, stac_api_app, write_items

from datamodules.cog_read import AssetReadError, ReadOptions
from datamodules.composite import composite_for_aoi
from datamodules.stac import PRESETS_DIR
from datamodules.stac_access import AccessError

BANDS = ["blue", "green", "red", "nir08"]
WIDE = "/S2A_33SVB_20230620_0_L2A/B02.tif"  # 512 px wide: the AOI covers its left half only
PC_KEYS = {"blue": "B02", "green": "B03", "red": "B04", "nir08": "B8A", "scl": "SCL"}


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote")
    (tmp / "assets").mkdir()
    assets = AssetServer(tmp / "assets")
    with serve(assets.app()) as base:
        items = write_items(tmp, base)
        with serve(stac_api_app(tmp, items)) as api:
            yield {"dir": tmp, "assets": assets, "base": base, "api": api, "items": items}


def run(remote, out, **kw):
    rasterio.cache.invalidate_all()  # GDAL keeps HTTP answers across reads: ask the server again
    args = dict(bands=BANDS, catalog="earth_search", catalog_url=remote["api"], progress=False)
    return composite_for_aoi(
        aoi(), "2021-01-01", "2023-12-31", "sentinel-2-l2a", out, **(args | kw)
    )


def tiles(path):
    """(column, row) → (offset, size) of every tile of a COG."""
    out = {}
    with rasterio.open(path) as src:
        nx, ny = -(-src.width // src.block_shapes[0][1]), -(-src.height // src.block_shapes[0][0])
        for x in range(nx):
            for y in range(ny):
                off = int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1))
                size = int(src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1))
                out[(x, y)] = (off, size)
    return out


def fetched(ranges, off, size) -> int:
    """Bytes of [off, off + size) covered by the union of the requested ranges."""
    hit = np.zeros(size, dtype=bool)
    for a, b in ranges:
        lo, hi = max(a, off), min(b + 1, off + size)
        if hi > lo:
            hit[lo - off : hi - off] = True
    return int(hit.sum())


def test_api_search_and_ranged_reads_of_only_the_aoi(remote, tmp_path):
    srv = remote["assets"]
    srv.log.clear()
    r = run(remote, tmp_path / "out")
    assert r.provenance["url"] == remote["api"] and r.provenance["n_items_found"] == 4
    for rec in r.provenance["items"]:  # each scene traced to its item JSON in the API
        assert rec["href"].startswith(remote["api"])
        assert httpx.get(rec["href"], timeout=30).json()["id"] == rec["id"]
    with rasterio.open(r.count) as src:
        count = src.read(1)
    assert set(np.unique(count)) == {0, 2, 3}
    # the same composite as from the static catalog: files are read by range over HTTP
    ranges = srv.ranges(WIDE)
    assert ranges and all(rng for m, p, rng, _s in srv.log if m == "GET" and p == WIDE)
    path = remote["dir"] / "assets" / WIDE.lstrip("/")
    t = tiles(path)
    assert len(t) == 8  # 4 columns x 2 rows of 128 px
    needed = [k for k in t if k[0] <= 1]  # the AOI lies in columns 0..255
    far = [k for k in t if k[0] >= 2]
    for k in needed:
        assert fetched(ranges, *t[k]) == t[k][1], f"tile {k} not read"
    for k in far:  # never read whole; at most GDAL's read-ahead spills into a neighbour
        assert fetched(ranges, *t[k]) < t[k][1], f"tile {k} outside the AOI was read"
    far_bytes = sum(t[k][1] for k in far)
    assert sum(fetched(ranges, *t[k]) for k in far) < 0.25 * far_bytes


def test_transient_errors_are_retried(remote, tmp_path):
    srv = remote["assets"]
    path = "/S2A_33SVB_20210610_0_L2A/B03.tif"
    srv.log.clear()
    srv.fail[path] = 2  # two 503s, then the file
    r = run(remote, tmp_path / "out", read=ReadOptions(retries=3, backoff=0.05))
    statuses = [s for _m, p, _r, s in srv.log if p == path]
    assert statuses[:2] == [503, 503] and 200 in statuses[2:]
    assert r.images[0].is_file()


def test_a_stalled_asset_times_out_and_nothing_is_left(remote, tmp_path):
    srv = remote["assets"]
    path = "/S2B_33SVB_20220615_0_L2A/B04.tif"
    srv.stall[path] = 4.0
    out = tmp_path / "out"
    try:
        with pytest.raises(AssetReadError, match=f"{path}.* after 2 attempts.*timeout 1 s"):
            run(remote, out, read=ReadOptions(timeout=1, retries=2, backoff=0.05))
    finally:
        del srv.stall[path]
    assert not out.exists()  # no composite, no temporary folder, no folder it made


def _catalog_yaml(tmp_path, preset: str, url: str, **access) -> str:
    cfg = OmegaConf.load(PRESETS_DIR / f"{preset}.yaml")
    cfg.url = url
    for k, v in access.items():
        cfg.access[k] = v
    path = tmp_path / f"{preset}-local.yaml"
    OmegaConf.save(cfg, path)
    return str(path)


def _prefixed(remote, tmp_path, prefix: str, keys: dict | None = None):
    """The same items with assets under /<prefix>/ (and renamed asset keys) in a new API."""
    items = []
    for it in remote["items"]:
        it = dict(it, assets={
            (keys or {}).get(k, k): dict(a, href=a["href"].replace(remote["base"], f"{remote['base']}/{prefix}"))
            for k, a in it["assets"].items()
        })  # fmt: skip
        items.append(it)
    folder = tmp_path / prefix
    folder.mkdir()
    return stac_api_app(folder, items)


def test_planetary_computer_preset_signs_hrefs_with_a_token(remote, tmp_path):
    srv = remote["assets"]
    with serve(_prefixed(remote, tmp_path, "pc", PC_KEYS)) as api:
        cfg = _catalog_yaml(
            tmp_path, "planetary_computer", api,
            token_url=f"{remote['base']}/api/sas/v1/token", hosts=["127.0.0.1"],
        )  # fmt: skip
        srv.log.clear()
        srv.token_requests.clear()
        r = run(remote, tmp_path / "out", catalog=cfg, catalog_url=None)
    assert srv.token_requests == ["sentinel-2-l2a"]  # one token, cached for every read
    pc = [(p, s) for _m, p, _r, s in srv.log if p.startswith("/pc/")]
    assert pc and all(s == 200 for _p, s in pc)  # every read carried the token
    assert r.provenance["catalog"] == "planetary_computer"
    with rasterio.open(r.count) as src:
        assert src.read(1).max() == 3


def test_earthdata_login_is_sent_and_its_absence_is_a_message(remote, tmp_path, monkeypatch):
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with serve(_prefixed(remote, tmp_path, "earthdata")) as api:
        cfg = OmegaConf.load(PRESETS_DIR / "earth_search.yaml")
        cfg.url = api
        cfg.access = {"_target_": "datamodules.stac_access.EarthdataLogin", "hosts": ["127.0.0.1"]}
        path = tmp_path / "edl.yaml"
        OmegaConf.save(cfg, path)
        with pytest.raises(AccessError, match="EARTHDATA_TOKEN"):
            run(remote, tmp_path / "no", catalog=str(path), catalog_url=None)
        monkeypatch.setenv("EARTHDATA_TOKEN", "wrong")
        with pytest.raises(AssetReadError, match="401"):
            run(remote, tmp_path / "bad", catalog=str(path), catalog_url=None,
                read=ReadOptions(retries=1))  # fmt: skip
        monkeypatch.setenv("EARTHDATA_TOKEN", remote["assets"].bearer)
        r = run(remote, tmp_path / "out", catalog=str(path), catalog_url=None)
    assert r.images[0].is_file()
    shutil.rmtree(tmp_path / "out")


def test_collection_1_is_read_first_and_its_gaps_from_the_older_collection(remote, tmp_path):
    """Earth Search indexes Sentinel-2 twice: Collection 1 (reprocessed, baseline >= 05.00,
    the -1000 offset in its values) and the older sentinel-2-l2a. The preset searches both:
    an acquisition in both is read once, from Collection 1; its gaps (here 2022) and a broken
    Collection 1 item (two assets of five, no SCL) come from the older collection. The
    composite is the one the older collection alone gives."""
    from dataclasses import replace

    from stac_synth import item_dict, scenes, write_scene

    root = remote["dir"] / "assets"
    old = {s.id: s for s in scenes()}
    twins = {  # Collection 1's id → the older collection's item of the same acquisition
        "S2A_T33SVB_20210610T100000_L2A": "S2A_33SVB_20210610_0_L2A",
        "S2A_T33SVB_20230620T100000_L2A": "S2A_33SVB_20230620_0_L2A",
    }
    c1 = []
    for new_id, old_id in twins.items():
        s = replace(old[old_id], id=new_id, baseline="05.00", offset_in_values=True,
                    flag_applied=None, when=old[old_id].when.replace(microsecond=24000))  # fmt: skip
        paths = write_scene(root, s)
        item = item_dict(s, {k: f"{remote['base']}/{p.relative_to(root).as_posix()}"
                             for k, p in paths.items()})  # fmt: skip
        item["collection"] = "sentinel-2-c1-l2a"
        if new_id.startswith("S2A_T33SVB_2023"):  # as Element84/earth-search#36 reports
            item["assets"] = {k: v for k, v in item["assets"].items() if k in ("blue", "nir08")}
        c1.append(item)
    want = run(remote, tmp_path / "older")
    with serve(stac_api_app(tmp_path, remote["items"] + c1)) as api:
        rasterio.cache.invalidate_all()
        r = composite_for_aoi(aoi(), "2021-01-01", "2023-12-31", "sentinel-2-l2a",
                              tmp_path / "both", bands=BANDS, catalog="earth_search",
                              catalog_url=api, progress=False)  # fmt: skip
    p = r.provenance
    assert p["collections"] == ["sentinel-2-c1-l2a", "sentinel-2-l2a"]
    assert p["n_items_found"] == 6
    used = {i["id"]: i["collection"] for i in p["items"]}
    assert used == {
        "S2A_T33SVB_20210610T100000_L2A": "sentinel-2-c1-l2a",
        "S2B_33SVB_20220615_0_L2A": "sentinel-2-l2a",  # Collection 1's gap
        "S2B_33SWB_20220615_0_L2A": "sentinel-2-l2a",
        "S2A_33SVB_20230620_0_L2A": "sentinel-2-l2a",  # its twin is broken
    }
    why = {i["id"]: i["reason"] for i in p["unused_items"]}
    assert why == {
        "S2A_33SVB_20210610_0_L2A": "the same acquisition as S2A_T33SVB_20210610T100000_L2A of "
        "sentinel-2-c1-l2a, read from there (the catalog config lists sentinel-2-c1-l2a first)",
        "S2A_T33SVB_20230620T100000_L2A": "the same acquisition as S2A_33SVB_20230620_0_L2A of "
        "sentinel-2-l2a, read from there (this item lacks assets that one has)",
    }
    assert "subtracted the -1000 offset (baseline >= 04.00)" in next(
        i["harmonized"] for i in p["items"] if i["id"].startswith("S2A_T33SVB_2021")
    )
    with rasterio.open(r.images[0]) as got, rasterio.open(want.images[0]) as src:
        assert got.profile == src.profile and np.array_equal(got.read(), src.read())
    with rasterio.open(r.count) as got, rasterio.open(want.count) as src:
        assert np.array_equal(got.read(), src.read())  # no acquisition counted twice
