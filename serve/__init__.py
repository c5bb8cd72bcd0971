"""geotune serve: the HTTP layer over ingestion, training, the registry and the predictor."""
