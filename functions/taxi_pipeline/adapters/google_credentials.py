"""Which credentials the Google clients (Cloud Storage, BigQuery) are built with.

``TAXI_PIPELINE_ACCESS_TOKEN`` (``deploy.sh`` passes ``gcloud auth print-access-token``, so a
user who only ran ``gcloud auth login`` needs no separate application-default login), else
``None``: the client's Application Default Credentials. The functions never set it.
"""

from __future__ import annotations

from typing import Any

from taxi_pipeline.settings import Settings


def credentials_of(settings: Settings) -> Any | None:
    """OAuth credentials from the settings' access token; ``None``: the default ones."""
    if settings.access_token is None:
        return None
    from google.oauth2.credentials import Credentials

    return Credentials(settings.access_token.get_secret_value())  # type: ignore[no-untyped-call]
