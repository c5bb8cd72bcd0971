"""Hydra plumbing: resolvers for geotune's paths and config composition from the shipped ``conf``.

``conf/`` is a package inside the distribution, so Hydra finds it as ``pkg://conf`` whether
geotune was installed from a wheel or an editable checkout.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "conf"
CONFIG_PATH = "pkg://conf"


def register_resolvers() -> None:
    from datamodules import paths

    OmegaConf.register_new_resolver("geotune_home", lambda: str(paths.home()), replace=True)
    OmegaConf.register_new_resolver("geotune_tracking_uri", paths.tracking_uri, replace=True)
    OmegaConf.register_new_resolver(
        "geotune_artifacts", lambda: paths.artifacts_dir().as_uri(), replace=True
    )


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config outside a Hydra app (tests, the demo, the benchmark grid)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


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
