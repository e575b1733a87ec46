"""HTTP: the source of the published files."""
