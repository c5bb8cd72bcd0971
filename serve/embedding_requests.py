"""What ``POST /v1/embeddings`` and ``/search`` accept, and the checks made before a job is
queued: the encoder can be built (a known backbone and size, its weights file present unless
``random`` was asked for, or one of the caller's models) and the set stays within the limits."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer.options import EMBED, ENCODER

from .errors import ApiError
from .forms import params_model
from .models import resolve

# chips per set: a set's vectors are loaded whole to be searched (200,000 x 1024 float32 is
# 800 MB; the server keeps the two most recently searched); at 256 px chips of 10 m pixels
# that is 13,000 km², more than the largest AOI a server takes by default
MAX_CHIPS = 200_000


class _EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


EmbedParams = params_model(
    "EmbedParams",
    ENCODER + EMBED,
    _EmbedParams,
    "The encoder and the chips (form fields with an upload, JSON fields with an AOI); the rows "
    "of :data:`trainer.options.ENCODER` and ``EMBED``.",
)


class EmbedAoiRequest(EmbedParams):
    aoi: dict[str, Any] = Field(description="GeoJSON geometry or Feature, in CRS84 (lon, lat)")
    start_date: date
    end_date: date
    sensor: str = Field(description="sensor id, e.g. sentinel-2-l2a")
    bands: list[str] | None = Field(
        None, max_length=64, description="a bare backbone's bands to fetch (default: all it takes)"
    )


class EmbedSceneRequest(EmbedParams):
    scene: str = Field(description="one of your scenes (POST /v1/scenes, the Lab's uploads)")
    sensor: str | None = Field(None, description="sensor id (default: the scene's)")
    bands: list[str] | None = Field(None, max_length=64, description="band names in file order")
    dates: list[str] | None = Field(None, max_length=16, description="acquisition date(s)")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    near: list[float] | None = Field(None, min_length=2, max_length=2, description="[lon, lat]")
    like: int | None = Field(None, description="a chip_id of the set")
    polygon: dict[str, Any] | None = Field(None, description="GeoJSON polygon: mean of its chips")
    vector: list[float] | None = Field(None, max_length=8192, description="a query vector")
    k: int = Field(20, ge=1, le=1000)
    method: Literal["auto", "exact", "approximate"] = "auto"


def check_encoder(ctx, owner: str, p: EmbedParams, sensor: str | None) -> dict:
    """What the job builds its encoder from; 422/404 for what it could not build."""
    if bool(p.backbone) == bool(p.model):
        raise ApiError(
            422, "invalid_request", "name the encoder: backbone (e.g. clay_v1_5) or model, not both"
        )
    if p.stride and p.chip_size and p.stride > p.chip_size:
        raise ApiError(
            422, "invalid_request", f"stride ({p.stride}) must not exceed chip_size ({p.chip_size})"
        )
    common = {"pool": p.pool}
    if p.model:
        registered, v = resolve(ctx.client(), owner, p.model, p.alias, p.version)
        return common | {"model": p.model, "registered_name": registered, "version": v}
    from trainer.backbones import BACKBONES, WeightsError, get_entry, resolve_weights, sizes

    if p.backbone not in BACKBONES:
        raise ApiError(
            422,
            "invalid_request",
            f"unknown backbone {p.backbone!r}; choose one of: {', '.join(BACKBONES)}",
        )
    entry = get_entry(p.backbone)
    size = p.size or entry.default_size
    if size not in sizes(p.backbone):
        raise ApiError(
            422,
            "invalid_request",
            f"backbone {p.backbone!r} has sizes {', '.join(sizes(p.backbone))}, not {size!r}",
        )
    if entry.any_bands and not sensor:  # statistics per sensor
        raise ApiError(
            422,
            "invalid_request",
            "Clay normalises each sensor with its own statistics: give the sensor field",
        )
    if p.weights == "pretrained":
        if size != entry.default_size:
            raise ApiError(
                422,
                "invalid_request",
                f'pretrained weights of {p.backbone!r} exist for its official size {entry.default_size!r} only; for {size!r} ask for "weights": "random"',
            )
        try:
            resolve_weights(p.backbone, None)
        except WeightsError:
            raise ApiError(
                422,
                "weights_missing",
                f"backbone {p.backbone!r} needs its pretrained weights file {entry.weights_file!r}, "
                "which is not in this server's weights directory; ask the operator to put it "
                'there, or ask for "weights": "random" (random initialisation, as a trial)',
                expected_file=entry.weights_file,
            ) from None
    return common | {
        "backbone": p.backbone,
        "size": size,
        "weights": None if p.weights == "pretrained" else "random",
    }


def check_chips(width: int, height: int, p: EmbedParams, chip_default: int = 256) -> int:
    stride = p.stride or p.chip_size or chip_default
    n = -(-width // stride) * -(-height // stride)
    if n > MAX_CHIPS:
        raise ApiError(
            422,
            "too_many_chips",
            f"this would embed about {n:,} chips; this server makes at most {MAX_CHIPS:,} per set. "
            "Use a larger stride, or a smaller scene or area.",
            limit_chips=MAX_CHIPS,
        )
    return n
