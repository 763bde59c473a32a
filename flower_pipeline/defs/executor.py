"""The executor: in-process on one machine, dagster-celery's when a broker is set (docs/operations.md, Scaling out).

In-process on one machine because every job's steps run one after another anyway, and a step inside its run's
process dies with it: a killed run worker leaves no orphan training on the GPU (Dagster's multiprocess default
did: its step process outlived the run and held the GPU beside the next training)."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.in_process import InProcessExecutor

from flower_pipeline.scaleout import celery_enabled, celery_executor, tag_code_version

from .heartbeat import heartbeat


@dg.executor(name="in_process", config_schema=IN_PROC_CONFIG)
def beating_in_process_executor(init_context: dg.InitExecutorContext) -> InProcessExecutor:
    """Dagster's in-process executor, whose runs beat while they execute (defs/heartbeat.py)."""
    config = init_context.executor_config
    return Beating(retries=RetryMode.from_config(config["retries"]), marker_to_close=None,
                   step_dependency_config=StepDependencyConfig.from_config(config.get("step_dependency_config")))


class Beating(InProcessExecutor):
    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        tag_code_version(plan_context.instance, plan_context.run_id)
        with heartbeat(plan_context.instance, plan_context.run_id):
            yield from super().execute(plan_context, execution_plan)


@dg.definitions
def executor() -> dg.Definitions:
    return dg.Definitions(executor=celery_executor() if celery_enabled() else beating_in_process_executor)
