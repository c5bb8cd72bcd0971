"""geotune data: sensors, ingestion of user imagery and labels, dataset folders, datamodules."""
