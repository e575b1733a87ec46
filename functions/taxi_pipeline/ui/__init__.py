"""The web UI (``taxi-pipeline ui``): executions, a run's timeline, coverage, and a JSON API.

``app`` builds the Starlette app, ``backend`` chooses where runs are read and sent (the embedded
pipeline, or BigQuery + Pub/Sub), ``history_cache`` keeps the derived runs current cheaply,
``security`` holds the access rules, ``server`` runs it under uvicorn (``python -m
taxi_pipeline.ui`` in Cloud Run); ``cli/ui.py`` is the command. Templates and assets ship in the
package.
"""
