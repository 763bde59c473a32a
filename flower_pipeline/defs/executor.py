"""The executor: in-process on one machine, dagster-celery's when a broker is set (docs/operations.md, Scaling out).

In-process on one machine because every job's steps run one after another anyway, and a step inside its run's
process dies with it: a killed run worker leaves no orphan training on the GPU (Dagster's multiprocess default
did: its step process outlived the run and held the GPU beside the next training)."""

import dagster as dg

from flower_pipeline.scaleout import celery_enabled, celery_executor


@dg.definitions
def executor() -> dg.Definitions:
    return dg.Definitions(executor=celery_executor() if celery_enabled() else dg.in_process_executor)
