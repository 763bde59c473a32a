"""Retraining: a weekly schedule and a sensor that retrains when a variant's tensor cache changes.

Both request ordinary runs of `retrain_generators` (train → evaluate →
register) one per variant × architecture partition, so they appear in the UI
like any run and queue in the `gpu` pool. Both start stopped, as Dagster's
schedules and sensors do: turn them on in the UI (Automation) with
`dagster dev` running.
"""

import os

import dagster as dg

from flower_pipeline.models import ARCHITECTURES

from .evaluation import generator_evaluation
from .ingest import tensor_cache
from .partitions import known_variants, training_key
from .registry import registered_generator
from .training import trained_generator

RETRAIN_CRON = os.environ.get("FLOWER_PIPELINE_RETRAIN_CRON", "0 3 * * 1")  # Mondays 03:00 UTC

retrain_job = dg.define_asset_job(
    "retrain_generators",
    selection=dg.AssetSelection.assets(trained_generator, generator_evaluation, registered_generator),
    description="Train, evaluate and register one variant × architecture partition.",
)


def latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, partition: str) -> dict | None:
    """The metadata of the asset partition's latest materialization, or None if it has none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[partition]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def cache_hashes(instance: dg.DagsterInstance) -> dict[str, str]:
    """The current tensor-cache content hash of every variant that has one (the full hash training records)."""
    hashes = {}
    for variant in known_variants(instance):
        metadata = latest_metadata(instance, tensor_cache, variant)
        if metadata and "content_hash" in metadata:
            hashes[variant] = metadata["content_hash"]
    return hashes


@dg.schedule(job=retrain_job, cron_schedule=RETRAIN_CRON, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Retrain, evaluate and register every architecture of every prepared variant "
                         "(cron: $FLOWER_PIPELINE_RETRAIN_CRON, default weekly).")
def weekly_retraining(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    # A static × static multi-partition gives no schedule of its own: one run request per partition key.
    variants = sorted(cache_hashes(context.instance))
    if not variants:
        return dg.SkipReason("no variant has a tensor cache yet; prepare one first")
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M") if context.scheduled_execution_time else ""
    return [dg.RunRequest(run_key=f"{tick}:{training_key(variant, arch)}", partition_key=training_key(variant, arch))
            for variant in variants for arch in ARCHITECTURES]


@dg.sensor(job=retrain_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Retrain a trained variant × architecture when its tensor cache content changes.")
def retrain_on_new_data(context: dg.SensorEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    requests = []
    for variant, cache_hash in cache_hashes(context.instance).items():
        for arch in ARCHITECTURES:
            key = training_key(variant, arch)
            trained = latest_metadata(context.instance, trained_generator, str(key))
            # Never-trained partitions are left to the user: the sensor reacts to changed data only.
            if trained is not None and trained.get("cache_hash") != cache_hash:
                # The run key makes this one request per partition and cache content, however many ticks see it.
                requests.append(dg.RunRequest(run_key=f"{key}:{cache_hash}", partition_key=key))
    return requests or dg.SkipReason("every trained generator is up to date with its tensor cache")
