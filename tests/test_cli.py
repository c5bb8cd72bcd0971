"""The geotune command as a user runs it: subprocesses, real files, exit codes, messages."""

import json
import subprocess
import sys

from conftest import env_with_home

GEOTUNE = [sys.executable, "-m", "trainer.cli"]


def run(args, home, check=True, timeout=600):
    p = subprocess.run(
        GEOTUNE + args, capture_output=True, text=True, env=env_with_home(home), timeout=timeout
    )
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_help_is_fast_and_lazy(home):
    code = (
        "import sys\nfrom trainer import cli\n"
        "for argv in (['--help'], ['data', 'add', '--help'], ['predict', '--help'], ['models', '--help'], ['backbones', '--help'], ['demo', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('lightning', 'timm', 'torchgeo.models', 'mlflow.pytorch') if m in sys.modules))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env_with_home(home),
        timeout=120,
    )
    assert "HEAVY []" in p.stdout, p.stdout[-500:]
    assert "--class-column" in p.stdout and "NAME@ALIAS" in p.stdout


def test_train_help_shows_groups(home):
    p = run(["train", "--help"], home)
    assert (
        "geotune train: fine-tune" in p.stdout
        and "backbone: " in p.stdout
        and "resnet18" in p.stdout
    )


def test_bad_input_is_a_message_not_a_traceback(home, scene):
    p = run(
        [
            "data",
            "add",
            "--name",
            "x",
            "--image",
            str(scene["image"]),
            "--labels",
            str(scene["labels"]),
        ],
        home,
        check=False,
    )
    assert p.returncode == 2
    assert (
        "error: labels.geojson has no column 'class'" in p.stderr
        and "--class-column class_name" in p.stderr
    )
    assert "Traceback" not in p.stderr
    p = run(
        [
            "predict",
            "--model",
            "nope@champion",
            "--image",
            str(scene["image"]),
            "--out",
            str(home / "o"),
        ],
        home,
        check=False,
    )
    assert p.returncode == 2 and "error:" in p.stderr and "Traceback" not in p.stderr
    p = run(["train", "data.dataset=missing", "backbone.weights=random"], home, check=False)
    assert (
        p.returncode == 2 and "no dataset 'missing'" in p.stderr and "geotune data add" in p.stderr
    )


def test_data_train_models_predict_from_the_command_line(home, scene, tmp_path):
    p = run(
        [
            "data",
            "add",
            "--name",
            "cli",
            "--image",
            str(scene["image"]),
            "--labels",
            str(scene["labels"]),
            "--class-column",
            "class_name",
            "--block-size",
            "32",
        ],
        home,
    )
    assert "dataset 'cli' created" in p.stdout and "water" in p.stdout
    p = run(["data", "show", "cli", "--json"], home)
    assert json.loads(p.stdout)["classes"][0]["name"] == "field"
    assert "cli " in run(["data", "list"], home).stdout

    overrides = [
        "data.dataset=cli",
        "backbone.size=tiny",
        "backbone.weights=random",
        "data.patch_size=64",
        "data.num_workers=0",
        "data.chips_per_epoch=16",
        "trainer.max_epochs=1",
        "register.name=clim",
        "register.alias=champion",
    ]
    p = run(["train", *overrides], home)
    assert "test/mIoU" in p.stdout and "registered: clim version 1" in p.stdout
    # what libraries print that a user can do nothing about is left out
    for noise in (
        "litlogger",
        "LeafSpec",
        "Downloading artifacts",
        "Add type hints",
        "CloudPickle",
        "NumExpr defaulting",
        "Creating initial MLflow database tables",
        "Validating input example",
    ):
        assert noise not in p.stdout + p.stderr, noise
    # Lightning's info lines once (they went through its own handler and Hydra's root)
    assert (p.stdout + p.stderr).count("GPU available") == 1, p.stderr[-2000:]
    # as Lightning prints them, without Hydra's timestamp and logger prefix (the log file has it)
    lines = (p.stdout + p.stderr).splitlines()
    assert "GPU available: False, used: False" in lines
    assert not [line for line in lines if "][INFO] - " in line]
    logs = list((home / "runs").glob("*/*/train.log"))
    assert "][INFO] - GPU available: False" in logs[0].read_text()
    run(["train", *overrides[:-1]], home)  # a second version, no alias change
    p = run(["models", "list"], home)
    rows = [line.split() for line in p.stdout.splitlines()]
    assert rows[0] == "model version aliases task backbone dataset test/mIoU created".split()
    assert [r[:6] for r in rows[1:]] == [
        ["clim", "1", "champion", "segmentation", "resnet18", "cli"],
        ["clim", "2", "-", "segmentation", "resnet18", "cli"],
    ]
    assert all(float(r[6]) >= 0 and r[7].endswith("+00:00") for r in rows[1:])
    assert "\x1b[" not in p.stdout + p.stderr  # not a terminal: no colour codes, MLflow's included
    run(["models", "alias", "clim", "champion", "2"], home)
    (listed,) = json.loads(run(["models", "list", "--json"], home).stdout)
    assert listed["aliases"] == {"champion": 2} and listed["latest_version"] == 2
    assert [v["aliases"] for v in listed["versions"]] == [[], ["champion"]]
    assert "test/mIoU" in listed["versions"][0]["metrics"]
    shown = json.loads(run(["models", "show", "clim", "--json"], home).stdout)
    assert shown["described_version"] == 2 and shown["bands"] == ["blue", "green", "red", "nir08"]
    assert shown["normalization"]["statistics"] == "dataset"
    assert "test/mIoU" in run(["models", "show", "clim"], home).stdout
    for named in ("clim@champion", "models:/clim/1"):  # as predict --model names it
        assert json.loads(run(["models", "show", named, "--json"], home).stdout) == shown
    for args in (["models", "show", "clm"], ["models", "alias", "clm", "champion", "1"]):
        p = run(args, home, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr and "\x1b[" not in p.stderr
        assert "no registered model 'clm'. Did you mean clim? Registered models: clim." in p.stderr
        assert "Registered Model with name" not in p.stderr
    p = run(["models", "alias", "clim", "champion", "7"], home, check=False)
    assert p.returncode == 2 and "has no version 7; its versions: 1, 2" in p.stderr

    out = tmp_path / "pred"
    p = run(
        ["predict", "--model", "clim@champion", "--image", str(scene["image"]), "--out", f"{out}/"],
        home,
    )
    assert f"  classes: {out / 'classes.tif'}\n" in p.stdout  # one slash, as typed or not
    assert {"classes.tif", "confidence.tif", "polygons.geojson", "summary.json"} <= {
        f.name for f in out.iterdir()
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["model"] == "models:/clim@champion"
    # the command leaves without interpreter teardown: its printed report and files are whole
    assert f"{summary['n_pixels']} pixels predicted" in p.stdout and "polygons:" in p.stdout
    assert (
        len(json.loads((out / "polygons.geojson").read_text())["features"]) == summary["n_polygons"]
    )
    p = run(["backbones", "list"], home)
    assert "resnet18" in p.stdout and "absent" in p.stdout


def test_console_log_lines_are_messages_and_a_library_warning_says_its_level():
    import logging

    from trainer.console import ConsoleFormatter

    def line(level, msg):
        return ConsoleFormatter().format(logging.LogRecord("x", level, __file__, 1, msg, (), None))

    assert line(logging.INFO, "Seed set to 0") == "Seed set to 0"
    assert line(logging.WARNING, "store is old") == "WARNING: store is old"
    # not geotune's own "error: ..." line, which a service job's failure is read from
    assert line(logging.ERROR, "run failed") == "ERROR: run failed"


def test_a_reader_that_leaves_early_is_not_a_traceback(home):
    """``geotune data list | head -1`` where head has gone: no traceback, no hang."""
    for args in (["data", "list"], ["data", "add", "--help"]):
        p = subprocess.Popen(GEOTUNE + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env_with_home(home))  # fmt: skip
        p.stdout.close()  # the reader leaves before a line is written
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) in (0, 1) and "Traceback" not in err, err
