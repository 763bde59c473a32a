"""Launching the project's jobs from a terminal: the instance at $DAGSTER_HOME, a job run for one partition,
and its outputs read back."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from flower_pipeline.errors import PipelineError

QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def dagster_home() -> str:
    """$DAGSTER_HOME, else (and then set to) the project's own dagster_home/ (a source checkout)."""
    from flower_pipeline.layout import PROJECT_DAGSTER_HOME

    fallback = PROJECT_DAGSTER_HOME if PROJECT_DAGSTER_HOME.is_dir() else Path("dagster_home").resolve()
    return os.environ.setdefault("DAGSTER_HOME", str(fallback))


def instance() -> Any:
    """The instance at $DAGSTER_HOME, else the project's own dagster_home/."""
    return _instance_at(dagster_home())


@functools.cache
def _instance_at(home: str) -> Any:
    """The instance in `home`, its storage created under a lock: two first commands at once would both create
    its tables."""
    import fcntl

    import dagster as dg

    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".instance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = dg.DagsterInstance.get()
        found.get_runs(limit=1)  # run storage
        found.get_dynamic_partitions("datasets")  # event log storage
        found.all_instigator_state()  # schedule storage
    return found


@functools.cache
def definitions() -> Any:
    from flower_pipeline.definitions import defs

    return defs()


def run_job(name: str, partition_key: Any, ops: dict[str, Any], data_dir: Path) -> Any:
    """Run one of the project's jobs for one partition in the project's instance, as the UI would: in this
    process, or with its steps on Celery workers when a broker is configured (docs/operations.md, Scaling out)."""
    from flower_pipeline.scaleout import celery_enabled

    storage = {"storage": {"config": {"data_dir": str(data_dir.resolve())}}}
    run_config = {**QUIET_LOGGERS, "ops": ops, "resources": storage}
    if not celery_enabled():
        result = definitions().resolve_job_def(name).execute_in_process(
            partition_key=partition_key, instance=instance(), raise_on_error=False, run_config=run_config)
        if not result.success:
            raise PipelineError(_failure_message(result))
        return result
    return _run_on_workers(name, partition_key, run_config)


def _run_on_workers(name: str, partition_key: Any, run_config: dict[str, Any]) -> Any:
    """The job through its (Celery) executor; outputs are read back from the shared data folder."""
    import dagster as dg

    from flower_pipeline.scaleout import code_location

    job = code_location().get_reconstructable_job(name)
    tags = definitions().resolve_job_def(name).get_tags_for_partition_key(str(partition_key), None)
    result = dg.execute_job(job, instance(), run_config=run_config, tags=tags)
    if not result.success:
        raise PipelineError(_failure_message(result))
    return _FinishedRun(result, str(partition_key), Path(run_config["resources"]["storage"]["config"]["data_dir"]))


@dataclasses.dataclass(frozen=True)
class _FinishedRun:
    """A run executed on workers, read as execute_in_process's result is: its outputs are the stage records
    the workers wrote to the shared data folder."""

    result: Any
    partition_key: str
    data_dir: Path

    def output_for_node(self, name: str) -> Any:
        import dagster as dg

        from flower_pipeline.defs.resources import FlowerStorage, StageOutputs

        io = StageOutputs(storage=FlowerStorage(data_dir=str(self.data_dir)))
        return io.load_record(dg.AssetKey(name), self.partition_key)

    def asset_materializations_for_node(self, name: str) -> Any:
        return self.result.asset_materializations_for_node(name)


def _failure_message(result: Any) -> str:
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return data.user_failure_data.description
        error = data.error
        while error is not None and error.cause is not None:  # the user code's own exception
            error = error.cause
        if error is not None:
            return f"{event.step_key} failed: {error.message.strip().splitlines()[0]}"
    return "the run failed; see the Dagster UI for its log"
