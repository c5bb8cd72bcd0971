"""One declaration per option (datamodules/options.py, trainer/options.py): the CLI flags, the
HTTP fields of a real `geotune serve` (its OpenAPI page, which the Lab's forms read) and their
checks all come from the same rows."""

import subprocess
import sys

import pytest
from test_serve import Server

from datamodules.options import INGEST, Option
from trainer.cli import build_parser
from trainer.options import EMBED, ENCODER, PREDICT, predict_options

ACTIONS = {  # action: (its rows, CLI words, multipart body in the OpenAPI page)
    "ingest": (INGEST, ["data", "add"], ("post", "/v1/datasets")),
    "predict": (PREDICT, ["predict"], ("post", "/v1/models/{name}/predict")),
    "embed": (ENCODER + EMBED, ["embed"], ("post", "/v1/embeddings")),
}


def _parser(words):
    p = build_parser()
    for w in words:
        p = next(a for a in p._actions if isinstance(a.choices, dict)).choices[w]
    return p


def _form(spec, method, path) -> dict:
    body = spec["paths"][path][method]["requestBody"]["content"]["multipart/form-data"]["schema"]
    if "$ref" in body:
        body = spec["components"]["schemas"][body["$ref"].split("/")[-1]]
    return body["properties"]


def _default(prop):
    return prop.get("default")


def _range(prop):
    alts = [a for a in prop.get("anyOf", [prop]) if a.get("type") != "null"]
    return {k: alts[0].get(k) for k in ("minimum", "maximum", "exclusiveMinimum")}


def _data_add(folder, *args):
    """``geotune data add --name x --labels l.geojson *args`` in ``folder``."""
    argv = ["data", "add", "--name", "x", "--labels", "l.geojson", *args]
    cmd = [sys.executable, "-m", "trainer.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=folder)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("home"), "--dev").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def openapi(server):
    return server.client().get("/openapi.json").json()


@pytest.mark.parametrize("action", ACTIONS)
def test_flags_and_fields_come_from_the_rows(action, openapi):
    rows, words, (method, path) = ACTIONS[action]
    flags = {a.dest: a for a in _parser(words)._actions}
    form = _form(openapi, method, path)
    for o in rows:
        if o.cli:
            a = flags[o.name]
            assert o.cli_flag in a.option_strings
            assert a.default == (o.default if o.required is not True else None)
            assert list(a.choices or []) == list(o.choices)
            if o.help:
                assert a.help.replace("%%", "%") == o.help
        if o.http:
            prop = form[o.name]
            if o.name != "confidence_threshold":  # a form field carries no null
                assert prop.get("description") == (o.help or None), o.name
            if o.http == "params" and o.type is not bool:
                assert _default(prop) == o.default, o.name
                want = {"minimum": o.ge, "maximum": o.le, "exclusiveMinimum": o.gt}
                assert _range(prop) == want, o.name
    http = {o.name for o in rows if o.http}
    assert set(form) == http  # no field the rows do not declare


def test_a_range_is_checked_the_same_way_by_the_cli_and_the_service(tmp_path, openapi):
    p = _data_add(tmp_path, "--block-size", "4")
    assert p.returncode == 2 and "--block-size: must be at least 8 (got 4)" in p.stderr
    block = _form(openapi, "post", "/v1/datasets")["block_size"]
    assert block["minimum"] == 8 and block["maximum"] == 8192


@pytest.mark.parametrize(
    "flag, field, value, says",
    [
        ("--split-fractions", "split_fractions", "0.7,0.3", "takes three non-negative numbers"),
        ("--ignore-values", "ignore_values", "zero", "takes integers separated by commas"),
    ],
)
def test_typed_text_is_read_the_same_way(tmp_path, server, flag, field, value, says):
    p = _data_add(tmp_path, "--image", "a.tif", flag, value)
    assert p.returncode == 2 and f"{flag} {says}" in p.stderr
    files = {"image": ("a.tif", b"II*\x00"), "labels": ("l.geojson", b"{}")}
    r = server.client().post("/v1/datasets", data={"name": "x", field: value}, files=files)
    assert r.status_code == 422 and f"the {field} field {says}" in r.json()["detail"], r.text


def test_predict_options_reach_the_predictor_by_name():
    args = build_parser().parse_args(
        [
            "predict",
            "--model",
            "m@c",
            "--out",
            "o",
            "--min-area",
            "5",
            "--sieve",
            "3",
            "--precision",
            "fp32",
            "--tile-size",
            "512",
            "--no-polygons",
        ]
    )
    opts = predict_options(vars(args), polygons=not args.no_polygons)
    assert (opts.min_area_m2, opts.sieve_pixels, opts.precision, opts.tile_size) == (
        5.0,
        3,
        "fp32",
        512,
    )
    assert opts.polygons is False and opts.confidence_threshold is None
    from serve.predictions import options_from
    from serve.schemas import PredictParams

    params = PredictParams.model_validate({"min_area_m2": "5", "sieve_pixels": "3"})
    served = options_from(params.model_dump() | {"outputs": ["classes", "polygons"]})
    assert (served.min_area_m2, served.sieve_pixels, served.confidence) == (5.0, 3, False)


def test_help_shows_only_defaults_there_are():
    out = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "embed", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "(default: None)" not in out and "(default: float32)" in out


def test_the_cli_module_does_not_import_the_service():
    code = "import sys, trainer.cli as c; c.build_parser(); print(sorted(m for m in sys.modules if m == 'serve' or m.startswith('serve.')))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


def test_range_message():
    o = Option("k", int, 1, ge=1, le=5)
    assert o.check(3) == 3
    with pytest.raises(ValueError, match="at most 5"):
        o.check(6)
