"""Hydra plumbing: resolvers for geotune's paths and config composition from the shipped ``conf``.

``conf/`` is a package inside the distribution, so Hydra finds it as ``pkg://conf`` whether
geotune was installed from a wheel or an editable checkout.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "conf"
CONFIG_PATH = "pkg://conf"
_HYDRA_LOCK = threading.RLock()


def register_resolvers() -> None:
    from datamodules import paths

    OmegaConf.register_new_resolver("geotune_home", lambda: str(paths.home()), replace=True)
    OmegaConf.register_new_resolver("geotune_tracking_uri", paths.tracking_uri, replace=True)
    OmegaConf.register_new_resolver(
        "geotune_artifacts", lambda: paths.artifacts_dir().as_uri(), replace=True
    )


@contextmanager
def _hydra():
    """Hydra initialised on the shipped ``conf`` package; a Hydra app already running (the
    benchmark inside ``geotune benchmark``) gets its own state back afterwards."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    register_resolvers()
    with _HYDRA_LOCK:  # Hydra's state is global: one composition at a time (server threads)
        backup = get_gh_backup()
        GlobalHydra.instance().clear()
        try:
            with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
                yield GlobalHydra.instance()
        finally:
            restore_gh_from_backup(backup)


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config outside a Hydra app (tests, the demo, the benchmark grid), or a group's
    option alone: ``compose("backbone/resnet18").backbone``."""
    from hydra import compose as hydra_compose

    with _hydra():
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def group_options(group: str) -> list[str]:
    """The options of a config group (``backbone``, ``task``, ...), as Hydra finds them."""
    with _hydra() as gh:
        return sorted(gh.config_loader().get_group_options(group))


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config flattened to ``a.b.c: value`` strings (for MLflow params)."""
    out: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}." if prefix or k else k)
        else:
            out[prefix.rstrip(".")] = str(node)[:500]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def config_error(e: BaseException | None, command: str = "train") -> str | None:
    """The message for an error in the user's config or overrides, found anywhere in the chain
    of ``e`` (Hydra composition, OmegaConf keys and values, Lightning's misconfiguration,
    constructor arguments); None when ``e`` is not one."""
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    seen = 0
    while e is not None and seen < 10:
        key = getattr(e, "full_key", None)
        if isinstance(e, MissingMandatoryValue):
            extra = " (geotune data list shows your datasets)" if key == "data.dataset" else ""
            return f"{key} is not set: give it on the command line, e.g. geotune {command} {key}=...{extra}"
        if isinstance(e, ConfigKeyError) and key:
            return (
                f"unknown config key {key!r}: check its spelling (geotune {command} ... --cfg job "
                f"prints the whole config), or add a key of your own with +{key}=..."
            )
        if isinstance(e, OmegaConfBaseException):
            return _one_line(str(e))
        if isinstance(
            e, (ConfigCompositionException, MissingConfigException, OverrideParseException)
        ):
            return _one_line(str(e))
        if isinstance(e, InstantiationException) and isinstance(e.__cause__, TypeError):
            return _one_line(str(e)) + f" (geotune {command} ... --cfg job prints the config)"
        if any(c.__name__ == "MisconfigurationException" for c in type(e).__mro__):
            return _one_line(str(e))
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _one_line(text: str) -> str:
    """A multi-line Hydra/OmegaConf message as one line (listings joined with commas), without
    the config search path and OmegaConf's key details."""
    text = text.split("Config search path:")[0]
    skip = ("full_key:", "object_type=", "reference_type=")
    out: list[str] = []
    listing = False
    for ln in (ln.strip() for ln in text.splitlines()):
        if not ln or ln.startswith(skip):
            continue
        if listing and not ln.endswith(":"):
            out[-1] += (" " if out[-1].endswith(":") else ", ") + ln
        else:
            out.append(ln)
            listing = ln.endswith(":")
    return ". ".join(s.rstrip(".") for s in out)
