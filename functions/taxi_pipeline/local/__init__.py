"""The embedded default's orchestration: admission, the scheduler, backfills."""
