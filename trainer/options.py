"""The options of ``geotune predict`` / ``POST /v1/models/{name}/predict`` and of
``geotune embed`` / ``POST /v1/embeddings``, one row each (:class:`datamodules.options.Option`):
the CLI flags and the HTTP fields (and the Lab's forms, from the OpenAPI schema) are made from
these rows. Rows that are not over HTTP (``http=None``) exist for the CLI alone, and the reverse
(``cli=False``)."""

from __future__ import annotations

from datamodules.options import FILE, MASK_CLOUDS, Option

BATCH_HELP = "chips per forward pass (default: chips of ~512² px, 2 at a time in bf16 on the CPU)"
PRECISION = Option(
    "precision",
    default="auto",
    choices=("auto", "fp32", "bf16"),
    help="forward pass precision; auto: bfloat16 where the CPU computes it natively (about 2x "
    "faster, >99.9% of pixels in the same class as float32), else float32",
)
DEVICE = Option(
    "device",
    default="auto",
    http=None,
    help="where the model runs: auto (the first CUDA GPU torch sees, else the CPU), cpu, cuda, "
    "cuda:N",
)
BANDS = Option(
    "bands", http="upload", example="", help="band names in file order, when the file has none"
)
DATES = Option(
    "dates",
    flag="--date",
    repeat=True,
    http="upload",
    example="",
    help="acquisition date (YYYY-MM-DD) per image date, oldest first, when the files do not "
    "say (HTTP: comma-separated)",
)
IMAGE = Option(
    "image",
    FILE,
    repeat=True,
    http="upload",
    required="http",
    help="the scene: a GeoTIFF/COG, or several for band files or dates (CLI: --image a.tif "
    "b.tif, or repeat --image); or an area and dates (CLI: --aoi, --start, --end; or a product "
    "per date: a Sentinel-2 .SAFE, a Landsat scene's folder, a SNAP .dim)",
)

PREDICT = (
    Option(
        "model", required=True, http=None, help="NAME@ALIAS, NAME with --version, or a models:/ URI"
    ),
    Option("version", http=None, help="model version number"),
    Option("alias", http=None, help="model alias (same as NAME@ALIAS)"),
    IMAGE,
    Option("out", required=True, http=None, help="output folder"),
    BANDS,
    Option(
        "sensor",
        http="upload",
        example="",
        help="sensor id of the scene; default (and recommended): the model's own. Names "
        "bands and the fill value; another sensor is converted exactly into the model's "
        "units where possible, else refused",
    ),
    DATES,
    MASK_CLOUDS,
    Option(
        "outputs",
        default="classes,confidence,polygons",
        cli=False,
        help="comma-separated: classes (always), confidence, polygons",
    ),
    Option(
        "chip_size",
        int,
        http=None,
        ge=16,
        le=4096,
        help="chip edge in px (default: CNNs: chips of at most 512 px fitted to the scene; "
        "ViTs: the training patch)",
    ),
    Option("overlap", int, http=None, help="chip overlap in px (default: the model's)", ge=0),
    Option("batch_size", int, http=None, help=BATCH_HELP, ge=1, le=1024),
    Option(
        "tile_size", int, 1024, "output tile edge in px; bounds memory", http=None, ge=64, le=16384
    ),
    PRECISION,
    DEVICE,
    Option(
        "min_area_m2", float, 0.0, "drop polygons smaller than this (m²)", ge=0, flag="--min-area"
    ),
    Option(
        "simplify", float, 0.0, "polygon simplification tolerance (the scene's CRS units)", ge=0
    ),
    Option(
        "sieve_pixels",
        int,
        0,
        "give class patches smaller than this many pixels (within an output tile) the class "
        "around them, in every output",
        ge=0,
        le=1_000_000,
        flag="--sieve",
    ),
    Option(
        "confidence_threshold",
        float,
        None,
        "pixels below this confidence (0..1) become nodata",
        ge=0,
        le=1,
        example=None,
    ),
    Option("no_polygons", bool, False, "skip the GeoJSON polygons", http=None),
    Option(
        "cluster",
        http=None,
        help="predict on a Dask cluster, in strips of tile rows: local:N (N worker processes "
        "here) or tcp://HOST:8786 (needs geotune[cluster]); the files are the same",
    ),
    Option(
        "threads",
        int,
        http=None,
        ge=1,
        le=1024,
        help="torch threads per forward pass (default: all cores; on a cluster, each "
        "worker's share); runs with the same count give bit-identical files",
    ),
)

# the encoder of ``geotune embed`` (one of backbone, model) and its chips
ENCODER = (
    Option("backbone", help="a bare backbone, e.g. clay_v1_5, prithvi_eo_v2_300 (or model)"),
    Option(
        "weights",
        http=None,
        help="its official weights file, or 'random' (explicit opt-in); unset: the official "
        "file in the weights directory",
    ),
    Option(
        "weights",
        default="pretrained",
        choices=("pretrained", "random"),
        cli=False,
        help="pretrained: the official file in the server's weights directory; random: an "
        "explicit opt-in",
    ),
    Option("size", help="size variant (default the official one; 'tiny' for trials)"),
    Option("model", help="a registered fine-tune's encoder: NAME@ALIAS or NAME (or backbone)"),
    Option("alias", help="model alias, with model NAME (HTTP: default champion)"),
    Option("version", int, ge=1, help="model version, with model NAME, instead of an alias"),
    Option(
        "pool",
        default="auto",
        choices=("auto", "cls", "mean"),
        help="cls: the ViT class token; mean: the mean of patch tokens (CNNs: of the last "
        "feature map); auto: as classification pools per family",
    ),
)
EMBED = (
    IMAGE,
    Option("out", http=None, help="the GeoParquet file to write"),
    BANDS,
    Option("sensor", http="upload", help="sensor id (Clay's statistics depend on it)"),
    DATES,
    MASK_CLOUDS,
    Option(
        "chip_size",
        int,
        ge=16,
        le=2048,
        help="chip edge in px (default: a fine-tune's training patch; Clay 256, Prithvi 224)",
    ),
    Option("stride", int, ge=1, le=2048, help="px between chip origins (default: the chip size)"),
    Option(
        "dtype", default="float32", choices=("float32", "float16"), help="the stored vectors' type"
    ),
    Option("min_valid", float, 0.5, "skip chips with less of their pixels valid", ge=0, le=1),
    Option("batch_size", int, http=None, help=BATCH_HELP),
    PRECISION,
    DEVICE,
)


def predict_options(values: dict, **given):
    """:class:`trainer.predict.PredictOptions` from option values by name (``vars(args)`` of
    ``geotune predict``, or a prediction request's params): every :data:`PREDICT` row named like
    one of its fields sets that field; ``given`` sets the rest (what a flag or field says in
    other words, e.g. ``polygons``)."""
    from dataclasses import fields

    from .predict import PredictOptions

    names = {f.name for f in fields(PredictOptions)}
    taken = {o.name: values[o.name] for o in PREDICT if o.name in names and o.name in values}
    return PredictOptions(**taken, **given)
