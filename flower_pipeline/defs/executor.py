"""Every job's executor (flower_pipeline/scaleout/executor.py): in-process, or dagster-celery's when a broker is set."""

import dagster as dg

from flower_pipeline.scaleout.executor import chosen_executor


@dg.definitions
def executor() -> dg.Definitions:
    return dg.Definitions(executor=chosen_executor())
