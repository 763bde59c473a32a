"""Beyond one machine: steps on Celery workers, configured from the environment alone.

    FLOWER_PIPELINE_CELERY_BROKER=amqp://guest:guest@127.0.0.1:5672//   # set: steps go to Celery workers
    FLOWER_PIPELINE_CELERY_BACKEND=redis://127.0.0.1:6379/0

Unset, the project runs in-process on one machine, as before. Set, every job of
the code location (UI, daemon, schedules, the CLI) uses dagster-celery's
executor: training and evaluation steps go to the `gpu` queue, one worker per
GPU consumes it one step at a time; ingest and registration go to dagster-celery's
default queue. The workers run `celery -A flower_pipeline.worker worker`
(`flower-pipeline stack` starts them; docs/operations.md "Scaling out").
"""

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

BROKER_ENV = "FLOWER_PIPELINE_CELERY_BROKER"
BACKEND_ENV = "FLOWER_PIPELINE_CELERY_BACKEND"
GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "dagster"  # dagster-celery's default queue: the steps without a queue tag
GPU_STEP = {"dagster-celery/queue": GPU_QUEUE}  # op tags of the steps that use the GPU

# Shared by the executor (the producer) and the workers, so both ends agree.
CELERY_SETTINGS: dict[str, Any] = {
    # A step's message is acknowledged when the step ends, not when it starts: if its worker dies
    # (SIGKILL, a lost machine), the broker hands the step to another worker, which resumes the
    # training from its checkpoint, instead of the run waiting for a result that never comes.
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,  # a busy GPU worker holds no second step another worker could run
    "broker_connection_retry_on_startup": True,
    "result_expires": 7 * 24 * 3600,
}


def celery_enabled() -> bool:
    return bool(os.environ.get(BROKER_ENV))


def celery_executor() -> Any:
    """dagster-celery's executor (broker and result backend read from the environment when a run starts), which
    also says in the run's log when a step waits for its pool."""
    import dagster as dg
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

    class PoolWaitVisible(CeleryExecutor):
        """dagster-celery's loop never emits Dagster's "blocked by pool" event, so a GPU step waiting for the
        `gpu` slot showed nothing for minutes; a watcher reports the wait as an engine event instead. Its runs
        beat while they execute, like the in-process executor's (defs/heartbeat.py)."""

        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            from flower_pipeline.defs.heartbeat import heartbeat

            pools = {step.pool for step in execution_plan.steps if step.pool}
            with heartbeat(plan_context.instance, plan_context.run_id), \
                    _report_pool_waits(plan_context.instance, plan_context.dagster_run, pools):
                yield from super().execute(plan_context, execution_plan)

    @dg.executor(name="celery", config_schema=CELERY_CONFIG)
    def executor(init_context: Any) -> CeleryExecutor:
        config = init_context.executor_config
        return PoolWaitVisible(broker=config.get("broker"), backend=config.get("backend"),
                               config_source=config.get("config_source"), include=config.get("include"),
                               retries=RetryMode.from_config(config["retries"]))

    return executor.configured(
        {"broker": {"env": BROKER_ENV}, "backend": {"env": BACKEND_ENV}, "config_source": CELERY_SETTINGS},
        name="celery")


@contextlib.contextmanager
def _report_pool_waits(instance: Any, run: Any, pools: set[str], every: float = 1.0,
                       repeat: float = 60.0) -> Iterator[None]:
    """While the run executes: each of its steps waiting for a slot of one of `pools` gets an engine event in
    the run's log, naming the pool, its limit and the runs holding it (once, then every `repeat` seconds)."""
    from flower_pipeline.defs.heartbeat import repeating

    told: dict[str, float] = {}

    def report_waits() -> None:
        for pool in pools:
            info = instance.event_log_storage.get_concurrency_info(pool)
            holders = sorted({slot.run_id[:8] for slot in info.claimed_slots if slot.run_id != run.run_id})
            for pending in info.pending_steps:
                waiting = pending.run_id == run.run_id and pending.assigned_timestamp is None
                if waiting and time.monotonic() - told.get(pending.step_key, -repeat) >= repeat:
                    told[pending.step_key] = time.monotonic()
                    instance.report_engine_event(
                        f'step "{pending.step_key}" waits for a slot of pool "{pool}" ({info.slot_count} '
                        f"slot(s), held by run {', '.join(holders) or 'none'})", run, step_key=pending.step_key)

    with repeating(report_waits, every):
        yield


DEFINITIONS = ("flower_pipeline.definitions", "defs")  # the module and attribute every process loads


def code_location() -> Any:
    """The project's code location as a reconstructable repository: what a worker loads to run a step."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    return ReconstructableRepository.for_module(*DEFINITIONS, None)


def worker_app() -> Any:
    """The workers' Celery app: dagster-celery's step task, with the executor's broker, backend and settings."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    from flower_pipeline.errors import PipelineError

    missing = [name for name in (BROKER_ENV, BACKEND_ENV) if not os.environ.get(name)]
    if missing:
        raise PipelineError(f"a worker needs {' and '.join(missing)} (docs/operations.md, Scaling out)")
    app = make_app(CeleryExecutor.for_cli(broker=os.environ[BROKER_ENV], backend=os.environ[BACKEND_ENV],
                                          config_source=CELERY_SETTINGS).app_args())
    create_task(app)
    return app
