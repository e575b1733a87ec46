"""BigQuery: the cloud warehouse."""
