"""Unattended retraining: a weekly schedule, a sensor for changed data, failure alerts and champion freshness.

Schedule and sensor request ordinary runs of `retrain_generators` (train →
evaluate → register), one per variant × architecture partition, with the
settings of the retraining profile (`flower_pipeline/retraining.yaml`, or the
file $FLOWER_PIPELINE_RETRAINING names). They never request a partition whose
last run is still queued or running, and the sensor asks again after a failed
or cancelled run while the change is unhandled. Both start stopped, as
Dagster's schedules and sensors do: turn them on in the UI (Automation) with
the daemon running (`dg dev` or `dagster dev` runs it).
"""

import datetime
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg

from flower_pipeline.environment import PROFILE_ENV, WEBHOOK_ENV, retrain_cron
from flower_pipeline.errors import PipelineError, redact
from flower_pipeline.evaluation import EvalSettings, resolve_inception_weights
from flower_pipeline.models import ARCHITECTURES
from flower_pipeline.registry import model_name
from flower_pipeline.scaleout.heartbeat import reap_dead_runs
from flower_pipeline.settings import read_settings_file
from flower_pipeline.training import TrainConfig

from .config import EvaluationConfig, TrainingConfig
from .data_assets import tensor_cache
from .generator_assets import generator_evaluation, registered_generator, trained_generator
from .partitions import known_variants, training_key, variant_and_arch
from .resources import MlflowTracking

RETRAIN_CRON = retrain_cron()  # read when the code location loads: Dagster needs it then
DEFAULT_PROFILE = Path(__file__).resolve().parents[1] / "retraining.yaml"
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
HASH_TAG = "flower_pipeline/cache_hash"

retrain_job = dg.define_asset_job(
    "retrain_generators",
    selection=dg.AssetSelection.assets(trained_generator, generator_evaluation, registered_generator),
    description="Train, evaluate and register one variant × architecture partition.",
)


def retraining_run_config() -> dict[str, Any]:
    """The retraining profile as run config, checked as a run would check it (known settings, each in its range)
    at every tick, so a bad value never rides on the scheduled runs."""
    path = Path(os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE)
    profile = read_settings_file(path, "retraining profile") or {}
    if not isinstance(profile, dict) or not all(isinstance(profile.get(k) or {}, dict)
                                                for k in ("training", "evaluation")):
        raise PipelineError(f"{path} must map training: and evaluation: to settings")
    unknown = sorted(map(str, set(profile) - {"training", "evaluation"}))
    if unknown:
        raise PipelineError(f"{path}: unknown section {unknown[0]!r}; sections: training, evaluation")
    ops = {}
    for section, node, config, core in (("training", "trained_generator", TrainingConfig, TrainConfig),
                                        ("evaluation", "generator_evaluation", EvaluationConfig, EvalSettings)):
        values = dict(profile.get(section) or {})
        unknown = sorted(set(values) - set(config.model_fields))
        if unknown:
            raise PipelineError(f"{path}: unknown {section} setting {unknown[0]!r}")
        try:
            core(**{k: v for k, v in values.items() if k != "device"})
        except (PipelineError, TypeError) as err:
            raise PipelineError(f"{path}, {section}: {err}") from None
        weights = values.get("inception_weights")
        if weights not in (None, "auto", "off"):  # a path: the file, checked now rather than at every run
            found, why = resolve_inception_weights(str(weights), Path())  # a path: no cache involved
            if found is None:
                raise PipelineError(f"{path}, {section}: {why}")
        ops[node] = {"config": values}
    return {"ops": ops}


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


def busy_partitions(instance: dg.DagsterInstance) -> set[str]:
    """Partitions of `retrain_generators` with a run queued or running: requesting them again piles up."""
    records = instance.get_run_records(dg.RunsFilter(job_name=retrain_job.name, statuses=ACTIVE))
    return {r.dagster_run.tags.get("dagster/partition", "") for r in records}


def failed_attempts(instance: dg.DagsterInstance, partition: str, cache_hash: str) -> int:
    """How many sensor runs for this partition and cache content ended failed or cancelled."""
    records = instance.get_run_records(dg.RunsFilter(
        job_name=retrain_job.name, statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
        tags={"dagster/partition": partition, HASH_TAG: cache_hash}))
    return len(records)


def _requests(wanted: list[tuple[str, str]], instance: dg.DagsterInstance, run_key: Any,
              tags: Any = lambda key: {}) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests with the profile's settings for the wanted (partition, reason) pairs, less the busy ones."""
    busy, config = busy_partitions(instance), retraining_run_config()
    requests, skipped = [], []
    for key, _ in wanted:
        if key in busy:
            skipped.append(f"{key}: its last run is still queued or running")
            continue
        requests.append(dg.RunRequest(run_key=run_key(key), partition_key=key, run_config=config, tags=tags(key)))
    return requests, skipped


@dg.schedule(job=retrain_job, cron_schedule=RETRAIN_CRON, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Retrain, evaluate and register every architecture of every prepared variant with the "
                         "retraining profile's settings (cron: $FLOWER_PIPELINE_RETRAIN_CRON, default weekly). Off "
                         "until turned on here, with the daemon running (`dg dev` runs it).")
def weekly_retraining(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    variants = sorted(cache_hashes(context.instance))
    if not variants:
        return dg.SkipReason("no variant has a tensor cache yet; prepare one first")
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M") if context.scheduled_execution_time else ""
    wanted = [(str(training_key(v, a)), "weekly") for v in variants for a in ARCHITECTURES]
    requests, skipped = _requests(wanted, context.instance, lambda key: f"{tick}:{key}")
    for reason in skipped:
        context.log.info(f"skipped {reason}")
    return requests or dg.SkipReason("; ".join(skipped))


@dg.sensor(job=retrain_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Retrain a trained variant × architecture when its tensor cache content changes. Off until "
                       "turned on here, with the daemon running (`dg dev` runs it).")
def retrain_on_new_data(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    wanted, hashes = [], {}
    for variant, cache_hash in cache_hashes(context.instance).items():
        for arch in ARCHITECTURES:
            key = str(training_key(variant, arch))
            trained = latest_metadata(context.instance, trained_generator, key)
            # Never-trained partitions are left to the user: the sensor reacts to changed data only.
            if trained is not None and trained.get("cache_hash") != cache_hash:
                wanted.append((key, cache_hash))
                hashes[key] = cache_hash
    # One request per partition and content, made again (a new key) after each failed or cancelled attempt.
    requests, skipped = _requests(
        wanted, context.instance,
        lambda key: f"{key}:{hashes[key]}:{failed_attempts(context.instance, key, hashes[key])}",
        lambda key: {HASH_TAG: hashes[key]})
    if not requests:
        return dg.SkipReason("; ".join(skipped) or "every trained generator is up to date with its tensor cache")
    return dg.SensorResult(run_requests=requests)


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Marks runs failed whose heartbeat stopped (their driver killed, their machine lost, on any "
                       "machine) and frees the gpu slot they held, so the queue moves on.")
def dead_run_reaper(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    reaped = reap_dead_runs(context.instance)
    return dg.SkipReason(f"marked failed: {', '.join(reaped)}" if reaped else "every started run is beating")


@dg.run_failure_sensor(monitored_jobs=[retrain_job], default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Every failed retraining run: a log line, a tag on its registered model, its "
                                   "MLflow runs marked failed, and a POST to $FLOWER_PIPELINE_ALERT_WEBHOOK if set.")
def retraining_failed(context: dg.RunFailureSensorContext, mlflow: MlflowTracking) -> None:
    run = context.dagster_run
    partition = run.tags.get("dagster/partition", "")
    message = context.failure_event.message or "failed"
    context.log.error(f"retraining {partition} failed (run {run.run_id}): {message}")
    alert = {"run_id": run.run_id, "job": run.job_name, "partition": partition, "message": message,
             "at": datetime.datetime.now(datetime.UTC).isoformat()}
    try:
        mlflow.tracker.fail_runs_of(run.run_id)
        if partition:
            mlflow.tracker.tag_model(model_name(*variant_and_arch(partition)), "last_retraining_failure",
                             json.dumps(alert))
    except Exception as err:  # the alert below must go out even when MLflow is what failed
        context.log.warning(f"could not record the failure in MLflow: {str(err).splitlines()[0]}")
    if url := os.environ.get(WEBHOOK_ENV):
        failure = post_alert(url, alert)
        if failure:
            context.log.warning(f"the failure webhook {redact(url)} was not reached: {failure}")


WEBHOOK_DEADLINE = 15.0  # seconds for the whole request: a server that trickles bytes cannot hold the sensor


def post_alert(url: str, alert: dict[str, Any], deadline: float = WEBHOOK_DEADLINE) -> str | None:
    """POST the alert as JSON to an http(s) URL, redirects not followed, within `deadline` seconds in all;
    None when the server took it, else why not, in one line. Never raises: the sensor goes on."""
    import threading

    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return f"only http:// and https:// webhooks are supported, not {redact(url).split(':', 1)[0]}:"

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None  # a 3xx is then an error, reported below

    outcome: list[str | None] = []

    def post() -> None:
        request = urllib.request.Request(url, json.dumps(alert).encode(), {"Content-Type": "application/json"})
        try:
            urllib.request.build_opener(NoRedirects).open(request, timeout=deadline).close()
            outcome.append(None)
        except urllib.error.HTTPError as err:
            outcome.append(f"HTTP {err.code} {err.reason}")
        except Exception as err:  # refused, unresolvable, TLS, reset: one line whatever it is
            outcome.append(f"{type(err).__name__}: {str(getattr(err, 'reason', err)).splitlines()[0][:200]}")

    sender = threading.Thread(target=post, daemon=True, name="failure-webhook")
    sender.start()
    sender.join(deadline)
    return outcome[0] if outcome else f"no complete answer within {deadline:.0f} s"

