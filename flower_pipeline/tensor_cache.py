"""The tensor cache: one memory-mappable uint8 N×C×H×W array plus labels and names.

A cache is a folder named by the hash of its content and preprocessing
parameters, written in a temporary folder and renamed into place, so a folder
under its final name is always complete. Training maps it with
`TensorCache.load(path)` and needs nothing but NumPy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_pipeline.errors import PipelineError
from flower_pipeline.storage import atomic_save_npy, atomic_write_json

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorCache:
    path: Path
    images: np.ndarray  # N×C×H×W uint8, memory-mapped
    labels: np.ndarray  # N int64
    holdout: np.ndarray  # N bool: held out from training, for evaluation
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: Path | str) -> TensorCache:
        path = Path(path)
        try:
            return cls(
                path=path,
                images=np.load(path / "images.npy", mmap_mode="r"),
                labels=np.load(path / "labels.npy"),
                holdout=np.load(path / "holdout.npy"),
                meta=json.loads((path / "meta.json").read_text()),
            )
        except (OSError, ValueError) as err:  # missing file, truncated array, bad JSON
            raise PipelineError(f"{path} is not a complete tensor cache ({type(err).__name__}: {err})") from None

    @property
    def names(self) -> list[str]:
        return self.meta["names"]

    @property
    def content_hash(self) -> str:
        return self.meta["content_hash"]

    @property
    def variant(self) -> str:
        """The variant it was made for (e.g. flowers17-color-64), else its folder name."""
        return str(self.meta["params"].get("variant", self.path.name))

    def train_images(self) -> np.ndarray:
        return np.asarray(self.images[~self.holdout])

    def holdout_images(self) -> np.ndarray:
        return np.asarray(self.images[self.holdout])


def holdout_mask(names: list[str], labels: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic stratified split: per class, the files whose name hashes lowest.

    Hashing names (not positions) keeps each file's side stable when others are
    added or skipped.
    """
    mask = np.zeros(len(names), bool)
    if fraction <= 0:
        return mask
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = round(fraction * len(members))
        if len(members) > 1 and take:
            order = sorted(members, key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())
            mask[order[:take]] = True
    return mask


def content_hash(images: np.ndarray, labels: np.ndarray, names: list[str], params: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT_VERSION, "params": params, "names": names},
                             sort_keys=True).encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def write_cache(
    parent: Path,
    images_nhwc: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    *,
    class_names: list[str],
    params: dict[str, Any],
    holdout_fraction: float = 0.1,
) -> tuple[Path, bool, str]:
    """Write (or reuse) the cache for this content; returns (path, reused, content hash).

    The folder is named by the hash's first 16 characters; the full hash is the cache's identity.
    """
    images = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    labels = np.asarray(labels, np.int64)
    key = content_hash(images, labels, names, {**params, "holdout_fraction": holdout_fraction})
    final = parent / key[:16]
    if (final / "meta.json").is_file():
        return final, True, key
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.tmp-", dir=parent))
    try:
        holdout = holdout_mask(names, labels, holdout_fraction)
        atomic_save_npy(staging / "images.npy", images)
        atomic_save_npy(staging / "labels.npy", labels)
        atomic_save_npy(staging / "holdout.npy", holdout)
        atomic_write_json(staging / "meta.json", {
            "format": FORMAT_VERSION, "content_hash": key, "params": params,
            "holdout_fraction": holdout_fraction, "shape": list(images.shape),
            "names": names, "class_names": class_names,
        })
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, False, key
