"""Embeddings over HTTP, as a client sees them: a real `geotune serve` with API keys, an upload
embedded by a job in its own process, the set's metadata and GeoParquet file, search by chip,
place and area, a fine-tune's encoder, label suggestions; another owner gets 404 everywhere;
bad requests get JSON 4xx that say what to do."""

import io

import geopandas as gpd
import numpy as np
import shapely
from synth import make_labels, make_scene
from test_serve import assert_error, create_key, servers, wait_job  # noqa: F401

from datamodules.ingest import ingest
from serve.owners import datasets_root
from trainer.config import compose
from trainer.train import train


def post_scene(client, scene, **fields):
    with open(scene, "rb") as f:
        return client.post(
            "/v1/embeddings", data=fields, files={"image": ("my scene.tif", f, "image/tiff")}
        )


def test_embeddings_over_http(home, servers, tmp_path):  # noqa: F811
    scene, cmap = make_scene(tmp_path, size=192, seed=4, nodata_corner=64)
    labels = make_labels(tmp_path, scene, cmap, keep=0.3)
    ingest(
        name="fields",
        images=[scene],
        labels=labels,
        class_column="class_name",
        block_size=32,
        owner="alice",
        root=datasets_root("alice"),
        progress=False,
    )
    train(
        compose(
            "train",
            [
                f"data.dataset={datasets_root('alice') / 'fields'}",
                "backbone.size=tiny",
                "backbone.weights=random",
                "data.patch_size=64",
                "data.num_workers=0",
                "data.chips_per_epoch=16",
                "trainer.max_epochs=1",
                "register.name=alice.fields",
                "register.alias=champion",
            ],
        )
    )
    alice_key, bob_key = create_key(home, "alice"), create_key(home, "bob")
    srv = servers()
    alice, bob = srv.client(alice_key), srv.client(bob_key)

    # a bare tiny Clay with random weights (asked for by name), on an upload
    r = post_scene(
        alice,
        scene,
        backbone="clay_v1_5",
        size="tiny",
        weights="random",
        sensor="sentinel-2-l2a",
        chip_size="64",
        dates="2024-06-01",
        dtype="float16",
    )
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "embed" and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    emb_id = r.json()["embeddings_id"]
    job = wait_job(alice, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["embeddings_id"] == emb_id and job["result"]["chips"] == 8
    meta = alice.get(f"/v1/embeddings/{emb_id}").json()
    assert meta["state"] == "ready" and meta["chips"] == 8 and meta["skipped"] == 1
    prov = meta["provenance"]
    assert prov["weights"] == {"file": "random", "file_sha256": None} and prov["pool"] == "cls"
    assert prov["dtype"] == "float16" and prov["dates"] == ["2024-06-01"]
    assert meta["inputs"] == ["my scene.tif"] and "/" not in str(prov["scene"]["inputs"])
    assert [s["id"] for s in alice.get("/v1/embeddings").json()["embeddings"]] == [emb_id]
    f = alice.get(meta["links"]["file"])
    assert f.status_code == 200
    df = gpd.read_parquet(io.BytesIO(f.content))
    assert len(df) == 8 and df.crs.equals("OGC:CRS84") and df["source"].iloc[0] == "my scene.tif"

    # search: by chip, by place, by area; the query's chips are left out, scores descend
    ids = sorted(df.chip_id)
    hits = alice.post(meta["links"]["search"], json={"like": ids[0], "k": 3}).json()
    assert hits["type"] == "FeatureCollection" and len(hits["features"]) == 3
    assert ids[0] not in [h["id"] for h in hits["features"]]
    scores = [h["properties"]["score"] for h in hits["features"]]
    assert scores == sorted(scores, reverse=True)
    pt = df.geometry.iloc[2].centroid
    near = alice.post(meta["links"]["search"], json={"near": [pt.x, pt.y], "k": 2}).json()
    assert near["query"]["chip_id"] == int(df.chip_id.iloc[2])
    area = shapely.geometry.mapping(df.geometry.iloc[:2].union_all().buffer(-1e-5))
    by_area = alice.post(meta["links"]["search"], json={"polygon": area, "k": 20}).json()
    assert sorted(by_area["query"]["chips"]) == sorted(df.chip_id.iloc[:2])
    assert len(by_area["features"]) == 6
    assert_error(alice.post(meta["links"]["search"], json={"k": 3}), 422, "exactly one of")
    assert_error(
        alice.post(meta["links"]["search"], json={"near": [0, 0]}), 422, "no embedded chip"
    )
    assert_error(alice.post(meta["links"]["search"], json={"like": 1, "k": 5000}), 422, "k")

    view = alice.get(meta["links"]["projection"]).json()
    assert (
        sorted(c["chip_id"] for c in view["chips"]) == ids and len(view["explained_variance"]) == 2
    )
    assert sum(view["explained_variance"]) <= 1.0 + 1e-6

    # the fine-tune's encoder; suggestions from it
    r = post_scene(alice, scene, model="fields")
    job = wait_job(alice, r.json()["id"])
    assert job["state"] == "succeeded", job
    meta2 = alice.get(f"/v1/embeddings/{job['result']['embeddings_id']}").json()
    assert meta2["provenance"]["pool"] == "mean" and meta2["encoder"]["model"] == "fields"
    assert meta2["provenance"]["dataset_id"] == "fields"
    sug = alice.post("/v1/datasets/fields/suggestions", json={"n": 3}).json()
    assert sug["model"] == {"name": "fields", "version": 1} and len(sug["features"]) == 3
    assert len({f["id"] for f in sug["features"]}) == 3

    # another owner sees nothing of alice's
    for r in (
        bob.get(f"/v1/embeddings/{emb_id}"),
        bob.get(meta["links"]["file"]),
        bob.post(meta["links"]["search"], json={"like": ids[0]}),
        bob.get(meta["links"]["projection"]),
        bob.delete(f"/v1/embeddings/{emb_id}"),
        bob.post("/v1/datasets/fields/suggestions", json={}),
        post_scene(bob, scene, model="fields"),
    ):
        assert_error(r, 404)
    assert bob.get("/v1/embeddings").json() == {"embeddings": []}

    # bad requests: JSON 4xx with what to do; nothing queued
    assert_error(post_scene(alice, scene, backbone="clay_v1_5", weights="random"), 422, "sensor")
    assert_error(
        post_scene(alice, scene, backbone="clay_v1_5", sensor="sentinel-2-l2a"),
        422,
        "clay-v1.5.ckpt",
        "random",
    )
    assert_error(post_scene(alice, scene, backbone="clay_v1_5", model="fields"), 422, "not both")
    assert_error(post_scene(alice, scene, backbone="nope", weights="random"), 422, "clay_v1_5")
    assert_error(
        post_scene(alice, scene, model="fields", chip_size="64", stride="65"), 422, "stride"
    )
    not_tif = tmp_path / "x.tif"
    not_tif.write_text("hello")
    assert_error(post_scene(alice, not_tif, model="fields"), 422, "GeoTIFF")
    jobs = alice.get("/v1/jobs?kind=embed").json()["jobs"]
    assert len(jobs) == 2

    r = alice.delete(f"/v1/embeddings/{emb_id}")
    assert r.status_code == 204
    assert_error(alice.get(f"/v1/embeddings/{emb_id}"), 404)
    assert np.isfinite(scores).all()
