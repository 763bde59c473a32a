"""The training asset: one generator per dataset × architecture, tracked in MLflow."""

import hashlib
import json
from dataclasses import asdict, fields

import dagster as dg
from pydantic import Field

from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import TrainConfig, train

from .ingest import tensor_cache
from .mlflow_tracking import MlflowTracking
from .partitions import dataset_and_arch, training_partitions
from .resources import FlowerStorage
from .support import image_markdown, user_errors


class TrainingConfig(dg.Config):
    """The source's experiments as settings; unset means the architecture's default."""

    iterations: int = Field(20_000, description="Training steps (the source's 'epochs' are batches).")
    batch_size: int = Field(16, description="Images per step; the source found 16 best.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    optimizer: str = Field("adam", description="adam, rmsprop or sgd.")
    lr: float = Field(2e-4, description="Learning rate of both networks.")
    real_label: float | None = Field(None, description="Target for real images (arch1 0.9: one-sided smoothing).")
    fake_label: float | None = Field(None, description="Target for generated images (default 0.0; 0.2 with 0.8).")
    minibatch_discrimination: bool | None = Field(None, description="On by default for arch1 only.")
    minibatch_weight: float = Field(1.0, description="Scale of the minibatch features: 2.0 doubles them.")
    dropout: float | None = Field(None, description="Discriminator dropout (arch2 default 0.3, arch1 0).")
    latent_noise: str = Field("gaussian", description="gaussian or uniform latent noise.")
    latent_dim: int = Field(100, description="Size of the latent noise vector.")
    instance_noise: float = Field(0.1, description="Initial std of Gaussian noise on D's inputs (0: off).")
    instance_noise_decay: float = Field(0.5, description="Share of training over which that noise decays to 0.")
    features: int = Field(64, description="Network width.")
    seed: int = Field(0, description="Same config and seed give the same result on the same device.")
    log_every: int = Field(100, description="Steps between progress lines and metrics.")
    sample_every: int = Field(1000, description="Steps between fixed-noise sample grids.")
    checkpoint_seconds: float = Field(60.0, description="Seconds between checkpoints (0: at every log step).")


def training_stage(arch: str) -> str:
    """The manifest name of a dataset's latest finished training of `arch`."""
    return f"trained_generator-{arch}"


def train_config(arch: str, config: TrainingConfig) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(arch=arch, **{k: v for k, v in config.model_dump().items() if k in names}).resolved()


@dg.asset(partitions_def=training_partitions, deps=[tensor_cache], pool="gpu", group_name="training",
          kinds={"pytorch", "mlflow"})
def trained_generator(context: dg.AssetExecutionContext, config: TrainingConfig, storage: FlowerStorage,
                      mlflow: MlflowTracking) -> dg.MaterializeResult:
    """A DCGAN generator trained on the dataset's tensor cache, with its run in MLflow."""
    dataset, arch = dataset_and_arch(context)
    with user_errors():
        paths = storage.dataset(dataset)
        cache = TensorCache.load(paths.read_manifest("tensor_cache")["path"])
        settings = train_config(arch, config)
        fingerprint = hashlib.sha256(json.dumps([cache.content_hash, asdict(settings)], sort_keys=True).encode())
        out_dir = paths.root / "training" / arch / fingerprint.hexdigest()[:12]  # a retry resumes here

        run_id = mlflow.start_run(f"{dataset}-{arch}", {
            "dagster_run_id": context.run.run_id, "dagster_partition": str(context.partition_key),
            "dataset": dataset, "arch": arch, "cache_hash": cache.content_hash})
        mlflow.log_params(run_id, {**asdict(settings), "dataset": dataset, "cache_hash": cache.content_hash,
                           "device": config.device, "train_images": int((~cache.holdout).sum())})

        def log(record: dict[str, float]) -> None:
            step = int(record["iteration"])
            context.log.info(
                f"iter {step}/{settings.iterations} {record['it_per_s']:.1f} it/s loss D {record['loss_d']:.3f} "
                f"G {record['loss_g']:.3f} D(x) {record['d_real']:.3f} D(G(z)) {record['d_fake']:.3f} "
                f"ETA {record['eta_s']:.0f} s")
            mlflow.log_metrics(run_id, {k: v for k, v in record.items() if k != "iteration"}, step)

        try:
            result = train(settings, cache, out_dir, device=config.device, on_log=log)
        except BaseException:
            mlflow.end_run(run_id, "FAILED")
            raise
    for name in ("final_grid", "curves", "history", "generator"):
        if name in result.files:
            mlflow.log_artifact(run_id, result.files[name])
    mlflow.log_artifact(run_id, out_dir / "samples", "samples")
    mlflow.set_tags(run_id, {"device": result.device, "cuda_graph": result.cuda_graph})
    mlflow.end_run(run_id)
    paths.write_manifest(training_stage(arch), {  # what evaluation and registration build on
        "path": str(out_dir), "mlflow_run_id": run_id, "dataset": dataset, "arch": arch,
        "cache_path": str(cache.path), "cache_hash": cache.content_hash, "config": asdict(settings),
        "device": result.device, "iterations": result.iterations, "seconds": result.seconds,
    })

    final = result.final
    metadata: dict[str, object] = {
        "path": dg.MetadataValue.path(str(out_dir)), "mlflow_run_id": run_id, "device": result.device,
        "cuda_graph": result.cuda_graph, "iterations": result.iterations, "seconds": round(result.seconds, 1),
        "iterations_per_second": round(result.iterations / max(result.seconds, 1e-9), 1),
        "loss_d": round(final["loss_d"], 4), "loss_g": round(final["loss_g"], 4),
        "d_real": round(final["d_real"], 4), "d_fake": round(final["d_fake"], 4),
        "cache_hash": cache.content_hash,
        "samples": image_markdown(result.files["final_grid"].read_bytes(), f"{dataset} {arch} samples"),
    }
    if "curves" in result.files:
        metadata["curves"] = image_markdown(result.files["curves"].read_bytes(), "training curves")
    return dg.MaterializeResult(metadata=metadata)
