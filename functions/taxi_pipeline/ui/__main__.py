"""The UI as a Cloud Run service: ``python -m taxi_pipeline.ui`` (deploy.sh's entry point).

Listens on all interfaces at ``$PORT`` (Cloud Run's contract), so the token is required
(``TAXI_PIPELINE_UI_TOKEN``, from Secret Manager); IAM in front lets only invokers reach it.
"""

from __future__ import annotations

import logging
import os
import sys

from taxi_pipeline.errors import PipelineError
from taxi_pipeline.logs import configure_logging
from taxi_pipeline.settings import Settings
from taxi_pipeline.ui.server import serve


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    port = int(os.environ.get("PORT", "8080"))
    try:
        serve(
            settings,
            "0.0.0.0",  # Cloud Run routes to the container's port from outside
            port,
            log_level="info",
            on_ready=lambda url: logging.getLogger(__name__).info("the UI listens on %s", url),
        )
    except PipelineError as exc:
        logging.getLogger(__name__).error("the UI cannot start: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
