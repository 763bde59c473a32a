"""The evaluation asset: the source's D scores, FID/KID, colour collapse and memorization per trained generator."""

import os
from pathlib import Path

import dagster as dg
import torch
from pydantic import Field

from flower_pipeline.evaluation import (
    EvalSettings,
    QualityGate,
    evaluate,
    inception_features,
    resolve_inception_weights,
    scores_in_range,
)
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import pick_device

from .mlflow_tracking import MlflowTracking
from .partitions import dataset_and_arch, training_partitions
from .resources import FlowerStorage
from .support import image_markdown, user_errors
from .training import trained_generator, training_stage

# Shown in the UI and logged to MLflow; everything else stays in metrics.json.
HEADLINE = ("d_real_holdout_mean", "d_real_holdout_std", "d_real_train_mean", "d_real_gap", "d_fake_mean",
            "d_fake_std", "fid", "kid_mean", "kid_std", "colour_distance", "colour_coverage",
            "generated_colour_clusters", "colour_clusters", "near_copy_share_pixels", "memorization_ratio_pixels",
            "near_copy_share_inception", "memorization_ratio_inception")


def evaluation_stage(arch: str) -> str:
    return f"generator_evaluation-{arch}"


class EvaluationConfig(dg.Config):
    samples: int = Field(1000, description="Generated images scored and compared with the real ones.")
    seed: int = Field(0, description="Seed of the generated images.")
    kid_subset_size: int = Field(1000, description="KID subset size; lowered to the smaller set's size if needed.")
    inception_weights: str = Field(
        os.environ.get("FLOWER_PIPELINE_INCEPTION_WEIGHTS", "auto"),
        description="auto (torch hub cache, else one download), off, or a local path to "
                    "weights-inception-2015-12-05-6726825d.pth. Without it FID and KID are reported unavailable.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    max_fid: float | None = Field(150.0, description="Quality gate: highest FID a champion may have (when measured).")
    min_colour_coverage: float = Field(0.5, description="Quality gate: least share of real colour clusters covered.")
    max_near_copy_share: float = Field(0.5, description="Quality gate: most samples that may be near-copies.")

    def gate(self) -> QualityGate:
        return QualityGate(self.max_fid, self.min_colour_coverage, self.max_near_copy_share)


@dg.asset(
    partitions_def=training_partitions, deps=[trained_generator], group_name="evaluation", kinds={"pytorch", "mlflow"},
    check_specs=[
        dg.AssetCheckSpec("scores_in_range", asset="generator_evaluation",
                          description="Mean D(x) and D(G(z)) are finite and strictly between 0 and 1."),
        dg.AssetCheckSpec("quality_gate", asset="generator_evaluation",
                          description="FID (when measured), colour coverage and near-copy share within the "
                                      "configured limits; a version that fails is never promoted to champion."),
    ],
)
def generator_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, storage: FlowerStorage,
                         mlflow: MlflowTracking) -> dg.MaterializeResult:
    """The latest trained generator judged on held-out images: D scores, FID/KID, colour collapse, memorization."""
    dataset, arch = dataset_and_arch(context)
    with user_errors():
        paths = storage.dataset(dataset)
        training = paths.read_manifest(training_stage(arch))
        cache = TensorCache.load(training["cache_path"])  # the images it was trained on, not a newer cache
        device = pick_device(config.device)
        weights, reason = resolve_inception_weights(config.inception_weights,
                                                    Path(torch.hub.get_dir()) / "checkpoints")
        if weights is None:
            context.log.warning(f"FID and KID unavailable: {reason}")
        result = evaluate(
            Path(training["path"]), cache,
            EvalSettings(samples=config.samples, seed=config.seed, kid_subset_size=config.kid_subset_size),
            device=device, features=inception_features(weights, device) if weights else None,
            no_features_reason=reason)
    metrics = result.metrics
    gate_passed, gate_reason = config.gate().check(metrics)
    scores_ok, scores_reason = scores_in_range(metrics)
    context.log.info(f"quality gate {gate_reason}")
    paths.write_manifest(evaluation_stage(arch), {
        "metrics": metrics, "unavailable": result.unavailable, "gate_passed": gate_passed,
        "gate_reason": gate_reason, "training": training, "files": {k: str(v) for k, v in result.files.items()},
    })

    run_id = training["mlflow_run_id"]
    mlflow.log_metrics(run_id, {f"eval_{k}": metrics[k] for k in HEADLINE if k in metrics}, training["iterations"])
    mlflow.log_artifact(run_id, result.files["metrics"].parent, "evaluation")
    mlflow.set_tags(run_id, {"quality_gate": gate_reason, **{f"unavailable_{k}": v
                                                             for k, v in result.unavailable.items()}})

    metadata: dict[str, object] = {k: round(metrics[k], 4) for k in HEADLINE if k in metrics}
    metadata.update({k: f"unavailable: {why}" for k, why in result.unavailable.items() if k in HEADLINE})
    metadata.update({"samples_scored": config.samples, "mlflow_run_id": run_id, "quality_gate": gate_reason,
                     "path": dg.MetadataValue.path(str(result.files["metrics"].parent))})
    for name, alt in (("samples", "generated samples"), ("timeline", "fixed-noise samples during training"),
                      ("nearest_pairs", "closest samples (top) and their nearest training images"),
                      ("colours", "dominant colours: real (top) vs generated")):
        if name in result.files:
            metadata[name] = image_markdown(result.files[name].read_bytes(), alt)
    return dg.MaterializeResult(metadata=metadata, check_results=[
        dg.AssetCheckResult(check_name="scores_in_range", passed=scores_ok, description=scores_reason),
        dg.AssetCheckResult(check_name="quality_gate", passed=gate_passed, description=gate_reason,
                            severity=dg.AssetCheckSeverity.WARN),
    ])
