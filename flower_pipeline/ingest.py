"""The ingest stages, download → extraction → resize → tensor cache, as plain functions.

Each stage takes the previous stage's output (a small frozen record of paths,
hashes and counts) and returns its own; nothing is read from "the latest" file
on disk. Download and extraction belong to a dataset and are shared by its
variants; resizing and the tensor cache belong to one variant. The Dagster
assets in `flower_pipeline.defs` pass these records between them.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flower_pipeline.catalog import DEFAULT_CROP, DEFAULT_HOLDOUT, DatasetSpec, Variant, get_dataset
from flower_pipeline.download import Checksum, DownloadLimits, ProgressFn, forget, is_url
from flower_pipeline.errors import PipelineError
from flower_pipeline.extract import ExtractLimits, extract_archive, list_images
from flower_pipeline.imaging import ResizeSpec, resize_all
from flower_pipeline.layout import DataLayout
from flower_pipeline.sources import Fetching, FileOrder, RawArchive, source_for
from flower_pipeline.storage import DataPath, atomic_save_npy
from flower_pipeline.tensor_cache import write_cache


@dataclass(frozen=True)
class ExtractedImages:
    dataset: str
    root: str
    images: list[str]  # relative paths under root
    skipped: dict[str, str]  # member → why
    bytes: int
    reused: bool
    kind: str
    archive_sha256: str
    companions: dict[str, str]
    seconds: float


@dataclass(frozen=True)
class ResizedImages:
    variant: str
    file: DataPath  # N×H×W×C uint8 .npy
    names: list[str]
    skipped: dict[str, str]
    params: dict[str, object]
    seconds: float


@dataclass(frozen=True)
class TensorCacheRef:
    """A tensor cache: its folder and its identity (the content hash training and retraining compare)."""

    variant: str
    path: DataPath
    content_hash: str
    count: int
    shape: list[int]
    class_counts: dict[str, int]
    expected_images: int
    skipped: dict[str, str]
    reused: bool
    seconds: float


def fetch_raw_archive(
    layout: DataLayout,
    spec: DatasetSpec,
    *,
    source: str | None = None,
    checksum: Checksum | None = None,
    progress: ProgressFn | None = None,
    backoff_s: float = 1.0,
    limits: DownloadLimits | None = None,
) -> RawArchive:
    """Obtain the dataset's images from the user's --source, else from the catalogue's source."""
    chosen = source_for(spec.name, spec.source, source, checksum)
    return chosen.obtain(spec.name, layout.downloads(spec.name),
                         Fetching(checksum, progress, backoff_s, limits or DownloadLimits()))


def extract_images(raw: RawArchive, layout: DataLayout, *, limits: ExtractLimits | None = None) -> ExtractedImages:
    """Extract the raw archive safely (or adopt a folder of images as it is)."""
    started = time.perf_counter()
    if raw.kind == "folder":
        root = Path(raw.path)
        images, skipped, total, reused = list_images(root), {}, raw.size, True
        if not images:
            raise PipelineError(f"{root} holds no image files")
    else:
        try:
            result = extract_archive(Path(raw.path), layout.extracted(raw.dataset),
                                     archive_sha256=raw.sha256, limits=limits or ExtractLimits())
        except PipelineError:
            if is_url(raw.source):  # a download that is no archive (an error page): never reuse it
                forget(Path(raw.path))
            raise
        root, images, skipped = result.root, result.images, result.skipped
        total, reused = result.total_bytes, result.reused
    return ExtractedImages(raw.dataset, str(root), images, skipped, total, reused, raw.kind, raw.sha256,
                           raw.companions, time.perf_counter() - started)


def resize_images(extracted: ExtractedImages, variant: Variant, layout: DataLayout, *, crop: str = DEFAULT_CROP,
                  progress: Callable[[int, int], None] | None = None) -> ResizedImages:
    """Decode and resize every extracted image for one variant; unusable ones are skipped with a reason."""
    if extracted.dataset != variant.dataset:
        raise PipelineError(f"variant {variant.name} is made from {variant.dataset}, not {extracted.dataset}")
    spec = ResizeSpec(size=variant.size, mode=variant.mode, crop=crop)
    root, names = Path(extracted.root), extracted.images
    started = time.perf_counter()
    result = resize_all([root / n for n in names], spec, names=names, progress=progress)
    if not result.kept:
        raise PipelineError(f"{variant.name}: none of the {len(names)} images could be used "
                            f"(first problem: {next(iter(result.skipped.items()), ('', ''))})")
    out = layout.resized(variant.dataset, spec.size, spec.mode, spec.crop)
    atomic_save_npy(out / "images.npy", result.images)
    params = {**spec.as_dict(), "dataset": variant.dataset, "variant": variant.name,
              "archive_sha256": extracted.archive_sha256}
    return ResizedImages(variant.name, str(out / "images.npy"), [names[i] for i in result.kept], result.skipped,
                         params, time.perf_counter() - started)


def build_tensor_cache(extracted: ExtractedImages, resized: ResizedImages, layout: DataLayout, *,
                       holdout_fraction: float = DEFAULT_HOLDOUT) -> TensorCacheRef:
    """Turn the resized images into the content-keyed tensor cache."""
    if not 0 <= holdout_fraction < 1:
        raise PipelineError(f"the holdout fraction must be at least 0 and below 1, got {holdout_fraction}")
    spec = get_dataset(extracted.dataset)
    started = time.perf_counter()
    images = np.load(resized.file)
    try:
        labels, class_names = spec.labels.label(resized.names, extracted.companions)
    except PipelineError as err:
        raise PipelineError(f"{spec.name}: {err}") from None
    cache_dir, reused, key = write_cache(
        layout.caches(spec.name), images, labels, resized.names, class_names=class_names,
        params=resized.params, holdout_fraction=holdout_fraction)
    counts = Counter(labels.tolist())
    # A user's folder or archive has no catalogued count: every image file found is expected.
    expected = spec.expected_images if spec.expected_images and extracted.kind != "folder" else len(extracted.images)
    return TensorCacheRef(
        resized.variant, str(cache_dir), key, len(resized.names),
        [len(resized.names), images.shape[3], images.shape[1], images.shape[2]],
        {class_names[k]: v for k, v in sorted(counts.items())}, expected,
        {**extracted.skipped, **resized.skipped}, reused, time.perf_counter() - started)


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str


def check_image_count(ref: TensorCacheRef) -> CheckOutcome:
    kept = ref.count == ref.expected_images - len(ref.skipped)
    return CheckOutcome(kept, f"{ref.count} images; catalog {ref.expected_images} less {len(ref.skipped)} skipped")


def check_tensor_format(ref: TensorCacheRef) -> CheckOutcome:
    from flower_pipeline.tensor_cache import TensorCache

    variant, cache = Variant.parse(ref.variant), TensorCache.load(ref.path)
    images, size, channels = cache.images, variant.size, variant.channels
    sample = np.asarray(images[: min(len(images), 256)])
    ok = (images.dtype == np.uint8 and images.shape[1:] == (channels, size, size)
          and len(cache.labels) == len(images) == len(cache.names) and int(sample.max()) > int(sample.min()))
    return CheckOutcome(ok, f"{images.dtype} {list(images.shape)}; expected uint8 [N, {channels}, {size}, {size}]")


def check_no_duplicates(ref: TensorCacheRef) -> CheckOutcome:
    """Repeated file names fail; identical pixels after resizing are reported only."""
    from flower_pipeline.tensor_cache import TensorCache

    cache = TensorCache.load(ref.path)
    pixel_hashes = Counter(hashlib.sha1(np.asarray(im).tobytes()).hexdigest() for im in cache.images)
    same_pixels = sum(c - 1 for c in pixel_hashes.values() if c > 1)
    repeated = len(cache.names) - len(set(cache.names))
    return CheckOutcome(repeated == 0, f"{repeated} repeated file names; {same_pixels} images identical to another "
                                       "after resizing" + (" (a warning only)" if same_pixels else ""))


def check_class_balance(ref: TensorCacheRef) -> CheckOutcome:
    """Balanced per-class counts are promised only for the catalogued archive; elsewhere, no empty class."""
    from flower_pipeline.tensor_cache import TensorCache

    spec = get_dataset(Variant.parse(ref.variant).dataset)
    cache = TensorCache.load(ref.path)
    counts = np.bincount(cache.labels, minlength=len(cache.meta["class_names"]))
    present = counts[counts > 0]
    if isinstance(spec.labels, FileOrder) and ref.expected_images == spec.expected_images:
        per_class_skips = Counter(spec.labels.class_of(n) for n in ref.skipped)
        ok = all(c == spec.labels.per_class - per_class_skips.get(k, 0) for k, c in enumerate(counts))
        return CheckOutcome(ok, f"{len(present)} classes of {spec.labels.per_class} expected, less skips; "
                                f"counts {counts.tolist()}")
    ok = bool(len(present)) and bool(present.min() >= 1)
    return CheckOutcome(ok, f"{len(present)} classes, {present.min()}–{present.max()} images each")


def prepare_variant(data_dir: Path, variant: Variant, *, source: str | None = None,
                    checksum: Checksum | None = None, holdout_fraction: float = DEFAULT_HOLDOUT) -> TensorCacheRef:
    """The whole ingest of one variant without Dagster (scripts, benchmarks, tests)."""
    layout = DataLayout.at(data_dir)
    raw = fetch_raw_archive(layout, get_dataset(variant.dataset), source=source, checksum=checksum)
    extracted = extract_images(raw, layout)
    return build_tensor_cache(extracted, resize_images(extracted, variant, layout), layout,
                              holdout_fraction=holdout_fraction)
