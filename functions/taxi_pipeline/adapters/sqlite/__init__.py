"""SQLite: the embedded default's run history, shared by the processes of a home."""
