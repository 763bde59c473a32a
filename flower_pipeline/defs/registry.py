"""The registration asset: every evaluated generator becomes a version of the registered model `<variant>-<arch>`."""

import json
from datetime import timedelta
from pathlib import Path

import dagster as dg

from flower_pipeline import __version__, code_version
from flower_pipeline.registry import FEATURE_NETWORK, METRIC_TAG, MlflowTracking, RegisteredVersion, model_name

from .evaluation import HEADLINE, Evaluation
from .ingest import OWNERS
from .partitions import training_partitions
from .resources import storage
from .support import user_errors


@dg.asset(partitions_def=training_partitions, group_name="registry", kinds={"mlflow"}, owners=OWNERS,
          code_version=__version__,
          # A champion older than a week and a day (one missed weekly retraining) shows as late in the UI.
          freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7)))
def registered_generator(context: dg.AssetExecutionContext, generator_evaluation: Evaluation,
                         mlflow: MlflowTracking) -> RegisteredVersion:
    """The evaluated generator as a version of `<variant>-<arch>`; `champion` moves only to a better one."""
    evaluation, training = generator_evaluation, generator_evaluation.training
    name, run_id = model_name(training.variant, training.arch), training.mlflow_run_id
    metrics = {k: v for k, v in evaluation.metrics.items() if k in HEADLINE}
    code = code_version()
    with user_errors(mlflow):
        registered = mlflow.register_generator(
            name, run_id, Path(training.path), gate=(evaluation.gate_passed, evaluation.gate_reason),
            metrics=metrics, feature_network=evaluation.feature_network,
            tags=_version_tags(evaluation, metrics, code), description=_description(evaluation, metrics, code),
            log=context.log.info)
    decision, reason, version = registered.promotion, registered.reason, registered.version
    context.add_output_metadata({
        "model": name, "version": version, "promotion": decision, "reason": reason,
        "champion_version": registered.champion_version, "model_version": mlflow.link(model=name, version=version),
        "mlflow_run": mlflow.link(run_id), "tracking_uri": mlflow.uri,
    })
    return registered


def _version_tags(evaluation: Evaluation, metrics: dict[str, float], code: str) -> dict[str, str]:
    training = evaluation.training
    return {
        "variant": training.variant, "arch": training.arch, "cache_hash": training.cache.content_hash,
        "config": json.dumps(training.config, sort_keys=True), "code_version": code,
        "iterations": str(training.iterations), "quality_gate": evaluation.gate_reason,
        FEATURE_NETWORK: evaluation.feature_network,
        **{f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items()},
    }


def _description(evaluation: Evaluation, metrics: dict[str, float], code: str) -> str:
    training = evaluation.training
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("fid", "kid_mean", "fd_flowers", "recall", "d_real_train_mean",
                                                        "d_real_holdout_mean", "d_fake_mean", "colour_coverage",
                                                        "near_copy_share_pixels") if k in metrics)
    missing = sorted({f"{'FID and KID' if k in ('fid', 'kid_mean') else 'fd_flowers and the rest'} unavailable: "
                      f"{why}" for k, why in evaluation.unavailable.items() if k in ("fid", "fd_flowers")})
    return (f"{training.arch} generator trained {training.iterations} iterations on {training.variant} "
            f"(cache {training.cache.content_hash[:12]}, code {code}). {shown}."
            + "".join(f" {m}." for m in missing))  # each reason once


@dg.definitions
def registry_resources() -> dg.Definitions:
    return dg.Definitions(resources={"mlflow": MlflowTracking(storage=storage)})
