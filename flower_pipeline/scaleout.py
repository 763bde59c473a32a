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
import functools
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from flower_pipeline.environment import BACKEND_ENV, BROKER_ENV, MLFLOW_BACKEND_ENV, POSTGRES_ENV

# Settings that may hold a password: each is read from the environment, or from the file NAME_FILE names, which
# only its owner may read (never from a command line, so no password shows in `ps` or in `stack`'s records).
SECRET_ENV = (POSTGRES_ENV, MLFLOW_BACKEND_ENV, BROKER_ENV, BACKEND_ENV, "MLFLOW_TRACKING_PASSWORD")
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
    # RabbitMQ closes the channel of a step unacknowledged past its consumer timeout; the step goes on (Celery
    # says this default will change), and its redelivered copy is dropped while it runs (GuardedStep).
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    # A step's stdout and stderr stay the process's own, which Dagster's compute log manager captures into the
    # shared folder: Celery's logging proxy, its default, has no file descriptor, so nothing was captured.
    "worker_redirect_stdouts": False,
}
CODE_VERSION_TAG = "flower_pipeline/code_version"
REFUSAL = "refusal"  # the metadata key of a worker's engine event when it refuses a step
NO_RETRY = {"dagster/max_retries": "0"}  # run tags that keep Dagster's run retries from retrying a run


@functools.cache
def code_version() -> str:
    """What this process runs: a hash of the package's source and settings files, the same on every machine
    that has the same checkout (a git commit would miss uncommitted edits, and is absent from a wheel)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


code_version()  # at import: the version of the code this process loaded, not of files edited after


MAX_SECRET_BYTES = 64 << 10  # a password or a URL: a few hundred bytes


def read_secret_files() -> None:
    """NAME from the file NAME_FILE, for each setting of SECRET_ENV given so (a 0600 file: a Docker or systemd
    secret, a mounted Kubernetes secret); the processes this one starts inherit it."""
    from flower_pipeline.errors import PipelineError
    from flower_pipeline.storage import read_bounded

    for name in SECRET_ENV:
        file = os.environ.get(f"{name}_FILE")
        if not file or os.environ.get(name):
            continue
        try:
            status = os.stat(file)
        except OSError as err:
            raise PipelineError(f"{name}_FILE {file} cannot be read: {err.strerror or err}") from None
        if status.st_mode & 0o077:
            raise PipelineError(f"{name}_FILE {file} may be read by others (mode {status.st_mode & 0o777:o}): "
                                f"`chmod 600 {file}`")
        if status.st_uid != os.getuid():
            raise PipelineError(f"{name}_FILE {file} belongs to another user (uid {status.st_uid}); a secret "
                                "is read only from the reader's own file")
        data = read_bounded(file, f"{name}_FILE", MAX_SECRET_BYTES)
        try:
            secret = data.decode()
        except UnicodeDecodeError:
            raise PipelineError(f"{name}_FILE {file} is not UTF-8 text") from None
        if "\0" in secret:
            raise PipelineError(f"{name}_FILE {file} holds a NUL byte; a secret is one line of text")
        os.environ[name] = secret.strip()


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
        import dagster as dg
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
    run's event log and the step's heartbeat (defs/heartbeat.py, every STEP_EVERY seconds) can."""
    from dagster._core.events import DagsterEventType

    from flower_pipeline.defs.heartbeat import STEP_ENDED, STEP_EVERY, step_beat

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

    from flower_pipeline.errors import PipelineError

    missing = [name for name in (BROKER_ENV, BACKEND_ENV) if not os.environ.get(name)]
    if missing:
        raise PipelineError(f"a worker needs {' and '.join(missing)} (docs/operations.md, Scaling out)")
    app = make_app(CeleryExecutor.for_cli(broker=os.environ[BROKER_ENV], backend=os.environ[BACKEND_ENV],
                                          config_source=CELERY_SETTINGS).app_args())
    create_task(app, base=GuardedStep)
    return app
