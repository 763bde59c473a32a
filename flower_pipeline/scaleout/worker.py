"""The Celery app the pipeline's workers run: `celery -A flower_pipeline.scaleout.worker worker -Q gpu -c 1`."""

import sys

from celery.signals import worker_process_init

from flower_pipeline.errors import PipelineError
from flower_pipeline.scaleout.executor import worker_app
from flower_pipeline.scaleout.settings import read_secret_files

try:
    read_secret_files()
    app = worker_app()
except PipelineError as err:
    sys.exit(f"error: {err}")


@worker_process_init.connect
def load_definitions(**_: object) -> None:
    """Load the code location when the worker process starts (torch, MLflow, every asset: seconds), so its
    first step starts as fast as the next ones."""
    from flower_pipeline.scaleout.executor import code_location

    code_location().get_definition()
