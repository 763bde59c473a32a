"""The Celery app the pipeline's workers run: `celery -A flower_pipeline.worker worker -Q gpu -c 1`."""

from celery.signals import worker_process_init

from flower_pipeline.scaleout import worker_app

app = worker_app()


@worker_process_init.connect
def load_definitions(**_: object) -> None:
    """Load the code location when the worker process starts (torch, MLflow, every asset: seconds), so its
    first step starts as fast as the next ones."""
    from flower_pipeline.scaleout import code_location

    code_location().get_definition()
