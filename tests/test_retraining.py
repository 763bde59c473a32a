"""The weekly schedule and the data-change sensor, evaluated against a real (temporary) Dagster instance."""

import datetime

import dagster as dg
from conftest import prepare, run_job

from flower_pipeline.catalog import Variant
from flower_pipeline.defs.partitions import add_variant, training_key
from flower_pipeline.defs.retraining import RETRAIN_CRON, retrain_job, retrain_on_new_data, weekly_retraining

TINY = {"iterations": 4, "batch_size": 8, "features": 8, "log_every": 2, "checkpoint_seconds": 0, "device": "cpu"}


def _cache(instance: dg.DagsterInstance, variant: str, content_hash: str) -> None:
    add_variant(instance, Variant.parse(variant))
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "tensor_cache", partition=variant, metadata={"content_hash": content_hash}))


def _requested(result) -> list[tuple[str, str]]:
    return sorted((r.partition_key, r.run_key) for r in result)


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
        assert _requested(tick()) == [("arch1|synthetic-gray-32", f"arch1|synthetic-gray-32:{changed.content_hash}")]
