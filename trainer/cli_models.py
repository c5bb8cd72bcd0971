"""``geotune models`` (registered models: list, show, alias) and ``geotune backbones`` (their
weights files; encoder weights from an official checkpoint)."""

from __future__ import annotations


def add_models_parsers(sub) -> None:
    m = sub.add_parser("models", help="registered models: list, show, alias")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    s = msub.add_parser(
        "list", help="every version of every registered model: aliases, task, backbone, ..."
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = msub.add_parser("show", help="a model: what it predicts, its versions and test metrics")
    s.add_argument("name", help="NAME (or NAME@ALIAS, models:/NAME/VERSION: the same model)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = msub.add_parser(
        "alias", help="point an alias at a version: geotune models alias NAME champion 3"
    )
    s.add_argument("name")
    s.add_argument("alias")
    s.add_argument("version", type=int)

    b = sub.add_parser("backbones", help="list backbones and weights; extract encoder weights")
    bsub = b.add_subparsers(dest="backbones_cmd", required=True, metavar="ACTION")
    bsub.add_parser(
        "list", help="every backbone, its sizes, and whether its official weights file is present"
    )
    s = bsub.add_parser("extract", help="write the encoder-only weights of an official checkpoint")
    s.add_argument("name", help="backbone name, e.g. clay_v1_5")
    s.add_argument("checkpoint", help="the official file")
    s.add_argument("out", help="output .pt file")


VERSION_COLUMNS = (
    "model",
    "version",
    "aliases",
    "task",
    "backbone",
    "dataset",
    "test/mIoU",
    "created",
)


def _version_cells(name: str, row: dict) -> list[str]:
    miou = row["metrics"].get("test/mIoU")
    return [
        name,
        str(row["version"]),
        ",".join(row["aliases"]) or "-",
        row["task"] or "-",
        row["backbone"] or "-",
        row["dataset_id"] or "-",
        "-" if miou is None else f"{miou:.4f}",
        row["created"] or "-",
    ]


def _table(header, rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def _model_or_explain(client, name: str):
    from .models import ModelNotFoundError, find, names, not_found_message

    rm = find(client, name)
    if rm is None:
        hint = "Train one with: geotune train ... register.name=NAME"
        raise ModelNotFoundError(not_found_message(name, names(client), hint))
    return rm


def cmd_models(args) -> int:
    import json

    from . import models
    from .registry import setup_mlflow

    client = setup_mlflow()
    if args.models_cmd == "list":
        found = models.list_models(client)
        if args.json:
            print(json.dumps(found, indent=2))
        elif not found:
            print("no registered models yet: geotune train ... register.name=NAME")
        else:
            rows = [_version_cells(m["registered_name"], r) for m in found for r in m["versions"]]
            print(_table(VERSION_COLUMNS, rows))
    elif args.models_cmd == "show":
        # NAME, or how predict names a model (NAME@ALIAS, models:/NAME/3): all its versions
        name = args.name.removeprefix("models:/").split("@")[0].split("/")[0]
        info = models.detail(client, _model_or_explain(client, name))
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        norm = info["normalization"]
        print(
            f"{info['registered_name']}: {info['task']} with {info['backbone']} "
            f"(described: version {info['described_version']})"
        )
        print(
            f"  sensor {info['sensor']}, bands {','.join(info['bands'])}, "
            f"pixels {' x '.join(f'{v:g}' for v in info['resolution'] or []) or '?'} m"
        )
        print(f"  classes {', '.join(c['name'] for c in info['classes'])}")
        print(f"  normalisation: {norm.get('source')} ({norm.get('conversion')})\n")
        rows = [_version_cells(info["registered_name"], r) for r in info["versions"]]
        print(_table(VERSION_COLUMNS, rows))
        for r in info["versions"]:
            test = {
                k: v for k, v in r["metrics"].items() if k.startswith("test/") and k.count("/") == 1
            }
            if test:
                print(f"  v{r['version']} " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    elif args.models_cmd == "alias":
        models.set_alias(client, _model_or_explain(client, args.name), args.alias, args.version)
        print(f"{args.name}@{args.alias} → version {args.version}")
    return 0


def cmd_backbones(args) -> int:
    from datamodules.paths import weights_dir

    from .backbones import weights_status

    if args.backbones_cmd == "list":
        print(f"weights directory: {weights_dir()}  (GEOTUNE_WEIGHTS_DIR)")
        for r in weights_status():
            mark = "present" if r["present"] else "absent"
            print(
                f"{r['name']:22s} sizes {','.join(r['sizes']):18s} {r['weights_file']:44s} {mark:8s} {r['description']}"
            )
    elif args.backbones_cmd == "extract":
        from .backbones.checkpoints import extract

        out = extract(args.name, args.checkpoint, args.out)
        print(f"encoder weights of {args.name} written to {out}")
    return 0
