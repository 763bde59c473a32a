"""The Celery app the pipeline's workers run: `celery -A flower_pipeline.worker worker -Q gpu -c 1`."""

from flower_pipeline.scaleout import worker_app

app = worker_app()
