"""The evaluation asset: the source's D scores, FID/KID, colour collapse and memorization per trained generator."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import torch

from flower_pipeline.evaluation import (
    EvalSettings,
    FeatureFn,
    evaluate,
    inception_features,
    quality_gate,
    resolve_inception_weights,
    scores_in_range,
)
from flower_pipeline.features import flower_features, load_feature_network
from flower_pipeline.registry import MlflowTracking
from flower_pipeline.scaleout import GPU_STEP
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import pick_device

from .config import EvaluationConfig, code_version, settings_from
from .features import FeatureNetworkRef
from .ingest import OWNERS
from .partitions import training_partitions
from .resources import pick
from .support import image_markdown, user_errors
from .training import TrainedRun

# Shown in the UI and logged to MLflow; everything else stays in metrics.json.
HEADLINE = ("d_real_train_mean", "d_real_holdout_mean", "d_real_gap", "d_fake_mean", "d_real_holdout_std",
            "d_fake_std", "fd_flowers", "kd_flowers", "precision", "recall", "fid", "kid_mean", "kid_std",
            "colour_distance", "colour_coverage", "generated_colour_clusters", "colour_clusters",
            "near_copy_share_pixels", "memorization_ratio_pixels", "near_copy_share_inception",
            "memorization_ratio_inception")
INCEPTION_ENV = "FLOWER_PIPELINE_INCEPTION_WEIGHTS"


def inception_for(settings: EvalSettings, device: torch.device) -> tuple[FeatureFn | None, str]:
    """Inception features per the `inception_weights` setting ($FLOWER_PIPELINE_INCEPTION_WEIGHTS stands for
    "auto"), or None and the reason FID and KID are unavailable."""
    setting = os.environ.get(INCEPTION_ENV, "auto") if settings.inception_weights == "auto" \
        else settings.inception_weights
    weights, reason = resolve_inception_weights(setting, Path(torch.hub.get_dir()) / "checkpoints")
    return (inception_features(weights, device), "") if weights else (None, reason)


@dataclass(frozen=True)
class Evaluation:
    partition: str  # the training partition, arch1|flowers17-color-64
    training: TrainedRun
    feature_network: str  # the id of the feature network fd_flowers etc. were measured with
    metrics: dict[str, float]
    unavailable: dict[str, str]  # metric → why it was not measured
    gate_passed: bool
    gate_reason: str
    files: dict[str, str]


@dg.asset(partitions_def=training_partitions, group_name="evaluation", kinds={"pytorch", "mlflow"}, owners=OWNERS,
          code_version=code_version(EvalSettings), pool="gpu", op_tags=GPU_STEP)
def generator_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, trained_generator: TrainedRun,
                         feature_network: FeatureNetworkRef, mlflow: MlflowTracking) -> Evaluation:
    """The trained generator judged on its own tensor cache: D scores, FID/KID, colour collapse, memorization."""
    training = trained_generator
    with user_errors(mlflow):
        settings = settings_from(config, EvalSettings)
        cache = TensorCache.load(training.cache.path)  # the images it was trained on, not a newer cache
        device = pick_device(config.device)
        inception, reason = inception_for(settings, device)
        if inception is None:
            context.log.warning(f"FID and KID unavailable: {reason}")
        same_cache = feature_network.network_id.startswith(training.cache.content_hash[:16])
        if feature_network.path is not None and same_cache:
            network = load_feature_network(Path(feature_network.path), device)
            flowers, no_flowers = partial(flower_features, network, device=device), ""
        else:
            flowers, no_flowers = None, feature_network.unavailable or (
                f"the feature network was trained on another cache ({feature_network.network_id}); prepare "
                f"{training.variant} again")
        result = evaluate(Path(training.path), cache, settings, device=device,
                          features=inception, no_features_reason=reason, flowers=flowers,
                          no_flowers_reason=no_flowers)
        metrics = result.metrics
        gate_passed, gate_reason = quality_gate(metrics, settings)
        context.log.info(f"quality gate {gate_reason}")
        # MLflow first: a failure here leaves no evaluation record, so nothing half-logged gets registered.
        run_id = training.mlflow_run_id
        mlflow.log_metrics(run_id, {f"eval_{k}": metrics[k] for k in HEADLINE if k in metrics}, training.iterations)
        mlflow.log_artifact(run_id, result.files["metrics"].parent, "evaluation")
        for picture in ("samples", "timeline", "nearest_pairs", "colours"):  # images in MLflow's own viewer
            if picture in result.files:
                mlflow.log_image(run_id, result.files[picture], f"evaluation_{picture}", training.iterations)
        mlflow.set_tags(run_id, {"quality_gate": gate_reason,
                                 **{f"unavailable_{k}": v for k, v in result.unavailable.items()}})

    shown = {k: round(metrics[k], 4) for k in HEADLINE if k in metrics}
    metadata: dict[str, Any] = {
        **shown, "samples_scored": settings.samples, "mlflow_run": mlflow.link(run_id), "quality_gate": gate_reason,
        "path": dg.MetadataValue.path(str(result.files["metrics"].parent)),
        "headline": dg.MetadataValue.md(_table(shown)),
    }
    for key, status in (("fid", "fid_status"), ("fd_flowers", "flowers_status")):
        if key in result.unavailable:
            metadata[status] = f"unavailable: {result.unavailable[key]}"
    for name, alt in (("samples", "generated samples"), ("timeline", "fixed-noise samples during training"),
                      ("nearest_pairs", "closest samples (top) and their nearest training images"),
                      ("colours", "dominant colours: real (top) vs generated")):
        if name in result.files:
            metadata[name] = image_markdown(result.files[name].read_bytes(), alt)
    context.add_output_metadata(metadata)
    return Evaluation(str(context.partition_key), training, feature_network.network_id, metrics, result.unavailable,
                      gate_passed, gate_reason, {k: str(v) for k, v in result.files.items()})


def _table(metrics: dict[str, float]) -> str:
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items())


def _evaluation_check(name: str, description: str, judge: Callable[[Evaluation], tuple[bool, str]],
                      severity: dg.AssetCheckSeverity) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=generator_evaluation, name=name, description=description)
    def evaluation_check(context: dg.AssetCheckExecutionContext, generator_evaluation: Any) -> dg.AssetCheckResult:
        with user_errors():
            passed, reason = judge(pick(generator_evaluation, str(context.partition_key), "partition"))
        return dg.AssetCheckResult(passed=passed, description=reason, severity=severity)

    return evaluation_check


evaluation_checks = [
    _evaluation_check("scores_in_range", "Mean D(x) on training and held-out images and mean D(G(z)), scored as D "
                      "was trained, are finite and strictly between 0 and 1.",
                      lambda evaluation: scores_in_range(evaluation.metrics), dg.AssetCheckSeverity.ERROR),
    _evaluation_check("quality_gate", "FID (when measured), fd_flowers (when limited), recall, colour coverage and "
                      "near-copy share within the configured limits; a version that fails is registered but never "
                      "promoted to champion.", lambda evaluation: (evaluation.gate_passed, evaluation.gate_reason),
                      dg.AssetCheckSeverity.WARN),
]
