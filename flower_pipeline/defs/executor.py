"""The executor: in-process on one machine, dagster-celery's when a broker is set (docs/operations.md, Scaling out)."""

import dagster as dg

from flower_pipeline.scaleout import celery_enabled, celery_executor


@dg.definitions
def executor() -> dg.Definitions:
    return dg.Definitions(executor=celery_executor()) if celery_enabled() else dg.Definitions()
