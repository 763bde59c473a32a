"""The training asset: one generator per variant × architecture, tracked in MLflow."""

import getpass
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from flower_pipeline.ingest import TensorCacheRef
from flower_pipeline.registry import MLFLOW_FAILURES, MlflowTracking
from flower_pipeline.scaleout import GPU_STEP
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import TrainConfig, train

from .config import TrainingConfig, code_version, settings_from
from .ingest import OWNERS
from .partitions import training_partitions, variant_and_arch
from .resources import FlowerStorage
from .support import image_markdown, user_errors

WEBSERVER_ENV = "FLOWER_PIPELINE_DAGSTER_URL"  # e.g. http://127.0.0.1:3000


@dataclass(frozen=True)
class TrainedRun:
    variant: str
    arch: str
    path: str  # generator.pt, final_state.pt, samples/ …
    mlflow_run_id: str
    cache: TensorCacheRef  # the cache it was trained on: evaluation judges against exactly this one
    config: dict[str, Any]
    device: str
    iterations: int
    seconds: float


def dagster_link(run_id: str) -> dict[str, str]:
    """A link from the MLflow run to its Dagster run, where the webserver's address is known."""
    base = os.environ.get(WEBSERVER_ENV, "").rstrip("/")
    return {"dagster_run_url": f"{base}/runs/{run_id}"} if base else {}


def _running(context: dg.AssetExecutionContext, dagster_run_id: str) -> bool:
    """Whether the Dagster run that started an MLflow run of this partition still runs. This run's own
    earlier attempt (its Celery worker was killed and the step handed to another) does not: it is this step."""
    if dagster_run_id == context.run.run_id:
        return False
    run = context.instance.get_run_by_id(dagster_run_id) if dagster_run_id else None
    return run is not None and not run.is_finished


def training_dir(data_dir: Path, variant: str, arch: str, cache_hash: str, settings: TrainConfig) -> Path:
    """Where a training lives: keyed by cache content and settings, so a retry resumes its checkpoint."""
    fingerprint = hashlib.sha256(json.dumps([cache_hash, asdict(settings)], sort_keys=True).encode()).hexdigest()
    return data_dir / variant.rsplit("-", 2)[0] / "training" / variant / arch / fingerprint[:12]


@dg.asset(partitions_def=training_partitions, pool="gpu", group_name="training", kinds={"pytorch", "mlflow"},
          owners=OWNERS, code_version=code_version(TrainConfig), op_tags=GPU_STEP)
def trained_generator(context: dg.AssetExecutionContext, config: TrainingConfig, tensor_cache: TensorCacheRef,
                      storage: FlowerStorage, mlflow: MlflowTracking) -> TrainedRun:
    """A DCGAN generator trained on the variant's tensor cache, with its run in MLflow."""
    variant, arch = variant_and_arch(context.partition_key)
    with user_errors(mlflow):
        cache = TensorCache.load(tensor_cache.path)
        settings = settings_from(config, TrainConfig, arch=arch).resolved()
        out_dir = training_dir(storage.root, variant, arch, tensor_cache.content_hash, settings)
        ended = mlflow.end_orphaned_runs(str(context.partition_key), lambda run_id: _running(context, run_id))
        if ended:
            context.log.warning(f"marked {ended} MLflow run(s) of an earlier, crashed run KILLED")
        run_id = mlflow.start_run(f"{variant}-{arch}", {
            "dagster_run_id": context.run.run_id, "dagster_partition": str(context.partition_key),
            "dagster_job": context.run.job_name, "mlflow.source.name": f"dagster:{context.run.job_name}",
            "mlflow.source.type": "JOB", "mlflow.user": getpass.getuser(),
            "variant": variant, "arch": arch, "cache_hash": tensor_cache.content_hash,
            **dagster_link(context.run.run_id)})
        mlflow.log_dataset(run_id, variant, tensor_cache.content_hash, tensor_cache.path)
        mlflow.log_params(run_id, {**asdict(settings), "variant": variant, "cache_hash": tensor_cache.content_hash,
                                   "device": config.device, "train_images": int((~cache.holdout).sum())})

        def log(record: dict[str, float]) -> None:
            step = int(record["iteration"])
            context.log.info(
                f"iter {step}/{settings.iterations} {record['it_per_s']:.1f} it/s loss D {record['loss_d']:.3f} "
                f"G {record['loss_g']:.3f} D(x) {record['d_real']:.3f} D(G(z)) {record['d_fake']:.3f} "
                f"ETA {record['eta_s']:.0f} s")
            mlflow.log_metrics(run_id, {k: v for k, v in record.items() if k != "iteration"}, step)

        try:
            result = train(settings, cache, out_dir, device=config.device, on_log=log,
                           on_sample=lambda it, png: mlflow.log_image(run_id, png, "samples", it),
                           on_resume=lambda it: context.log.info(f"resumed from iteration {it} of a checkpoint"))
            for name in ("final_grid", "curves", "history", "generator"):
                if name in result.files:
                    mlflow.log_artifact(run_id, result.files[name])
            mlflow.log_artifact(run_id, out_dir / "samples", "samples")
            mlflow.set_tags(run_id, {"device": result.device, "cuda_graph": result.cuda_graph})
        except BaseException as err:
            if not isinstance(err, MLFLOW_FAILURES):  # with MLflow down, the next training marks this run KILLED
                mlflow.end_run(run_id, "FAILED")
            raise
        mlflow.end_run(run_id)

    final = result.final
    metadata: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(out_dir)), "mlflow_run": mlflow.link(run_id), "device": result.device,
        "cuda_graph": result.cuda_graph, "iterations": result.iterations, "seconds": round(result.seconds, 1),
        "iterations_per_second": round(result.iterations / max(result.seconds, 1e-9), 1),
        "loss_d": round(final["loss_d"], 4), "loss_g": round(final["loss_g"], 4),
        "d_real": round(final["d_real"], 4), "d_fake": round(final["d_fake"], 4),
        "cache_hash": tensor_cache.content_hash,
        "samples": image_markdown(result.files["final_grid"].read_bytes(), f"{variant} {arch} samples"),
    }
    if "curves" in result.files:
        metadata["curves"] = image_markdown(result.files["curves"].read_bytes(), "training curves")
    context.add_output_metadata(metadata)
    return TrainedRun(variant, arch, str(out_dir), run_id, tensor_cache, asdict(settings), result.device,
                      result.iterations, result.seconds)
