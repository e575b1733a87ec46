"""In-process bus and locks."""
