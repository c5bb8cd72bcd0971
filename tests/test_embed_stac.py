"""Embeddings of an area and dates: the imagery comes from a real STAC API on loopback (the
test's, over synthetic Sentinel-2 L2A scenes), is composited as for prediction, and embedded,
from the command line and as an HTTP job."""

import json

import geopandas as gpd
import pyarrow.parquet as pq
from stac_synth import aoi
from test_serve import Server, wait_job
from test_stac_cli import DATES, geotune, world  # noqa: F401


def test_embed_an_area_from_the_cli_and_over_http(world, tmp_path, monkeypatch):  # noqa: F811
    area = tmp_path / "aoi.geojson"
    area.write_text(json.dumps(aoi()))
    out = tmp_path / "area.parquet"
    p = geotune(
        [
            "embed",
            "--backbone",
            "clay_v1_5",
            "--size",
            "tiny",
            "--weights",
            "random",
            "--aoi",
            str(area),
            *DATES,
            "--sensor",
            "sentinel-2-l2a",
            "--bands",
            "blue,green,red,nir08",
            "--catalog-url",
            world["api"],
            "--chip-size",
            "64",
            "--out",
            str(out),
        ],
        world["home"],
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "imagery: 4 sentinel-2-l2a scene(s)" in p.stderr
    assert (tmp_path / "area-imagery" / "composite.tif").is_file()
    df = gpd.read_parquet(out)
    prov = json.loads(pq.read_metadata(out).metadata[b"geotune"])
    # a 192² px area on whole pixels: 3 or 4 chips of 64 px a side, the last flush with the edge
    assert 9 <= len(df) <= 16 and prov["bands"] == ["blue", "green", "red", "nir08"]
    assert len(prov["imagery"]["items"]) == 4 and prov["imagery"]["url"] == world["api"]
    assert df.source.iloc[0].startswith("earth_search: ") and prov["dates"][0].startswith(
        "2022-06-15"
    )

    monkeypatch.setenv("GEOTUNE_STAC_URL", world["api"])  # the server's catalogue
    srv = Server(world["home"], "--dev").start()
    try:
        client = srv.client()
        body = {
            "aoi": aoi(),
            "start_date": "2021-01-01",
            "end_date": "2023-12-31",
            "sensor": "sentinel-2-l2a",
            "bands": ["blue", "green", "red", "nir08"],
            "backbone": "clay_v1_5",
            "size": "tiny",
            "weights": "random",
            "chip_size": 64,
        }
        r = client.post("/v1/embeddings", json=body)
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["id"])
        assert job["state"] == "succeeded", client.get(f"/v1/jobs/{job['id']}/logs").text[-3000:]
        meta = client.get(f"/v1/embeddings/{job['result']['embeddings_id']}").json()
        assert meta["chips"] == len(df) and len(meta["provenance"]["imagery"]["items"]) == 4
        huge = body | {
            "aoi": {
                "type": "Polygon",
                "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]],
            }
        }
        r = client.post("/v1/embeddings", json=huge)
        assert r.status_code == 422 and r.json()["error"] == "aoi_too_large"
    finally:
        srv.stop()
