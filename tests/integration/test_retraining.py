"""The weekly schedule and the data-change sensor, evaluated against a real (temporary) Dagster instance."""

import datetime

import dagster as dg
import pytest
from conftest import PROJECT_INSTANCE_CONFIG, prepare, run_job, tiny_training, webhook_receiver

from flower_pipeline.catalog import Variant
from flower_pipeline.defs.automation import (
    HASH_TAG,
    RETRAIN_CRON,
    retrain_job,
    retrain_on_new_data,
    retraining_run_config,
    weekly_retraining,
)
from flower_pipeline.defs.partitions import add_variant, training_key
from flower_pipeline.errors import PipelineError

TINY = tiny_training(iterations=4, log_every=2)


def _cache(instance: dg.DagsterInstance, variant: str, content_hash: str) -> None:
    add_variant(instance, Variant.parse(variant))
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "tensor_cache", partition=variant, metadata={"content_hash": content_hash}))


def _requested(result: dg.SensorResult) -> list[tuple[str, str]]:
    return sorted((r.partition_key, r.run_key) for r in result.run_requests)


def test_schedule_is_weekly_stopped_and_requests_every_partition_of_prepared_variants():
    assert RETRAIN_CRON == "0 3 * * 1" and weekly_retraining.cron_schedule == RETRAIN_CRON
    assert weekly_retraining.default_status == dg.DefaultScheduleStatus.STOPPED
    assert weekly_retraining.job_name == retrain_job.name
    tick = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)
    with dg.instance_for_test() as instance:
        skipped = weekly_retraining(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
        assert isinstance(skipped, dg.SkipReason)
        _cache(instance, "synthetic-gray-64", "aaa")
        _cache(instance, "flowers17-color-64", "bbb")
        requests = weekly_retraining(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
    assert [r.partition_key for r in requests] == ["arch1|flowers17-color-64", "arch2|flowers17-color-64",
                                                   "arch1|synthetic-gray-64", "arch2|synthetic-gray-64"]
    assert all(r.run_key.startswith("2026-11-30T03:00:") for r in requests)


def test_sensor_and_training_use_one_cache_hash_and_retrain_only_changed_trained_partitions(tmp_path):
    """Real prepare and train runs: no request without a change, one per changed, trained variant × arch."""
    assert retrain_on_new_data.default_status == dg.DefaultSensorStatus.STOPPED
    data = tmp_path / "data"
    with dg.instance_for_test() as instance:
        def tick():
            return retrain_on_new_data(dg.build_sensor_context(instance=instance))

        assert isinstance(tick(), dg.SkipReason)  # nothing prepared
        prepare(instance, data, "synthetic-gray-32")
        prepare(instance, data, "synthetic-color-32")
        for variant in ("synthetic-gray-32", "synthetic-color-32"):
            assert run_job(instance, "retrain_generators", training_key(variant, "arch1"), data,
                           {"trained_generator": {"config": TINY}}, assets=["trained_generator"]).success
        assert isinstance(tick(), dg.SkipReason)  # up to date; arch2 was never trained: left alone
        changed = prepare(instance, data, "synthetic-gray-32", ops={"tensor_cache": {"config": {
            "holdout_fraction": 0.2}}}).output_for_node("tensor_cache")  # new content, new hash
        assert _requested(tick()) == [("arch1|synthetic-gray-32",
                                       f"arch1|synthetic-gray-32:{changed.content_hash}:0")]


def test_scheduled_runs_carry_the_retraining_profile(tmp_path, monkeypatch):
    profile = tmp_path / "retraining.yaml"
    profile.write_text("training: {iterations: 500, device: cpu}\nevaluation: {samples: 200}\n")
    monkeypatch.setenv("FLOWER_PIPELINE_RETRAINING", str(profile))
    tick = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)
    with dg.instance_for_test() as instance:
        _cache(instance, "synthetic-gray-64", "aaa")
        requests = weekly_retraining(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
    ops = requests[0].run_config["ops"]
    assert ops["trained_generator"]["config"] == {"iterations": 500, "device": "cpu"}
    assert ops["generator_evaluation"]["config"] == {"samples": 200}
    profile.write_text("training: {iterations: 500, iters: 3}\n")
    with pytest.raises(PipelineError, match="unknown training setting 'iters'"):
        retraining_run_config()
    profile.write_text("training: [iterations, 500]\n")
    with pytest.raises(PipelineError, match="must map training: and evaluation: to settings"):
        retraining_run_config()


def _run(instance: dg.DagsterInstance, partition: str, status: dg.DagsterRunStatus, tags: dict | None = None) -> None:
    """A run of the retraining job in the given state, as the daemon's queue would hold it."""
    from dagster._core.utils import make_new_run_id

    instance.add_run(dg.DagsterRun(job_name="retrain_generators", run_id=make_new_run_id(), status=status,
                                   tags={"dagster/partition": partition, **(tags or {})}))


def test_no_pile_ups_and_a_failed_sensor_request_is_requested_again():
    tick = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)
    with dg.instance_for_test() as instance:
        _cache(instance, "synthetic-gray-64", "aaa")
        _run(instance, "arch1|synthetic-gray-64", dg.DagsterRunStatus.STARTED)
        requests = weekly_retraining(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
        assert [r.partition_key for r in requests] == ["arch2|synthetic-gray-64"]  # arch1 is still running

        instance.report_runless_asset_event(dg.AssetMaterialization(
            "trained_generator", partition="arch2|synthetic-gray-64", metadata={"cache_hash": "old"}))

        def keys():
            result = retrain_on_new_data(dg.build_sensor_context(instance=instance))
            return [r.run_key for r in result.run_requests]

        assert keys() == ["arch2|synthetic-gray-64:aaa:0"]
        _run(instance, "arch2|synthetic-gray-64", dg.DagsterRunStatus.CANCELED, {HASH_TAG: "aaa"})
        assert keys() == ["arch2|synthetic-gray-64:aaa:1"]  # a new key: the daemon requests it again


def test_a_failed_retraining_is_alerted_and_leaves_no_mlflow_run_running(tmp_path, monkeypatch):
    from flower_pipeline.defs.automation import retraining_failed
    from flower_pipeline.defs.resources import FlowerStorage, MlflowTracking
    from flower_pipeline.registry import tracking

    server, received = webhook_receiver()
    monkeypatch.setenv("FLOWER_PIPELINE_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_address[1]}/hook")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data, key = tmp_path / "data", training_key("synthetic-gray-32", "arch1")
    store = tracking(data_dir=data)
    try:
        with dg.instance_for_test() as instance:
            prepare(instance, data, "synthetic-gray-32")
            # A crashed earlier run left its MLflow run RUNNING: the next training marks it KILLED.
            orphan = store.start_run("crashed", {"dagster_partition": str(key), "dagster_run_id": "gone"})
            assert run_job(instance, "retrain_generators", key, data, {"trained_generator": {"config": TINY}},
                           assets=["trained_generator"]).success
            assert store.client().get_run(orphan).info.status == "KILLED"

            failed = run_job(instance, "retrain_generators", key, data, {"trained_generator": {"config": {
                **TINY, "batch_size": 4096}}}, assets=["trained_generator"])  # refused: larger than the images
            assert not failed.success
            event = failed.get_run_failure_event()
            with dg.build_run_status_sensor_context(
                    sensor_name="retraining_failed", dagster_event=event, dagster_instance=instance,
                    dagster_run=failed.dagster_run,
                    resources={"mlflow": MlflowTracking(storage=FlowerStorage(data_dir=str(data)))}) as context:
                retraining_failed(context.for_run_failure())
    finally:
        server.shutdown()
        server.server_close()
    assert [(a["partition"], a["run_id"]) for a in received] == [(str(key), failed.run_id)]
    runs = store.client().search_runs([store.experiment_id()], f"tags.dagster_run_id = '{failed.run_id}'")
    assert runs and all(r.info.status == "FAILED" for r in runs)


@pytest.mark.slow
def test_ctrl_c_cancels_a_cli_training_frees_its_gpu_slot_and_kills_its_mlflow_run(tmp_path):
    """Ctrl-C of a training cancels its run, as the UI's Terminate would: CANCELED (not failed, not retried,
    not alerted), slot freed, exit 130, its MLflow run KILLED. (A SIGKILLed one: tests/system/test_ui.py.)"""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_INSTANCE_CONFIG, home)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    cli = [sys.executable, "-m", "flower_pipeline.cli"]
    data = ["--data-dir", str(tmp_path / "data")]
    subprocess.run([*cli, "prepare", "--dataset", "synthetic", "--size", "16", "--feature-net-epochs", "1", *data],
                   env=env, check=True, capture_output=True, timeout=300)
    train = [*cli, "train", "--variant", "synthetic-color-16", "--features", "8", "--device", "cpu",
             "--eval-samples", "16", "--eval-inception-weights", "off", *data]
    grids = tmp_path / "data" / "synthetic" / "training"
    long_run = subprocess.Popen([*train, "--arch", "arch2", "--iterations", "1000000"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(grids.glob("*/arch2/*/samples/*.png")):
            assert time.monotonic() < deadline and long_run.poll() is None, "the training never started"
            time.sleep(0.5)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 1
        long_run.send_signal(signal.SIGINT)  # Ctrl-C
        assert long_run.wait(timeout=60) == 130 and long_run.stderr.read().strip() == "error: interrupted"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs(limit=1)
            assert run.status == dg.DagsterRunStatus.CANCELED
            assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0
        from flower_pipeline.registry import tracking

        store = tracking(data_dir=tmp_path / "data")
        (cancelled,) = store.client().search_runs([store.experiment_id()], f"tags.dagster_run_id = '{run.run_id}'")
        assert cancelled.info.status == "KILLED"  # interrupted, not failed
    finally:
        long_run.kill()


def test_a_second_training_of_a_partition_refuses_in_one_line_while_the_first_runs(tmp_path, monkeypatch):
    """Both would write the partition's one stage record, and each command would report the other's version."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data, key = tmp_path / "data", training_key("synthetic-gray-32", "arch1")
    with dg.instance_for_test() as instance:
        prepare(instance, data, "synthetic-gray-32")
        _run(instance, str(key), dg.DagsterRunStatus.STARTED)  # the first, started moments before
        second = run_job(instance, "retrain_generators", key, data, {"trained_generator": {"config": TINY}},
                         assets=["trained_generator"])
    (failure,) = second.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data.description.startswith(
        "arch1|synthetic-gray-32 is already being trained by run ")


@pytest.mark.slow
def test_with_no_daemon_a_waiting_command_says_whom_it_waits_for_ends_on_sigterm_and_reaps_a_dead_holder(tmp_path):
    """The README's path runs no daemon: a training killed while it holds the gpu slot would hold it forever.
    A command that waits for the slot names the run holding it, ends at once on SIGTERM, and reaps a holder
    whose heartbeat has stopped itself, with a line saying so."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_INSTANCE_CONFIG, home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLOWER_PIPELINE_DEAD_AFTER": "20"}  # the least it can be
    cli, data = [sys.executable, "-m", "flower_pipeline.cli"], ["--data-dir", str(tmp_path / "data")]
    subprocess.run([*cli, "prepare", "--dataset", "synthetic", "--size", "16", "--feature-net-epochs", "1", *data],
                   env=env, check=True, capture_output=True, timeout=300)
    train = [*cli, "train", "--variant", "synthetic-color-16", "--features", "8", "--device", "cpu",
             "--eval-samples", "16", "--eval-inception-weights", "off", "--eval-min-recall", "0", *data]

    def slots() -> tuple[set[str], set[str]]:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            info = instance.event_log_storage.get_concurrency_info("gpu")
            return info.active_run_ids, info.pending_run_ids

    def wait_for(condition, what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.5)

    holder = subprocess.Popen([*train, "--arch", "arch2", "--iterations", "1000000"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waiting = None
    try:
        wait_for(lambda: slots()[0], "the first training never took the slot")
        (held_by,) = slots()[0]
        waiting = subprocess.Popen([*train, "--arch", "arch1", "--iterations", "4"], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: slots()[1], "the second training never waited for the slot")
        (waiter,) = slots()[1]
        time.sleep(6)  # one look of its guard (every 5 s): the line naming the holder
        waiting.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 143 and time.monotonic() - started < 10, (waiting.returncode, err)
        assert f"waiting for a gpu slot (1 in all), held by run {held_by} (retrain_generators" in out, out
        assert err.strip() == "error: canceled while waiting for a pool slot (SIGTERM)", err
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_run_by_id(waiter).status == dg.DagsterRunStatus.CANCELED
        assert slots() == ({held_by}, set())

        holder.kill()  # SIGKILL: its run stays STARTED and keeps the slot, and no daemon runs
        holder.wait(timeout=30)
        done = subprocess.run([*train, "--arch", "arch1", "--iterations", "4"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (f"run {held_by} had no heartbeat for over 20 s (its process was killed): marked failed, its pool "
                "slot freed") in done.stdout, done.stdout
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_run_by_id(held_by).status == dg.DagsterRunStatus.FAILURE
        assert slots() == (set(), set())
    finally:
        for process in (holder, waiting):
            if process is not None:
                process.kill()
