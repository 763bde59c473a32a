"""Runs that prove they are alive, wherever they run: the process that drives a run (the command line, a run
worker the daemon launched, on any machine) records a heartbeat in the instance every few seconds while the run
executes, and the dead-run reaper fails the runs whose heartbeat stopped. A pid checked on the daemon's machine
says nothing about a run driven from another; a heartbeat in the shared instance (SQLite or PostgreSQL) does.

A GPU step beats too, under its own key, and watches its run: a Celery step outlives its run's driver, so it
stops once its run has ended, and the reaper frees the run's pool slots only when its steps have gone silent."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import dagster as dg

from flower_pipeline.environment import BEAT_EVERY, dead_after

STEP_EVERY = 5.0  # seconds between a step's beats, and so between its looks at its run's status
STEP_ENDED = "ended"
ENDED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.CANCELING)


def _key(run_id: str) -> str:
    return f"flower_pipeline/heartbeat/{run_id}"


def _step_key(run_id: str) -> str:
    return f"flower_pipeline/heartbeat/{run_id}/step"


@contextlib.contextmanager
def repeating(action: Callable[[], None], every: float) -> Iterator[None]:
    """`action` every `every` seconds on a daemon thread while the block runs; a failed call (a storage hiccup)
    is skipped, the next one tries again."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):
                action()

    thread = threading.Thread(target=loop, daemon=True, name=getattr(action, "__name__", "repeating"))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def heartbeat(instance: dg.DagsterInstance, run_id: str, every: float = BEAT_EVERY) -> Iterator[None]:
    """Beat for `run_id` while the block runs (the executor's loop: the run's driver)."""

    def beat() -> None:
        instance.run_storage.set_cursor_values({_key(run_id): repr(time.time())})

    beat()
    with repeating(beat, every):
        yield


def silent_for(instance: dg.DagsterInstance, record: dg.RunRecord, now: float) -> float:
    """Seconds since the run's last beat (since it started, if it never beat)."""
    beat = instance.run_storage.get_cursor_values({_key(record.dagster_run.run_id)}).get(
        _key(record.dagster_run.run_id))
    since = float(beat) if beat else (record.start_time or record.create_timestamp.timestamp())
    return now - since


@contextlib.contextmanager
def step_watch(instance: dg.DagsterInstance, run_id: str, step_key: str,
               every: float = STEP_EVERY) -> Iterator[threading.Event]:
    """While a step computes: beat under the run's step key and look at the run's status; the event is set once
    the run has ended elsewhere (failed by the reaper, canceled), and the training then stops before its next
    iteration. On leaving, the key says the step has ended, and a step whose run ended frees its own pool slot:
    its dead driver never will, and only now is the GPU free."""
    run_ended = threading.Event()

    def beat() -> None:
        instance.run_storage.set_cursor_values({_step_key(run_id): repr(time.time())})
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in ENDED:
            run_ended.set()

    beat()
    try:
        with repeating(beat, every):
            yield run_ended
    finally:
        with contextlib.suppress(Exception):
            instance.run_storage.set_cursor_values({_step_key(run_id): STEP_ENDED})
            if run_ended.is_set():
                instance.event_log_storage.free_concurrency_slot_for_step(run_id, step_key)


def step_key(context: dg.AssetExecutionContext) -> str:
    return str(context.op_execution_context.op_handle)


def step_beat(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The last beat of a step of the run: a time, STEP_ENDED, or None when none ever beat."""
    return instance.run_storage.get_cursor_values({_step_key(run_id)}).get(_step_key(run_id))


def step_silent_for(instance: dg.DagsterInstance, run_id: str, now: float) -> float:
    """Seconds since a step of the run last beat; infinite when none ever did or the last one has ended."""
    beat = step_beat(instance, run_id)
    return float("inf") if beat in (None, STEP_ENDED) else now - float(beat)


def reap_dead_runs(instance: dg.DagsterInstance, spare: str | None = None) -> list[str]:
    """Runs still STARTED whose heartbeat stopped (their driver was killed, their machine lost, wherever they
    ran), marked failed; then the pool slots of ended runs freed once none of their steps still computes.
    Dagster's run monitoring cannot ask the local run launcher whether a worker lives; every run of this code
    location beats (above). `spare`: the caller's own run, alive whatever its last beat says.
    Returns the ids of the runs marked failed."""
    reaped, now, patience = [], time.time(), dead_after()
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        silent = silent_for(instance, record, now)
        if silent < patience or record.dagster_run.run_id == spare:
            continue
        instance.report_run_failed(record.dagster_run, f"no heartbeat from the run for {silent:.0f} s: the "
                                                       "process driving it was killed or its machine lost")
        reaped.append(record.dagster_run.run_id)
    free_slots_of_ended_runs(instance)
    return reaped


def free_slots_of_ended_runs(instance: dg.DagsterInstance) -> list[str]:
    """Pool slots still held by runs that have ended, freed once their steps are silent: a Celery step outlives
    its dead driver until it sees its run failed, and until then the GPU is still its. Returns the run ids."""
    storage, now, freed = instance.event_log_storage, time.time(), []
    pools = [storage.get_concurrency_info(pool) for pool in storage.get_concurrency_keys()]
    holders = {held.run_id for info in pools for held in (*info.claimed_slots, *info.pending_steps)}
    for run_id in sorted(holders):
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            continue
        if step_silent_for(instance, run_id, now) < 2 * STEP_EVERY:
            continue  # a step still beats: it stops within a beat of seeing its run ended
        storage.free_concurrency_slots_for_run(run_id)
        freed.append(run_id)
    return freed
