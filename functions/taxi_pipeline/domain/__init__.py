"""Domain: datasets, messages, schedules and the run history's derivation (pure, no I/O)."""
