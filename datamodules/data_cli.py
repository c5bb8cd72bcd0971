"""``geotune data add|list|show|delete``: the command's logic (trainer/cli.py only parses).

Imports stay light (no torch, lightning or torchgeo): ingestion is imported when needed.
"""

from __future__ import annotations

import json
import sys
import warnings

from .manifest import Dataset, delete_dataset, list_datasets, load_dataset
from .options import csv_list as _csv
from .options import integers, split_fractions


def add(args, images: list[str], imagery: dict | None = None) -> Dataset:
    """Ingest ``images`` with the labels and options of ``args``; ``imagery``: the provenance of
    images fetched by area and dates (:func:`datamodules.stac_cli.imagery_for_labels`)."""
    from .ingest import ingest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ingest(
            name=args.name,
            images=images,
            labels=args.labels,
            class_column=args.class_column,
            labels_layer=args.labels_layer,
            sensor=args.sensor,
            bands=_csv(args.bands),
            dates=args.dates,
            classes_file=args.classes,
            mask_ignore_values=integers(args.ignore_values, "--ignore-values") or [],
            block_size=args.block_size,
            split_fractions=split_fractions(args.split_fractions),
            seed=args.seed,
            min_class_pixels=args.min_class_pixels,
            task=args.task,
            chip_size=args.chip_size,
            multi_label=args.multi_label,
            background=args.background,
            split_column=args.split_column,
            labels_after=args.labels_after,
            change_classes=args.change_classes,
            imagery=imagery,
            mask_clouds=args.mask_clouds,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    return ds


def run(args, images: list[str] | None = None, imagery: dict | None = None) -> int:
    """``geotune data ACTION``; ``add`` ingests ``images`` (see :func:`add`)."""
    if args.data_cmd == "add":
        ds = add(args, images, imagery)
        print(f"dataset {ds.id!r} created at {ds.path}")
        print(describe(ds))
        print(
            f"\nnext: geotune train data.dataset={ds.id} backbone=resnet18 backbone.weights=random "
            f"register.name={ds.id} register.alias=champion"
        )
    elif args.data_cmd == "list":
        rows = list_datasets()
        if not rows:
            print(
                "no datasets yet: geotune data add --name NAME --image scene.tif --labels labels.geojson"
            )
        for ds in rows:
            m = ds.manifest
            print(
                f"{ds.id:24s} {m.task:14s} {m['num_classes']} classes  "
                f"{len(m['bands'])} bands  {m['shape'][1]}x{m['shape'][0]} px  {m['crs']}  {m['created']}"
            )
    elif args.data_cmd == "show":
        ds = load_dataset(args.id)
        print(json.dumps(ds.manifest.to_dict(), indent=2) if args.json else describe(ds))
    elif args.data_cmd == "delete":
        delete_dataset(args.id)
        print(f"deleted dataset {args.id!r}")
    return 0


def _unit(m) -> str:
    """The unit of the grid's pixel size: its CRS's (degrees for a geographic one)."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(m["crs_wkt"]) if m.get("crs_wkt") else CRS.from_user_input(m["crs"])
    if crs.is_geographic:
        return "°"
    factor = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return "m" if abs(factor - 1.0) < 1e-9 else crs.linear_units


def describe(ds: Dataset) -> str:
    """Classes, counts, bands, dates, CRS and splits of a dataset, as text."""
    m = ds.manifest
    task = m.task
    lines = [f"id: {m['id']}  name: {m['name']}  owner: {m['owner']}  task: {task}"]
    dates = ", ".join(d or "unknown" for d in m["dates"])
    lines.append(f"sensor: {m['sensor'] or '-'}  bands: {', '.join(m['bands'])}  dates: {dates}")
    lines.append(
        f"grid: {m['shape'][1]}x{m['shape'][0]} px at {m['resolution'][0]:g} {_unit(m)}, {m['crs']}"
    )
    images = m.get("images") or []
    for image in images:  # ESA's offset taken off; the clouds masked, or not
        when = f"{image['date'] or image['path']}: " if len(images) > 1 else ""
        lines += [when + image[k] for k in ("values", "clouds") if image.get(k)]
    src = m.get("source", {})
    labels = f"labels: {src.get('labels', '?')} ({m.get('label_kind', '?')})"
    if src.get("labels_after"):
        labels = (
            f"labels: {src['labels']} ({src['n_labels_before']} polygons) then "
            f"{src['labels_after']} ({src['n_labels_after']}): {m['label_kind']}, change as "
            f"{src['change_classes']} classes where both dates are labelled"
        )
    if src.get("legend"):
        labels += f", {src['legend']}"
    if src.get("n_label_parts"):
        labels += (
            f", {src['n_labels']} features in {src['n_label_parts']} polygons (each part of a "
            "multi-part feature is a label of its own)"
        )
    if src.get("n_invalid_repaired"):
        labels += f", {src['n_invalid_repaired']} invalid geometries repaired"
    if task == "classification":
        labels += f"; chips of {m['chip_size']} px" + (", multi-label" if m.multi_label else "")
    if m.get("background"):
        labels += f"; background class {m['background']!r} = every valid unlabelled pixel"
    lines.append(labels)
    sp = m["splits"]
    how = (
        f"from column {sp['split_column']!r}"
        if sp.get("method") == "column"
        else f"blocks of {sp['block_size']} px, seed {sp['seed']}"
    )
    unit = "chips" if task == "classification" else "units"
    lines.append(f"splits: {how}; {unit} " + ", ".join(f"{k} {v}" for k, v in sp["units"].items()))
    chips = task == "classification"
    counts = sp["chips"] if chips else sp["pixels"]
    unit_word = "chips" if chips else "px"
    header = f"{'id':>3} {'class':20s} {'chips' if chips else 'units':>6}"
    if not chips:
        header += f" {'pixels':>9}"
    reach = sp.get("reach", {})
    lines.append(
        header
        + "  "
        + "  ".join(f"{s + ' ' + unit_word:>11s}" for s in counts)
        + ("  reaches" if reach else "")
    )
    for c in m["classes"]:
        row = f"{c['id']:>3} {c['name'][:20]:20s} {c['units']:>6d}"
        if not chips:
            row += f" {c['pixels']:>9d}"
        per = "  ".join(f"{counts[s][c['slug']]:>11d}" for s in counts)
        got = reach.get(c["slug"], {}).get("splits")
        lines.append(f"{row}  {per}" + (f"  {'/'.join(got) or '-'}" if got is not None else ""))
    notes = [r["note"] for r in reach.values() if r.get("note")] + sp.get("notes", [])
    if sp.get("guard_pixels"):
        notes.append(
            f"where a polygon is cut between splits, {sp['guard_pixels']} px on each side of the "
            "cut are ignored (a guard band no split sees)"
        )
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
