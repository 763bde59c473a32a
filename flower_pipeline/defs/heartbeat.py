"""Runs that prove they are alive, wherever they run: the process that drives a run (the command line, a run
worker the daemon launched, on any machine) records a heartbeat in the instance every few seconds while the run
executes, and the dead-run reaper fails the runs whose heartbeat stopped. A pid checked on the daemon's machine
says nothing about a run driven from another; a heartbeat in the shared instance (SQLite or PostgreSQL) does."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import dagster as dg

BEAT_EVERY = 10.0  # seconds between beats
DEAD_AFTER = 60.0  # a STARTED run silent this long is dead: its driver was killed or its machine lost


def _key(run_id: str) -> str:
    return f"flower_pipeline/heartbeat/{run_id}"


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
