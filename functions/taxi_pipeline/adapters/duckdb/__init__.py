"""DuckDB: the embedded warehouse."""
