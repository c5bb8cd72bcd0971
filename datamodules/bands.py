"""Band mapping: which dataset bands feed a model, by band name (never by index)."""

from __future__ import annotations

import warnings

from .errors import UserError


class BandMappingError(UserError):
    pass


def map_bands(model_bands: list[str], data_bands: list[str], any_bands: bool = False) -> list[int]:
    """Indices of the dataset's bands that feed the model, in the model's order."""
    missing = [b for b in model_bands if b not in data_bands]
    if missing:
        raise BandMappingError(
            f"the model needs bands {', '.join(model_bands)}; the dataset lacks {', '.join(missing)} "
            f"(it has {', '.join(data_bands)}). Use a backbone that fits these bands, or random "
            "weights (backbone.weights=random) to train on the dataset's own bands."
        )
    extra = [b for b in data_bands if b not in model_bands]
    if extra:
        warnings.warn(
            f"dataset bands {', '.join(extra)} are not inputs of the model and are not used",
            stacklevel=2,
        )
    return [data_bands.index(b) for b in model_bands]
