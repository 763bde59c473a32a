"""Launching the project's jobs from a terminal: the instance at $DAGSTER_HOME, a job run for one partition,
and its outputs read back."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flower_pipeline.errors import PipelineError, says_disk_full

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


@dataclasses.dataclass(frozen=True)
class _FinishedRun:
    """A finished run, read as execute_in_process's result is: its outputs are the stage records its steps
    wrote to the data folder (shared with the workers when they run elsewhere)."""

    result: Any
    partition_key: str
    data_dir: Path

    def output_for_node(self, name: str, partition_key: str | None = None) -> Any:
        """The record the run's step wrote for its partition (or for `partition_key` of its range)."""
        import dagster as dg

        from flower_pipeline.defs.resources import FlowerStorage, StageOutputs

        io = StageOutputs(storage=FlowerStorage(data_dir=str(self.data_dir)))
        return io.load_record(dg.AssetKey(name), partition_key or self.partition_key)

    def asset_materializations_for_node(self, name: str) -> Any:
        return self.result.asset_materializations_for_node(name)


LOCATION_NAME = "flower_pipeline"  # the code location's name in workspace.yaml and pyproject.toml


def _code_location() -> Any:
    """The project's code location, loaded in this process under the workspace's location name: a run made
    from it has the origins the UI's and the daemon's runs have, so re-execution, run retries and run-status
    sensors treat it like theirs."""
    return _code_location_for(dagster_home())


@functools.cache
def _code_location_for(home: str) -> Any:
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.remote_representation.code_location import InProcessCodeLocation
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from flower_pipeline.scaleout.executor import DEFINITIONS

    module, attribute = DEFINITIONS
    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=module, attribute=attribute)
    return InProcessCodeLocation(InProcessCodeLocationOrigin(target, location_name=LOCATION_NAME), instance())


def create_run(name: str, partition_key: Any, run_config: dict[str, Any], last_key: str | None = None) -> Any:
    """A run of job `name` for one partition (or the range partition_key … last_key, one step materializing
    them all, as a single-run backfill does), created from the code location as `dagster job launch` and the UI
    create theirs (job and plan snapshots, remote and code origins)."""
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    location = _code_location()
    repository = next(iter(location.get_repositories().values()))
    job = location.get_job(JobSubsetSelector(location_name=location.name, repository_name=repository.name,
                                             job_name=name, op_selection=None))
    if last_key is None:
        partition_tags = definitions().resolve_job_def(name).get_tags_for_partition_key(str(partition_key), None)
    else:
        partition_tags = {ASSET_PARTITION_RANGE_START_TAG: str(partition_key), ASSET_PARTITION_RANGE_END_TAG: last_key}
    tags = {**job.tags, **partition_tags}
    plan = location.get_execution_plan(job, run_config, step_keys_to_execute=None, known_state=None,
                                       instance=instance()).execution_plan_snapshot
    return instance().create_run(
        job_name=name, run_id=None, run_config=run_config, resolved_op_selection=None,
        step_keys_to_execute=plan.step_keys_to_execute, op_selection=None, status=None, root_run_id=None,
        parent_run_id=None, tags=tags, job_snapshot=job.job_snapshot, execution_plan_snapshot=plan,
        parent_job_snapshot=job.parent_job_snapshot, remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(), asset_selection=None, asset_check_selection=None,
        asset_graph=repository.asset_graph)


@contextlib.contextmanager
def _cancel_on_interrupt(run: Any) -> Iterator[threading.Event]:
    """Ctrl-C cancels the run, as the UI's Terminate does: the run is marked CANCELING before Dagster's own
    interrupt handling finishes it, so it ends CANCELED (not failed, not retried, not alerted). Dagster holds
    SIGINT's handler while a run executes, so the signal is read from the wakeup fd, on a thread; the event it
    yields is set when a signal came (on a loaded machine Dagster may finish the run before the thread marks it)."""
    import signal
    import socket

    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            try:
                received = reader.recv(64)
            except OSError:
                return
            if not received:
                return
            stop = next((s for s in (signal.SIGINT, signal.SIGTERM) if s in received), None)
            if stop is None:
                continue
            interrupted.set()
            if _waiting_for_slot(run.run_id) is not None:  # nothing of it computes yet: end at once
                instance().report_run_canceled(instance().get_run_by_id(run.run_id),
                                               message=f"Canceled from the terminal ({stop.name}) while waiting "
                                                       "for a pool slot.")
                instance().event_log_storage.free_concurrency_slots_for_run(run.run_id)
                print(f"error: canceled while waiting for a pool slot ({stop.name})", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(128 + stop)
            instance().report_run_canceling(instance().get_run_by_id(run.run_id),
                                            message=f"Canceled from the terminal ({stop.name}).")
            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield interrupted
    finally:
        signal.set_wakeup_fd(previous_fd)
        writer.close()
        watcher.join(timeout=30)  # its CANCELING mark lands before the run's status is read
        watcher.join(timeout=5)
        reader.close()


SLOT_LOOK_EVERY, SLOT_SAY_EVERY = 5.0, 30.0  # seconds between looks at the pools, and between lines about them


def _waiting_for_slot(run_id: str) -> Any:
    """The pool's state if a step of the run waits for one of its slots and none of its steps holds one, else
    None."""
    storage = instance().event_log_storage
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        if run_id in info.pending_run_ids and run_id not in info.active_run_ids:
            return info
    return None


@contextlib.contextmanager
def _slot_guard(run_id: str) -> Iterator[None]:
    """While the run executes: when it waits for a pool slot, the runs holding the pool whose heartbeat has
    stopped are reaped here, as the daemon's reaper would (a command line runs no daemon), each with a line;
    and every 30 s a line says which runs it waits for."""
    import time

    import dagster as dg

    from flower_pipeline.environment import dead_after
    from flower_pipeline.scaleout.heartbeat import reap_dead_runs, silent_for

    done, said = threading.Event(), [0.0]

    def look() -> None:
        info = _waiting_for_slot(run_id)
        if info is None:
            return
        for reaped in reap_dead_runs(instance(), spare=run_id):
            print(f"run {reaped} had no heartbeat for over {dead_after():.0f} s (its process was killed): marked "
                  "failed, its pool slot freed", flush=True)
        now = time.time()
        if now - said[0] < SLOT_SAY_EVERY or (info := _waiting_for_slot(run_id)) is None:
            return
        said[0] = now
        holders = []
        for holder in sorted(info.active_run_ids):
            record = next(iter(instance().get_run_records(dg.RunsFilter(run_ids=[holder]))), None)
            if record is not None:
                holders.append(f"run {holder} ({record.dagster_run.job_name} "
                               f"{record.dagster_run.tags.get('dagster/partition', '')}, last heartbeat "
                               f"{silent_for(instance(), record, now):.0f} s ago)")
        print(f"waiting for a {info.concurrency_key} slot ({info.slot_count} in all), held by "
              f"{', '.join(holders) or 'no run'}", flush=True)

    def loop() -> None:
        while not done.wait(SLOT_LOOK_EVERY):
            with contextlib.suppress(Exception):  # a storage hiccup: the next look tries again
                look()

    watcher = threading.Thread(target=loop, daemon=True, name="slot-guard")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=10)


def run_job(name: str, partition_key: Any, ops: dict[str, Any], data_dir: Path,
            last_key: str | None = None) -> _FinishedRun:
    """Run one of the project's jobs for one partition (or the range partition_key … last_key in one run), as
    the UI would: a run created from the code location, executed here while the terminal waits (steps in this
    process, or on Celery workers when a broker is set). Ctrl-C cancels it: its status becomes CANCELED and its
    pool slot is freed."""
    from dagster._core.definitions.reconstruct import ReconstructableJob

    from flower_pipeline.scaleout.executor import code_location

    storage = {"storage": {"config": {"data_dir": str(data_dir.resolve())}}}
    run = create_run(name, partition_key, {**QUIET_LOGGERS, "ops": ops, "resources": storage}, last_key)
    from dagster._core.execution.api import execute_run

    with _cancel_on_interrupt(run) as interrupted, _slot_guard(run.run_id):
        result = execute_run(ReconstructableJob(code_location(), name), run, instance())
    finished = instance().get_run_by_id(run.run_id)
    if interrupted.is_set() and finished.status.value != "CANCELED":  # Dagster ended it before the mark landed
        instance().report_run_canceled(finished, message="Canceled from the terminal.")
    if interrupted.is_set() or finished.status.value == "CANCELED":
        raise KeyboardInterrupt
    if not result.success:
        raise PipelineError(_refusal(run.run_id) or _failure_message(result))
    return _FinishedRun(result, str(partition_key), data_dir.resolve())


def _refusal(run_id: str) -> str | None:
    """A worker's refusal of a step (its code is not the run's), which fails the run before any step does."""
    from dagster._core.events import DagsterEventType

    from flower_pipeline.scaleout.settings import REFUSAL

    for entry in instance().all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        metadata = entry.dagster_event.engine_event_data.metadata
        if REFUSAL in metadata:
            return str(metadata[REFUSAL].value)
    return None


def _failure_message(result: Any) -> str:
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return data.user_failure_data.description
        error, chain = data.error, []
        while error is not None:  # every exception, and what each was raised while handling
            chain.append(error.message)
            error = error.cause or error.context
        if any(says_disk_full(text) for text in chain):
            return f"{event.step_key} failed: disk full"  # whatever a library raised on top of it
        error = data.error
        while error is not None and error.cause is not None:  # the user code's own exception
            error = error.cause
        if error is not None:
            return f"{event.step_key} failed: {error.message.strip().splitlines()[0][:300]}"
    return "the run failed; see the Dagster UI for its log"
