"""geotune trainer: backbones, heads, tasks, training, registry, prediction and the CLI."""
