"""taxi-pipeline: the NYC taxi ELT pipeline as event-driven functions."""
