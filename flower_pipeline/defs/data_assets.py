"""Data assets: raw_archive → extracted_images per dataset, then resized_images → tensor_cache → feature_network
per variant."""

from collections.abc import Callable
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field

from flower_pipeline import __version__, ingest
from flower_pipeline.catalog import DEFAULT_CROP, DEFAULT_HOLDOUT, Variant, get_dataset
from flower_pipeline.download import Checksum, DownloadLimits
from flower_pipeline.errors import PipelineError
from flower_pipeline.feature_network import FeatureNetworkRef, FeatureSettings, network_id, train_feature_network
from flower_pipeline.plots import grid_png
from flower_pipeline.scaleout.settings import GPU_STEP
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import pick_device

from .config import DEVICE_FIELD, asset_code_version, config_class, settings_from
from .partitions import dataset_partitions, variant_partitions
from .resources import FlowerStorage, pick
from .support import image_markdown, progress, user_errors

GROUP = "ingest"
OWNERS = ["team:flower-pipeline"]


RawArchiveConfig = config_class(
    "RawArchiveConfig", DownloadLimits,
    source=(str | None, Field(None, description="A mirror URL, a local archive or (your collection) a folder of "
                                                "images; default: the official URL.")),
    sha256=(str | None, Field(None, description="Expected sha256 of the source.")),
    md5=(str | None, Field(None, description="Expected md5 of the source.")))


class ResizeConfig(dg.Config):
    crop: str = Field(DEFAULT_CROP, description="center (square crop), pad (letterbox) or stretch. The variant's name "
                                            "gives colour mode and size.")


class TensorCacheConfig(dg.Config):
    holdout_fraction: float = Field(DEFAULT_HOLDOUT,
                                    description="Share of each class held out of training, for evaluation.")


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, kinds={"http"}, owners=OWNERS,
          code_version=asset_code_version(DownloadLimits))
def raw_archive(context: dg.AssetExecutionContext, config: RawArchiveConfig,
                storage: FlowerStorage) -> ingest.RawArchive:
    """The dataset's archive, downloaded (resumably) and checksum-verified, or a local file or folder."""
    with user_errors():
        spec = get_dataset(context.partition_key)
        with progress(context, f"download {spec.name}", "B", scale=1024) as report:
            raw = ingest.fetch_raw_archive(storage.layout, spec, source=config.source,
                                           checksum=Checksum.parse(config.sha256, config.md5), progress=report,
                                           limits=settings_from(config, DownloadLimits))
    context.add_output_metadata({
        "path": dg.MetadataValue.path(raw.path), "source": raw.source, "kind": raw.kind, "sha256": raw.sha256,
        "bytes": raw.size, "downloaded": raw.downloaded, "seconds": round(raw.seconds, 2),
    })
    return raw


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, kinds={"python"}, owners=OWNERS,
          code_version=__version__)
def extracted_images(context: dg.AssetExecutionContext, raw_archive: ingest.RawArchive,
                     storage: FlowerStorage) -> ingest.ExtractedImages:
    """The archive's images, extracted safely (no member may land outside the target)."""
    with user_errors():
        extracted = ingest.extract_images(raw_archive, storage.layout)
    if extracted.skipped:
        context.log.warning(f"skipped {len(extracted.skipped)} members: {extracted.skipped}")
    context.add_output_metadata({
        "path": dg.MetadataValue.path(extracted.root), "images": len(extracted.images),
        "skipped_members": dg.MetadataValue.json(extracted.skipped), "bytes": extracted.bytes,
        "reused": extracted.reused, "seconds": round(extracted.seconds, 2),
    })
    return extracted


# Each variant reads its own dataset's extraction: Dagster maps dataset → variant partitions with no
# built-in rule, so the variant takes the dataset's record from all of them (see `pick`).
@dg.asset(partitions_def=variant_partitions, group_name=GROUP, kinds={"opencv"}, owners=OWNERS,
          code_version=__version__,
          ins={"extracted_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def resized_images(context: dg.AssetExecutionContext, config: ResizeConfig, extracted_images: Any,
                   storage: FlowerStorage) -> ingest.ResizedImages:
    """Every image of the variant's dataset decoded and resized with OpenCV on all cores; unusable ones skipped."""
    with user_errors():
        variant = Variant.parse(context.partition_key)
        extracted = pick(extracted_images, variant.dataset, "dataset")
        with progress(context, "resize", "img") as report:
            resized = ingest.resize_images(extracted, variant, storage.layout, crop=config.crop, progress=report)
    if resized.skipped:
        context.log.warning(f"skipped {len(resized.skipped)} images: {resized.skipped}")
    context.add_output_metadata({
        "images": len(resized.names), "skipped": len(resized.skipped),
        "skipped_images": dg.MetadataValue.json(resized.skipped), "size": variant.size, "mode": variant.mode,
        "crop": config.crop, "seconds": round(resized.seconds, 2),
        "images_per_second": round(len(resized.names) / max(resized.seconds, 1e-9), 1),
    })
    return resized


@dg.asset(partitions_def=variant_partitions, group_name=GROUP, kinds={"numpy"}, owners=OWNERS,
          code_version=__version__,
          ins={"extracted_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def tensor_cache(context: dg.AssetExecutionContext, config: TensorCacheConfig, resized_images: ingest.ResizedImages,
                 extracted_images: Any, storage: FlowerStorage) -> ingest.TensorCacheRef:
    """One memory-mappable uint8 N×C×H×W array with labels, names and a train/holdout split."""
    with user_errors():
        variant = Variant.parse(context.partition_key)
        extracted = pick(extracted_images, variant.dataset, "dataset")
        ref = ingest.build_tensor_cache(extracted, resized_images, storage.layout,
                                        holdout_fraction=config.holdout_fraction)
    cache = TensorCache.load(ref.path)
    preview = np.asarray(cache.images[np.linspace(0, len(cache.images) - 1, 32).astype(int)])
    context.add_output_metadata({
        "path": dg.MetadataValue.path(ref.path), "content_hash": ref.content_hash, "images": ref.count,
        "shape": str(ref.shape), "holdout_images": int(cache.holdout.sum()), "classes": len(ref.class_counts),
        "class_counts": dg.MetadataValue.json(ref.class_counts), "skipped": len(ref.skipped),
        "bytes": int(cache.images.nbytes), "reused": ref.reused,
        "synthetic": get_dataset(variant.dataset).synthetic,
        "preview": image_markdown(grid_png(preview, columns=8), f"{variant.name} preview"),
    })
    return ref


def _cache_check(check: Callable[[ingest.TensorCacheRef], ingest.CheckOutcome], description: str,
                 severity: dg.AssetCheckSeverity) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=tensor_cache, name=check.__name__.removeprefix("check_"), description=description,
                    blocking=severity == dg.AssetCheckSeverity.ERROR,
                    partitions_def=tensor_cache.partitions_def)  # the UI shows which partition it judged
    def cache_check(context: dg.AssetCheckExecutionContext, tensor_cache: Any) -> dg.AssetCheckResult:
        with user_errors():
            outcome = check(pick(tensor_cache, context.partition_key, "variant"))
        return dg.AssetCheckResult(passed=outcome.passed, description=outcome.description, severity=severity)

    return cache_check


cache_checks = [
    _cache_check(ingest.check_image_count, "Every image of the archive is in the cache, less the skipped ones.",
                 dg.AssetCheckSeverity.WARN),
    _cache_check(ingest.check_tensor_format, "uint8 N×C×H×W of the variant's mode and size, labels and names "
                                             "for every image, not one flat colour.", dg.AssetCheckSeverity.ERROR),
    _cache_check(ingest.check_no_duplicates, "No file name twice (identical pixels are reported, not failed).",
                 dg.AssetCheckSeverity.WARN),
    _cache_check(ingest.check_class_balance, "Catalogued datasets keep their per-class counts; no class is empty.",
                 dg.AssetCheckSeverity.WARN),
]

prepare_dataset_job = dg.define_asset_job(
    "prepare_dataset", selection=[raw_archive, extracted_images],
    description="Download (or read) and extract one dataset, shared by its variants.")
prepare_variant_job = dg.define_asset_job(
    "prepare_variant", selection=["resized_images", "tensor_cache", "feature_network"],
    description="Resize one variant's images (colour mode × size), build its tensor cache and train its feature "
                "network.")


FeatureNetworkConfig = config_class("FeatureNetworkConfig", FeatureSettings, device=DEVICE_FIELD)


@dg.asset(partitions_def=variant_partitions, group_name="evaluation", kinds={"pytorch"}, owners=OWNERS,
          code_version=asset_code_version(FeatureSettings), pool="gpu", op_tags=GPU_STEP)
def feature_network(context: dg.AssetExecutionContext, config: FeatureNetworkConfig,
                    tensor_cache: ingest.TensorCacheRef, storage: FlowerStorage) -> FeatureNetworkRef:
    """A small CNN trained to tell the variant's classes apart; its features measure generated images offline."""
    with user_errors():
        settings = settings_from(config, FeatureSettings)
        cache = TensorCache.load(tensor_cache.path)
        identity = network_id(cache, settings)
        out_dir = storage.layout.feature_network(Variant.parse(tensor_cache.variant).dataset, identity)
        try:
            result = train_feature_network(cache, settings, out_dir, device=pick_device(config.device),
                                           log=context.log.info)
        except PipelineError as err:  # e.g. a collection without classes: reported, evaluation says why
            context.log.warning(f"no feature network for {tensor_cache.variant}: {err}")
            context.add_output_metadata({"unavailable": str(err)})
            return FeatureNetworkRef(tensor_cache.variant, identity, None, str(err), None, None, 0, 0.0, False)
    context.add_output_metadata({
        "held_out_accuracy": round(result.accuracy, 4), "train_accuracy": round(result.train_accuracy, 4),
        "classes": result.classes, "chance": round(1 / result.classes, 4), "seconds": round(result.seconds, 1),
        "reused": result.reused, "network_id": identity, "path": dg.MetadataValue.path(str(result.path)),
    })
    return FeatureNetworkRef(tensor_cache.variant, identity, str(result.path), None, result.accuracy,
                             result.train_accuracy, result.classes, result.seconds, result.reused)
