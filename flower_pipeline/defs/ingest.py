"""Ingest assets, one partition per dataset: raw_archive → extracted_images → resized_images → tensor_cache."""


import dagster as dg
import numpy as np
from pydantic import Field

from flower_pipeline import ingest
from flower_pipeline.catalog import get_dataset
from flower_pipeline.download import Checksum
from flower_pipeline.imaging import ResizeSpec
from flower_pipeline.plots import grid_png
from flower_pipeline.tensor_cache import TensorCache

from .partitions import dataset_partitions
from .resources import FlowerStorage
from .support import image_markdown, progress, user_errors

GROUP = "ingest"


class RawArchiveConfig(dg.Config):
    source: str | None = Field(None, description="A mirror URL, a local archive or (custom only) a folder of "
                                                 "images; default: the official URL.")
    sha256: str | None = Field(None, description="Expected sha256 of the source.")
    md5: str | None = Field(None, description="Expected md5 of the source.")


class ResizeConfig(dg.Config):
    size: int = Field(64, description="Image side in pixels.")
    mode: str = Field("color", description="color or gray (black-and-white).")
    crop: str = Field("center", description="center (square crop), pad (letterbox) or stretch.")


class TensorCacheConfig(dg.Config):
    holdout_fraction: float = Field(0.1, description="Share of each class held out of training, for evaluation.")


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, kinds={"http"})
def raw_archive(context: dg.AssetExecutionContext, config: RawArchiveConfig,
                storage: FlowerStorage) -> dg.MaterializeResult:
    """The dataset's archive, downloaded (resumably) and checksum-verified, or a local file."""
    spec = get_dataset(context.partition_key)
    with user_errors(), progress(context, f"download {spec.name}", "B", scale=1024) as report:
        manifest = ingest.fetch_raw_archive(
            storage.dataset(spec.name), spec, source=config.source,
            checksum=Checksum.parse(config.sha256, config.md5), progress=report)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(manifest["path"]), "source": manifest["source"],
        "kind": manifest["kind"], "sha256": manifest["sha256"], "bytes": manifest["size"],
        "downloaded": manifest["downloaded"], "seconds": round(manifest["seconds"], 2),
    })


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, deps=[raw_archive])
def extracted_images(context: dg.AssetExecutionContext, storage: FlowerStorage) -> dg.MaterializeResult:
    """The archive's images, extracted safely (no member may land outside the target)."""
    with user_errors():
        manifest = ingest.extract_images(storage.dataset(context.partition_key))
    if manifest["skipped"]:
        context.log.warning(f"skipped {len(manifest['skipped'])} members: {manifest['skipped']}")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(manifest["root"]), "images": len(manifest["images"]),
        "skipped_members": dg.MetadataValue.json(manifest["skipped"]), "bytes": manifest["bytes"],
        "reused": manifest["reused"], "seconds": round(manifest["seconds"], 2),
    })


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, deps=[extracted_images], kinds={"opencv"})
def resized_images(context: dg.AssetExecutionContext, config: ResizeConfig,
                   storage: FlowerStorage) -> dg.MaterializeResult:
    """Every image decoded and resized with OpenCV on all cores; unusable ones skipped by name."""
    with user_errors(), progress(context, "resize", "img") as report:
        spec = ResizeSpec(size=config.size, mode=config.mode, crop=config.crop)
        manifest = ingest.resize_images(storage.dataset(context.partition_key), spec, progress=report)
    kept, skipped = len(manifest["names"]), manifest["skipped"]
    if skipped:
        context.log.warning(f"skipped {len(skipped)} images: {skipped}")
    return dg.MaterializeResult(metadata={
        "images": kept, "skipped": len(skipped), "skipped_images": dg.MetadataValue.json(skipped),
        "size": config.size, "mode": config.mode, "crop": config.crop,
        "seconds": round(manifest["seconds"], 2),
        "images_per_second": round(kept / max(manifest["seconds"], 1e-9), 1),
    })


@dg.asset(
    partitions_def=dataset_partitions, group_name=GROUP, deps=[resized_images], kinds={"numpy"},
    check_specs=[dg.AssetCheckSpec(name, asset="tensor_cache") for name in ingest.CACHE_CHECKS],
)
def tensor_cache(context: dg.AssetExecutionContext, config: TensorCacheConfig,
                 storage: FlowerStorage) -> dg.MaterializeResult:
    """One memory-mappable uint8 N×C×H×W array with labels, names and a train/holdout split."""
    spec = get_dataset(context.partition_key)
    with user_errors():
        manifest = ingest.build_tensor_cache(storage.dataset(spec.name), spec,
                                             holdout_fraction=config.holdout_fraction)
        outcomes = ingest.check_tensor_cache(manifest, spec)
    cache = TensorCache.load(manifest["path"])
    preview = np.asarray(cache.images[np.linspace(0, len(cache.images) - 1, 32).astype(int)])
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(manifest["path"]), "content_hash": manifest["content_hash"],
            "images": manifest["count"], "shape": str(manifest["shape"]),
            "holdout_images": int(cache.holdout.sum()), "classes": len(manifest["class_counts"]),
            "class_counts": dg.MetadataValue.json(manifest["class_counts"]),
            "skipped": len(manifest["skipped"]), "bytes": int(cache.images.nbytes),
            "reused": manifest["reused"], "synthetic": spec.synthetic,
            "preview": image_markdown(grid_png(preview, columns=8), f"{spec.name} preview"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=o.name, passed=o.passed, description=o.description,
                severity=dg.AssetCheckSeverity.WARN if o.warn_only else dg.AssetCheckSeverity.ERROR)
            for o in outcomes
        ],
    )


prepare_dataset_job = dg.define_asset_job(
    "prepare_dataset", selection=dg.AssetSelection.groups(GROUP),
    description="Download, extract, resize and cache one dataset.",
)
