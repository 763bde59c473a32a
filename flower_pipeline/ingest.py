"""The ingest stages, download → extraction → resize → tensor cache, as plain functions.

Each stage takes the previous stage's output (a small frozen record of paths,
hashes and counts) and returns its own; nothing is read from "the latest" file
on disk. Download and extraction belong to a dataset and are shared by its
variants; resizing and the tensor cache belong to one variant. The Dagster
assets in `flower_pipeline.defs` pass these records between them.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from flower_pipeline.catalog import DatasetSpec, RemoteFile, Variant, get_dataset
from flower_pipeline.download import (
    Checksum,
    DownloadLimits,
    ProgressFn,
    fetch,
    forget,
    is_url,
    local_path,
    redact,
)
from flower_pipeline.errors import PipelineError
from flower_pipeline.extract import ExtractLimits, extract_archive, list_images
from flower_pipeline.imaging import ResizeSpec, resize_all
from flower_pipeline.storage import atomic_save_npy
from flower_pipeline.synthetic import write_synthetic_archive
from flower_pipeline.tensor_cache import write_cache


@dataclass(frozen=True)
class RawArchive:
    dataset: str
    kind: str  # archive, synthetic or folder
    path: str
    source: str
    sha256: str
    size: int
    companions: dict[str, str]  # official name → local path (Flowers-102's label tables)
    downloaded: bool
    seconds: float


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
    file: str  # N×H×W×C uint8 .npy
    names: list[str]
    skipped: dict[str, str]
    params: dict[str, object]
    seconds: float


@dataclass(frozen=True)
class TensorCacheRef:
    """A tensor cache: its folder and its identity (the content hash training and retraining compare)."""

    variant: str
    path: str
    content_hash: str
    count: int
    shape: list[int]
    class_counts: dict[str, int]
    expected_images: int
    skipped: dict[str, str]
    reused: bool
    seconds: float


def dataset_root(data_dir: Path, dataset: str) -> Path:
    return data_dir / dataset


def fetch_raw_archive(
    data_dir: Path,
    spec: DatasetSpec,
    *,
    source: str | None = None,
    checksum: Checksum | None = None,
    progress: ProgressFn | None = None,
    backoff_s: float = 1.0,
    limits: DownloadLimits | None = None,
) -> RawArchive:
    """Obtain the dataset's archive (download, local file or generated). Official files are capped at their
    catalogued size bound."""
    limits = limits or DownloadLimits()
    started = time.perf_counter()
    downloads = dataset_root(data_dir, spec.name) / "downloads"
    companions: dict[str, str] = {}
    if spec.synthetic and source is None:
        archive = downloads / "synthetic-flowers.tgz"
        if not archive.is_file():
            write_synthetic_archive(archive, num_classes=spec.num_classes or 8,
                                    per_class=spec.images_per_class or 40)
        fetched = fetch(str(archive), downloads, checksum=checksum)
        kind, origin = "synthetic", "generated locally (synthetic drawings, not photos)"
    elif spec.archive is None and source is None:
        raise PipelineError(f"{spec.name} needs --source: an archive (.tgz/.tar/.zip), a folder or a URL")
    elif source is not None and not is_url(source) and local_path(source).is_dir():
        folder = local_path(source).resolve()
        return RawArchive(spec.name, "folder", str(folder), source, _folder_digest(folder),
                          sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()), {}, False,
                          time.perf_counter() - started)
    else:
        if source is not None and spec.archive is not None and checksum is None:
            raise PipelineError(
                f"a --source for {spec.name} needs --sha256 or --md5: the official md5 "
                "only fits the official file")
        origin = source or spec.archive.url  # type: ignore[union-attr]
        official = source is None
        if official:
            checksum = Checksum("md5", spec.archive.md5)  # type: ignore[union-attr]
        bounded = replace(limits, max_bytes=spec.archive.max_bytes) if official else limits  # type: ignore[union-attr]
        fetched = fetch(origin, downloads, checksum=checksum, progress=progress, backoff_s=backoff_s, limits=bounded)
        for companion in spec.companions:
            # Official companions are verified by their official md5; a mirror's are
            # taken as they are (small label tables, parsed strictly afterwards).
            where = companion.url if official else _beside(origin, companion)
            expected = Checksum("md5", companion.md5) if official else None
            companions[companion.filename] = str(
                fetch(where, downloads, checksum=expected, backoff_s=backoff_s,
                      limits=replace(limits, max_bytes=companion.max_bytes)).path)
        kind = "archive"
    return RawArchive(spec.name, kind, str(fetched.path), redact(origin), fetched.sha256, fetched.size, companions,
                      fetched.downloaded, time.perf_counter() - started)


def _beside(origin: str, companion: RemoteFile) -> str:
    """Companion files are looked for next to the given archive, under their official names."""
    if is_url(origin):
        return urllib.parse.urljoin(origin, companion.filename)
    return str(Path(origin).expanduser().parent / companion.filename)


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in list_images(folder):
        stat = (folder / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def extract_images(raw: RawArchive, data_dir: Path, *, limits: ExtractLimits | None = None) -> ExtractedImages:
    """Extract the raw archive safely (or adopt a folder of images as it is)."""
    started = time.perf_counter()
    if raw.kind == "folder":
        root = Path(raw.path)
        images, skipped, total, reused = list_images(root), {}, raw.size, True
        if not images:
            raise PipelineError(f"{root} holds no image files")
    else:
        try:
            result = extract_archive(Path(raw.path), dataset_root(data_dir, raw.dataset) / "extracted",
                                     archive_sha256=raw.sha256, limits=limits or ExtractLimits())
        except PipelineError:
            if is_url(raw.source):  # a download that is no archive (an error page): never reuse it
                forget(Path(raw.path))
            raise
        root, images, skipped = result.root, result.images, result.skipped
        total, reused = result.total_bytes, result.reused
    return ExtractedImages(raw.dataset, str(root), images, skipped, total, reused, raw.kind, raw.sha256,
                           raw.companions, time.perf_counter() - started)


def resize_images(extracted: ExtractedImages, variant: Variant, data_dir: Path, *, crop: str = "center",
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
    out = dataset_root(data_dir, variant.dataset) / "resized" / f"{spec.size}px-{spec.mode}-{spec.crop}"
    atomic_save_npy(out / "images.npy", result.images)
    params = {**spec.as_dict(), "dataset": variant.dataset, "variant": variant.name,
              "archive_sha256": extracted.archive_sha256}
    return ResizedImages(variant.name, str(out / "images.npy"), [names[i] for i in result.kept], result.skipped,
                         params, time.perf_counter() - started)


def label_images(spec: DatasetSpec, names: list[str], companions: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """Class labels for the given image names, by the dataset's labelling scheme."""
    if spec.labels == "file_order":
        per_class = spec.images_per_class or 1
        labels = np.array([(_image_number(n) - 1) // per_class for n in names], np.int64)
        return labels, [f"class_{i:02d}" for i in range(spec.num_classes or int(labels.max()) + 1)]
    if spec.labels == "imagelabels_mat":
        from scipy.io import loadmat

        path = companions.get("imagelabels.mat")
        if not path:
            raise PipelineError(f"{spec.name}: imagelabels.mat was not fetched")
        table = np.asarray(loadmat(path)["labels"]).ravel().astype(np.int64)
        numbers = [_image_number(n) for n in names]
        if max(numbers) > len(table):
            raise PipelineError(f"{spec.name}: imagelabels.mat has {len(table)} labels, "
                                f"but image number {max(numbers)} exists")
        return table[np.array(numbers) - 1] - 1, [f"class_{i:03d}" for i in range(int(table.max()))]
    folders = [n.split("/")[0] if "/" in n else "all" for n in names]
    class_names = sorted(set(folders))
    return np.array([class_names.index(f) for f in folders], np.int64), class_names


def _image_number(name: str) -> int:
    match = re.search(r"(\d+)\D*$", name)
    if not match:
        raise PipelineError(f"cannot read an image number from {name!r}")
    return int(match.group(1))


def build_tensor_cache(extracted: ExtractedImages, resized: ResizedImages, data_dir: Path, *,
                       holdout_fraction: float = 0.1) -> TensorCacheRef:
    """Turn the resized images into the content-keyed tensor cache."""
    if not 0 <= holdout_fraction < 1:
        raise PipelineError(f"the holdout fraction must be at least 0 and below 1, got {holdout_fraction}")
    spec = get_dataset(extracted.dataset)
    started = time.perf_counter()
    images = np.load(resized.file)
    labels, class_names = label_images(spec, resized.names, extracted.companions)
    cache_dir, reused, key = write_cache(
        dataset_root(data_dir, spec.name) / "cache", images, labels, resized.names, class_names=class_names,
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
    if spec.images_per_class and ref.expected_images == spec.expected_images:
        per_class_skips = Counter(_class_of_skip(spec, n) for n in ref.skipped)
        ok = all(c == spec.images_per_class - per_class_skips.get(k, 0) for k, c in enumerate(counts))
        return CheckOutcome(ok, f"{len(present)} classes of {spec.images_per_class} expected, less skips; "
                                f"counts {counts.tolist()}")
    ok = bool(len(present)) and bool(present.min() >= 1)
    return CheckOutcome(ok, f"{len(present)} classes, {present.min()}–{present.max()} images each")


def _class_of_skip(spec: DatasetSpec, name: str) -> int:
    return (_image_number(name) - 1) // (spec.images_per_class or 1)


def prepare_variant(data_dir: Path, variant: Variant, *, source: str | None = None,
                    checksum: Checksum | None = None, holdout_fraction: float = 0.1) -> TensorCacheRef:
    """The whole ingest of one variant without Dagster (scripts, benchmarks, tests)."""
    raw = fetch_raw_archive(data_dir, get_dataset(variant.dataset), source=source, checksum=checksum)
    extracted = extract_images(raw, data_dir)
    return build_tensor_cache(extracted, resize_images(extracted, variant, data_dir), data_dir,
                              holdout_fraction=holdout_fraction)
