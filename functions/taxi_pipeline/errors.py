"""Errors that carry their retry meaning.

Entry points re-raise :class:`TransientError` (Pub/Sub and Eventarc redeliver with backoff) and
acknowledge :class:`PermanentError` after recording it, so a bad input never becomes a retry storm.
Adapters translate SDK errors into these at their edge, always with ``raise ... from exc``.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class TransientError(PipelineError):
    """Worth retrying: 429/5xx, timeouts, connection resets, concurrent updates."""


class RunCancelled(PipelineError):
    """The run was asked to stop (Ctrl-C, SIGTERM, ``runs cancel``): neither retried nor a
    failure. Entry points record it CANCELLED and acknowledge the event."""


class PermanentError(PipelineError):
    """Retrying cannot help: invalid input, verification failures, 400/403/404."""


class InvalidMessage(PermanentError):
    """An event or message that does not parse or fails validation."""


class NotPublished(PermanentError):
    """The source has no file for this dataset and month (HTTP 404)."""


class UnsupportedMonth(PermanentError):
    """The month has no source file in a layout the pipeline reads (yellow before 2011-01)."""


class BeforeTheFirstMonth(NotPublished, UnsupportedMonth):
    """No upstream has the dataset this early at all (fhvhv before 2019-02, green before
    2013-08): a scheduled or published request ends SKIPPED like any month not published, and
    the CLI refuses it before anything runs, like an unsupported month."""


class SourceConflict(PermanentError):
    """The month is loaded from another source (or from an upstream file that changed since):
    refused unless the run replaces the month's rows (``--replace``)."""


class VerificationFailed(PermanentError):
    """A downloaded file failed a check (length, gzip CRC, header, row count)."""


class DataQualityError(PermanentError):
    """Too many rows whose values do not fit the column types."""


class ConfigurationError(PermanentError):
    """Settings that cannot work (unknown URL scheme, insecure source, bad names)."""
