"""The weekly schedule and the data-change sensor, evaluated against a real (temporary) Dagster instance."""

import datetime

import dagster as dg

from flower_pipeline.defs.retraining import RETRAIN_CRON, retrain_job, retrain_on_new_data, weekly_retraining


def _cache(instance: dg.DagsterInstance, dataset: str, content_hash: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "tensor_cache", partition=dataset, metadata={"content_hash": content_hash}))


def _trained(instance: dg.DagsterInstance, dataset: str, arch: str, cache_hash: str) -> None:
    key = dg.MultiPartitionKey({"dataset": dataset, "arch": arch})
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "trained_generator", partition=str(key), metadata={"cache_hash": cache_hash}))


def _requested(result) -> list[tuple[str, str]]:
    return sorted((r.partition_key, r.run_key) for r in result)


def test_schedule_is_weekly_stopped_and_requests_every_partition_of_prepared_datasets():
    assert RETRAIN_CRON == "0 3 * * 1" and weekly_retraining.cron_schedule == RETRAIN_CRON
    assert weekly_retraining.default_status == dg.DefaultScheduleStatus.STOPPED
    assert weekly_retraining.job_name == retrain_job.name
    tick = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)
    with dg.instance_for_test() as instance:
        skipped = weekly_retraining(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
        assert isinstance(skipped, dg.SkipReason)
        _cache(instance, "synthetic", "aaa")
        _cache(instance, "flowers17", "bbb")
        requests = weekly_retraining(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
    assert [r.partition_key for r in requests] == ["arch1|flowers17", "arch2|flowers17", "arch1|synthetic",
                                                   "arch2|synthetic"]
    assert all(r.run_key.startswith("2026-11-30T03:00:") for r in requests)


def test_sensor_retrains_trained_partitions_when_their_cache_changes():
    assert retrain_on_new_data.default_status == dg.DefaultSensorStatus.STOPPED
    with dg.instance_for_test() as instance:
        def tick():
            return retrain_on_new_data(dg.build_sensor_context(instance=instance))

        assert isinstance(tick(), dg.SkipReason)  # nothing prepared
        _cache(instance, "synthetic", "aaa")
        _trained(instance, "synthetic", "arch1", "aaa")
        assert isinstance(tick(), dg.SkipReason)  # up to date; arch2 was never trained: left alone
        _cache(instance, "synthetic", "bbb")  # new images
        assert _requested(tick()) == [("arch1|synthetic", "arch1|synthetic:bbb")]
        _trained(instance, "synthetic", "arch1", "bbb")  # the retraining ran
        assert isinstance(tick(), dg.SkipReason)
