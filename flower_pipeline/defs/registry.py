"""The registration asset: every evaluated generator becomes a registered MLflow model version.

`latest` always names the new version (MLflow reserves that alias for the
newest version: models:/NAME/latest); `champion` moves only when the
version passed the quality gate and beats the current champion on FID (or,
where either lacks FID, on the colour distance; see
`flower_pipeline.evaluation.promotion_decision`).
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from flower_pipeline import code_version
from flower_pipeline.evaluation import promotion_decision
from flower_pipeline.training import load_trained

from .evaluation import HEADLINE, evaluation_stage, generator_evaluation
from .mlflow_tracking import MlflowTracking
from .partitions import dataset_and_arch, training_partitions
from .resources import FlowerStorage
from .support import user_errors

METRIC_TAG = "eval."  # version tags carrying evaluation metrics, read back to compare with the champion


def model_name(dataset: str, arch: str) -> str:
    return f"{dataset}-{arch}"


def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    return {k.removeprefix(METRIC_TAG): float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)}


@dg.asset(partitions_def=training_partitions, deps=[generator_evaluation], group_name="registry", kinds={"mlflow"})
def registered_generator(context: dg.AssetExecutionContext, storage: FlowerStorage,
                         mlflow: MlflowTracking) -> dg.MaterializeResult:
    """The evaluated generator as a version of the registered model `<dataset>-<arch>`, aliased latest/champion."""
    dataset, arch = dataset_and_arch(context)
    name = model_name(dataset, arch)
    with user_errors():
        evaluation = storage.dataset(dataset).read_manifest(evaluation_stage(arch))
        training = evaluation["training"]
        metrics = {k: v for k, v in evaluation["metrics"].items() if k in HEADLINE}
        run_id = training["mlflow_run_id"]
        version = mlflow.version_of_run(name, run_id)
        if version is None:  # a retried step finds its version instead of making another
            model = mlflow.log_generator(run_id, load_trained(Path(training["path"])).generator)
            code = code_version()
            version = mlflow.register(name, run_id, model, _version_tags(training, metrics, evaluation, code),
                                      _description(training, metrics, evaluation, code))
        else:
            context.log.info(f"{name} version {version.version} was already registered from run {run_id}")

        champion = mlflow.version_by_alias(name, "champion")
        if champion is not None and champion.version == version.version:
            promoted, reason = True, "already the champion"
        else:
            promoted, reason = promotion_decision(evaluation["gate_passed"], evaluation["gate_reason"], metrics,
                                                  metrics_from_tags(champion.tags) if champion else None)
            if promoted:
                mlflow.set_alias(name, "champion", version.version)
        decision = "champion" if promoted else "not promoted"
        champion_version = version.version if promoted else (champion.version if champion else None)
        mlflow.set_version_tags(name, version.version, {"promotion": decision, "promotion_reason": reason})
        mlflow.set_tags(run_id, {"registered_model": name, "registered_version": version.version,
                                 "promotion": decision, "promotion_reason": reason})
    context.log.info(f"{name} v{version.version}: {decision} ({reason})")
    return dg.MaterializeResult(metadata={
        "model": name, "version": int(version.version), "promotion": decision, "reason": reason,
        "champion_version": int(champion_version) if champion_version is not None else None,
        "model_uri": f"models:/{name}/{version.version}", "mlflow_run_id": run_id,
        "tracking_uri": mlflow.uri,
    })


def _version_tags(training: dict[str, Any], metrics: dict[str, float], evaluation: dict[str, Any],
                  code: str) -> dict[str, str]:
    return {
        "dataset": training["dataset"], "arch": training["arch"], "cache_hash": training["cache_hash"],
        "config": json.dumps(training["config"], sort_keys=True), "code_version": code,
        "iterations": str(training["iterations"]), "quality_gate": evaluation["gate_reason"],
        **{f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items()},
    }


def _description(training: dict[str, Any], metrics: dict[str, float], evaluation: dict[str, Any], code: str) -> str:
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("fid", "kid_mean", "d_real_holdout_mean", "d_fake_mean",
                                                        "colour_coverage", "near_copy_share_pixels") if k in metrics)
    missing = "; ".join(f"{k} unavailable: {why}" for k, why in evaluation["unavailable"].items())
    return (f"{training['arch']} generator trained {training['iterations']} iterations on {training['dataset']} "
            f"(cache {training['cache_hash'][:12]}, code {code}). {shown}."
            + (f" {missing}." if missing else ""))
