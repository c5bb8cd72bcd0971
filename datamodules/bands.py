"""Band mapping: which dataset bands feed a model, by band name (never by index)."""

from __future__ import annotations

import warnings

from .errors import UserError


class BandMappingError(UserError):
    pass


TRAIN_HINT = (
    "Use a backbone that fits these bands, or random weights (backbone.weights=random) to train "
    "on the dataset's own bands."
)
PREDICT_HINT = (
    "Give a scene with those bands too: a file whose band descriptions or --bands name them, "
    "or one --image per band file."
)


def map_bands(
    model_bands: list[str],
    data_bands: list[str],
    any_bands: bool = False,
    *,
    what: str = "dataset",
    hint: str = TRAIN_HINT,
) -> list[int]:
    """Indices of the ``what``'s (dataset's, scene's) bands that feed the model, in the model's
    order; ``hint`` says what to do when some are missing."""
    missing = [b for b in model_bands if b not in data_bands]
    if missing:
        raise BandMappingError(
            f"the model needs bands {', '.join(model_bands)}; the {what} lacks "
            f"{', '.join(missing)} (it has {', '.join(data_bands)}). {hint}"
        )
    extra = [b for b in data_bands if b not in model_bands]
    if extra:
        warnings.warn(
            f"{what} bands {', '.join(extra)} are not inputs of the model and are not used",
            stacklevel=2,
        )
    return [data_bands.index(b) for b in model_bands]
