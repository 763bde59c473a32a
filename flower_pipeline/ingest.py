"""The ingest stages, download → extraction → resize → tensor cache, as plain functions.

Each stage reads the previous stage's manifest (a small JSON file in the
dataset's folder) and writes its own last, atomically, so a manifest exists
only for a stage that finished. The Dagster assets in `flower_pipeline.defs`
are thin wrappers around these functions.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_pipeline.catalog import DatasetSpec, RemoteFile
from flower_pipeline.download import Checksum, ProgressFn, fetch, is_url
from flower_pipeline.errors import PipelineError
from flower_pipeline.extract import ExtractLimits, extract_archive, list_images
from flower_pipeline.imaging import ResizeSpec, resize_all
from flower_pipeline.storage import atomic_save_npy, atomic_write_json
from flower_pipeline.synthetic import write_synthetic_archive
from flower_pipeline.tensor_cache import write_cache

Manifest = dict[str, Any]
STAGES = ("raw_archive", "extracted_images", "resized_images", "tensor_cache")


@dataclass(frozen=True)
class DatasetPaths:
    """Where one dataset's files live under the data folder."""

    data_dir: Path
    dataset: str

    @property
    def root(self) -> Path:
        return self.data_dir / self.dataset

    def manifest_path(self, stage: str) -> Path:
        return self.root / f"{stage}.json"

    def read_manifest(self, stage: str) -> Manifest:
        path = self.manifest_path(stage)
        if not path.is_file():
            raise PipelineError(f"{self.dataset}: {stage} is not materialized yet; prepare the dataset first")
        return json.loads(path.read_text())

    def write_manifest(self, stage: str, manifest: Manifest) -> Manifest:
        atomic_write_json(self.manifest_path(stage), manifest)
        return manifest


def fetch_raw_archive(
    paths: DatasetPaths,
    spec: DatasetSpec,
    *,
    source: str | None = None,
    checksum: Checksum | None = None,
    progress: ProgressFn | None = None,
    backoff_s: float = 1.0,
) -> Manifest:
    """Obtain the dataset's archive (download, local file or generated) and record it."""
    started = time.perf_counter()
    downloads = paths.root / "downloads"
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
    elif source is not None and not is_url(source) and Path(source).expanduser().is_dir():
        folder = Path(source).expanduser().resolve()
        return paths.write_manifest("raw_archive", {
            "kind": "folder", "path": str(folder), "source": source, "sha256": _folder_digest(folder),
            "size": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
            "companions": {}, "downloaded": False, "seconds": time.perf_counter() - started,
        })
    else:
        if source is not None and spec.archive is not None and checksum is None:
            raise PipelineError(
                f"a --source for {spec.name} needs --sha256 or --md5: the official md5 "
                "only fits the official file")
        origin = source or spec.archive.url  # type: ignore[union-attr]
        official = source is None
        if official:
            checksum = Checksum("md5", spec.archive.md5)  # type: ignore[union-attr]
        fetched = fetch(origin, downloads, checksum=checksum, progress=progress, backoff_s=backoff_s)
        for companion in spec.companions:
            # Official companions are verified by their official md5; a mirror's are
            # taken as they are (small label tables, parsed strictly afterwards).
            where = companion.url if official else _beside(origin, companion)
            expected = Checksum("md5", companion.md5) if official else None
            companions[companion.filename] = str(
                fetch(where, downloads, checksum=expected, backoff_s=backoff_s).path)
        kind = "archive"
    return paths.write_manifest("raw_archive", {
        "kind": kind, "path": str(fetched.path), "source": origin, "sha256": fetched.sha256,
        "size": fetched.size, "companions": companions, "downloaded": fetched.downloaded,
        "seconds": time.perf_counter() - started,
    })


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


def extract_images(paths: DatasetPaths, *, limits: ExtractLimits | None = None) -> Manifest:
    """Extract the raw archive safely (or adopt a folder of images as it is)."""
    raw = paths.read_manifest("raw_archive")
    started = time.perf_counter()
    if raw["kind"] == "folder":
        root = Path(raw["path"])
        images, skipped, total, reused = list_images(root), {}, raw["size"], True
        if not images:
            raise PipelineError(f"{root} holds no image files")
    else:
        result = extract_archive(Path(raw["path"]), paths.root / "extracted",
                                 archive_sha256=raw["sha256"], limits=limits or ExtractLimits())
        root, images, skipped = result.root, result.images, result.skipped
        total, reused = result.total_bytes, result.reused
    return paths.write_manifest("extracted_images", {
        "root": str(root), "images": images, "skipped": skipped, "bytes": total,
        "reused": reused, "archive_sha256": raw["sha256"], "seconds": time.perf_counter() - started,
    })


def resize_images(
    paths: DatasetPaths, spec: ResizeSpec, *, progress: Callable[[int, int], None] | None = None
) -> Manifest:
    """Decode and resize every extracted image; unusable ones are skipped with a reason."""
    extracted = paths.read_manifest("extracted_images")
    root = Path(extracted["root"])
    names: list[str] = extracted["images"]
    started = time.perf_counter()
    result = resize_all([root / n for n in names], spec, names=names, progress=progress)
    if not result.kept:
        raise PipelineError(f"{paths.dataset}: none of the {len(names)} images could be used "
                            f"(first problem: {next(iter(result.skipped.items()), ('', ''))})")
    params = spec.as_dict()
    out_dir = paths.root / "resized" / f"{spec.size}px-{spec.mode}-{spec.crop}"
    atomic_save_npy(out_dir / "images.npy", result.images)
    kept_names = [names[i] for i in result.kept]
    return paths.write_manifest("resized_images", {
        "file": str(out_dir / "images.npy"), "names": kept_names, "skipped": result.skipped,
        "params": params, "archive_sha256": extracted["archive_sha256"],
        "seconds": time.perf_counter() - started,
    })


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


def build_tensor_cache(paths: DatasetPaths, spec: DatasetSpec, *, holdout_fraction: float = 0.1) -> Manifest:
    """Turn the resized images into the content-keyed tensor cache."""
    raw = paths.read_manifest("raw_archive")
    extracted = paths.read_manifest("extracted_images")
    resized = paths.read_manifest("resized_images")
    started = time.perf_counter()
    images = np.load(resized["file"])
    names: list[str] = resized["names"]
    labels, class_names = label_images(spec, names, raw["companions"])
    cache_dir, reused = write_cache(
        paths.root / "cache", images, labels, names, class_names=class_names,
        params={"dataset": spec.name, "archive_sha256": raw["sha256"], **resized["params"]},
        holdout_fraction=holdout_fraction)
    counts = Counter(labels.tolist())
    # A user's folder or archive has no catalogued count: every image file found is expected.
    expected = spec.expected_images if spec.expected_images and raw["kind"] != "folder" else len(extracted["images"])
    return paths.write_manifest("tensor_cache", {
        "path": str(cache_dir), "content_hash": cache_dir.name, "reused": reused,
        "count": len(names), "shape": [len(names), images.shape[3], images.shape[1], images.shape[2]],
        "class_counts": {class_names[k]: v for k, v in sorted(counts.items())},
        "expected_images": expected,
        "skipped": {**extracted["skipped"], **resized["skipped"]},
        "params": resized["params"], "holdout_fraction": holdout_fraction,
        "seconds": time.perf_counter() - started,
    })


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    warn_only: bool = False


CACHE_CHECKS = ("image_count", "tensor_format", "no_duplicates", "class_balance")


def check_tensor_cache(manifest: Manifest, spec: DatasetSpec) -> list[CheckOutcome]:
    """The tensor cache's quality checks, in CACHE_CHECKS order."""
    from flower_pipeline.tensor_cache import TensorCache

    cache = TensorCache.load(manifest["path"])
    images, labels, names = cache.images, cache.labels, cache.names
    expected, skipped = manifest["expected_images"], len(manifest["skipped"])
    count_ok = len(names) == expected - skipped
    size = manifest["params"]["size"]
    channels = 3 if manifest["params"]["mode"] == "color" else 1
    sample = np.asarray(images[: min(len(images), 256)])
    format_ok = (images.dtype == np.uint8 and images.shape[1:] == (channels, size, size)
                 and len(labels) == len(images) == len(names) and int(sample.max()) > int(sample.min()))
    pixel_hashes = Counter(hashlib.sha1(np.asarray(im).tobytes()).hexdigest() for im in images)
    same_pixels = sum(c - 1 for c in pixel_hashes.values() if c > 1)
    duplicate_names = len(names) - len(set(names))
    counts = np.bincount(labels, minlength=len(cache.meta["class_names"]))
    present = counts[counts > 0]
    # Balanced per-class counts are promised only for the catalogued archive.
    if spec.images_per_class and expected == spec.expected_images:
        per_class_skips = Counter(_class_of_skip(spec, n) for n in manifest["skipped"])
        balance_ok = all(c == spec.images_per_class - per_class_skips.get(k, 0) for k, c in enumerate(counts))
        balance_text = (f"{len(present)} classes of {spec.images_per_class} expected, less skips; "
                        f"counts {counts.tolist()}")
    else:
        balance_ok = bool(len(present)) and bool(present.min() >= 1)
        balance_text = f"{len(present)} classes, {present.min()}–{present.max()} images each"
    return [
        CheckOutcome("image_count", count_ok,
                     f"{len(names)} images; catalog {expected} less {skipped} skipped"),
        CheckOutcome("tensor_format", format_ok,
                     f"{images.dtype} {list(images.shape)}; expected uint8 [N, {channels}, {size}, {size}]"),
        CheckOutcome("no_duplicates", duplicate_names == 0,
                     f"{duplicate_names} repeated file names; {same_pixels} images identical to another "
                     "after resizing" + (" (a warning only)" if same_pixels else "")),
        CheckOutcome("class_balance", balance_ok, balance_text),
    ]


def _class_of_skip(spec: DatasetSpec, name: str) -> int:
    return (_image_number(name) - 1) // (spec.images_per_class or 1)
