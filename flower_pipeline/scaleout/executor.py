"""The executors: in-process on one machine, dagster-celery's when a broker is set (docs/operations.md, Scaling
out), and the workers' guarded step task.

In-process on one machine because every job's steps run one after another anyway, and a step inside its run's
process dies with it: a killed run worker leaves no orphan training on the GPU (Dagster's multiprocess default
did: its step process outlived the run and held the GPU beside the next training)."""

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
from celery import Task
from celery.exceptions import Ignore
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.in_process import InProcessExecutor

from flower_pipeline.environment import BACKEND_ENV, BROKER_ENV
from flower_pipeline.errors import PipelineError

from .heartbeat import STEP_ENDED, STEP_EVERY, heartbeat, repeating, step_beat
from .settings import CELERY_SETTINGS, CODE_VERSION_TAG, NO_RETRY, REFUSAL, celery_enabled, code_version


def chosen_executor() -> dg.ExecutorDefinition:
    """Every job's executor: dagster-celery's when a broker is set, else the in-process one; both beat."""
    return celery_executor() if celery_enabled() else beating_in_process_executor


@dg.executor(name="in_process", config_schema=IN_PROC_CONFIG)
def beating_in_process_executor(init_context: dg.InitExecutorContext) -> InProcessExecutor:
    """Dagster's in-process executor, whose runs beat while they execute (scaleout/heartbeat.py)."""
    config = init_context.executor_config
    return Beating(retries=RetryMode.from_config(config["retries"]), marker_to_close=None,
                   step_dependency_config=StepDependencyConfig.from_config(config.get("step_dependency_config")))


class Beating(InProcessExecutor):
    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        tag_code_version(plan_context.instance, plan_context.run_id)
        with heartbeat(plan_context.instance, plan_context.run_id):
            yield from super().execute(plan_context, execution_plan)


def celery_executor() -> Any:
    """dagster-celery's executor (broker and result backend read from the environment when a run starts), which
    also says in the run's log when a step waits for its pool."""
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

    class PoolWaitVisible(CeleryExecutor):
        """dagster-celery's loop never emits Dagster's "blocked by pool" event, so a GPU step waiting for the
        `gpu` slot showed nothing for minutes; a watcher reports the wait as an engine event instead. Its runs
        beat while they execute, like the in-process executor's (scaleout/heartbeat.py)."""

        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            pools = {step.pool for step in execution_plan.steps if step.pool}
            tag_code_version(plan_context.instance, plan_context.run_id)
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


def tag_code_version(instance: Any, run_id: str) -> None:
    """The run carries the code version of the process that executes it: its steps, wherever they run, must
    run the same code."""
    instance.add_run_tags(run_id, {CODE_VERSION_TAG: code_version()})


class RefusedStep(Exception):
    """A worker would not run a step: its code is not the run's."""


class GuardedStep(Task):
    """dagster-celery's step task, behind two checks made before any of the step runs:

    - **the code version**: a worker whose code differs from the run's refuses the step in one line naming both
      (after a `git pull`, a worker started before it still runs the old code);
    - **one delivery**: steps are acknowledged when they end, so the broker hands a step out again when its
      worker's connection drops: a killed worker (the copy must run, and resumes from the checkpoint), or
      RabbitMQ's consumer timeout on a step longer than it (30 min by default; the original still runs). A
      redelivered copy runs only when the step has not ended and its heartbeat has stopped.
    """

    def __call__(self, execute_step_args_packed: dict, executable_dict: dict) -> Any:
        from dagster._core.events import EngineEventData
        from dagster._grpc.types import ExecuteStepArgs
        from dagster._serdes import unpack_value

        step_args = unpack_value(execute_step_args_packed, as_type=ExecuteStepArgs)
        instance = dg.DagsterInstance.from_ref(step_args.instance_ref)
        run = instance.get_run_by_id(step_args.run_id)
        steps, me = ", ".join(step_args.step_keys_to_execute or []), self.request.hostname
        step_key = (step_args.step_keys_to_execute or [None])[0]
        launched = run.tags.get(CODE_VERSION_TAG) if run else None
        if launched and launched != code_version():
            refusal = (f"worker {me} refuses step {steps}: it runs code version {code_version()}, the run was "
                       f"launched with {launched} (`flower-pipeline stack up` restarts workers whose code changed)")
            instance.report_engine_event(refusal, run, EngineEventData({REFUSAL: refusal}), step_key=step_key)
            # Not retried: code skew is not a passing fault, and a retry would meet the same worker.
            instance.add_run_tags(run.run_id, NO_RETRY)
            raise RefusedStep(refusal)
        if run is not None and step_key and (self.request.delivery_info or {}).get("redelivered"):
            why = not_to_run_again(instance, run.run_id, step_key)
            if why:
                instance.report_engine_event(f"{me} dropped a redelivered copy of step {steps}: {why}", run,
                                             step_key=step_key)
                raise Ignore()
        return super().__call__(execute_step_args_packed, executable_dict)


def not_to_run_again(instance: Any, run_id: str, step_key: str) -> str:
    """Why a redelivered copy of a step must not run ("" when it must: the worker that ran it is gone).
    Celery's own task state cannot tell: a copy is marked STARTED on its own worker before it gets here. The
    run's event log and the step's heartbeat (scaleout/heartbeat.py, every STEP_EVERY seconds) can."""
    from dagster._core.events import DagsterEventType

    run = instance.get_run_by_id(run_id)
    if run is None or run.is_finished:
        return f"its run has ended ({run.status.value if run else 'deleted'})"
    events = [e for e in instance.all_logs(run_id, of_type={
        DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.ENGINE_EVENT})
              if e.step_key == step_key]
    if any(e.dagster_event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE)
           for e in events):
        return "the step already ended"
    holders = [e.dagster_event.engine_event_data.metadata["Celery worker"].value for e in events
               if e.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
               and "Celery worker" in (e.dagster_event.engine_event_data.metadata or {})]
    if not holders:
        return ""  # it never started: this copy is the step
    first = step_beat(instance, run_id)
    deadline = time.monotonic() + 2.5 * STEP_EVERY  # a live step beats twice in that time
    while time.monotonic() < deadline:
        beat = step_beat(instance, run_id)
        if beat == STEP_ENDED:
            return "the step already ended"
        if beat != first:
            return f"it still runs on {holders[-1]}"
        time.sleep(0.5)
    return ""


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

    missing = [name for name in (BROKER_ENV, BACKEND_ENV) if not os.environ.get(name)]
    if missing:
        raise PipelineError(f"a worker needs {' and '.join(missing)} (docs/operations.md, Scaling out)")
    app = make_app(CeleryExecutor.for_cli(broker=os.environ[BROKER_ENV], backend=os.environ[BACKEND_ENV],
                                          config_source=CELERY_SETTINGS).app_args())
    create_task(app, base=GuardedStep)
    return app
