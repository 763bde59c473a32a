"""Where a dataset's photos come from, and how they are labelled: two small interfaces and their implementations.

A `DatasetSource` obtains a dataset into its downloads folder and returns a
`RawArchive` record; `Labels` turns image names into class labels. A catalogued
dataset (`catalog.py`) names one of each; a `--source` given by the user picks
one in `source_for`, the one place where the kinds of source branch.

A new kind of source (another host, another archive layout) is a class here and
a catalogue entry that uses it.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.parse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flower_pipeline.download import Checksum, DownloadLimits, ProgressFn, fetch, is_url, local_path
from flower_pipeline.errors import PipelineError, redact
from flower_pipeline.extract import list_images
from flower_pipeline.synthetic import write_synthetic_archive


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
class RemoteFile:
    url: str
    md5: str
    max_bytes: int  # a bound a little above the official file's size: a download past it is not this file

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Fetching:
    """How one obtain call may fetch: the user's checksum, progress, retries and limits."""

    checksum: Checksum | None = None
    progress: ProgressFn | None = None
    backoff_s: float = 1.0
    limits: DownloadLimits = field(default_factory=DownloadLimits)


class DatasetSource(ABC):
    """Obtains a dataset's images (an archive or a folder) into `downloads`."""

    @abstractmethod
    def obtain(self, dataset: str, downloads: Path, how: Fetching) -> RawArchive: ...


@dataclass(frozen=True)
class OfficialDownload(DatasetSource):
    """The catalogued archive (and label tables) from the official URLs, verified by the official md5 and
    capped at the catalogued size."""

    archive: RemoteFile
    companions: tuple[RemoteFile, ...] = ()

    def obtain(self, dataset: str, downloads: Path, how: Fetching) -> RawArchive:
        started = time.perf_counter()
        fetched = fetch(self.archive.url, downloads, checksum=Checksum("md5", self.archive.md5),
                        progress=how.progress, backoff_s=how.backoff_s,
                        limits=replace(how.limits, max_bytes=self.archive.max_bytes))
        companions = {c.filename: str(fetch(c.url, downloads, checksum=Checksum("md5", c.md5), backoff_s=how.backoff_s,
                                            limits=replace(how.limits, max_bytes=c.max_bytes)).path)
                      for c in self.companions}
        return RawArchive(dataset, "archive", str(fetched.path), redact(self.archive.url), fetched.sha256,
                          fetched.size, companions, fetched.downloaded, time.perf_counter() - started)


@dataclass(frozen=True)
class ArchiveAt(DatasetSource):
    """An archive at a mirror URL or a local path, verified by the user's checksum. Label tables the dataset
    needs are looked for next to it under their official names, and taken as they are (parsed strictly later)."""

    location: str
    companions: tuple[RemoteFile, ...] = ()

    def obtain(self, dataset: str, downloads: Path, how: Fetching) -> RawArchive:
        started = time.perf_counter()
        fetched = fetch(self.location, downloads, checksum=how.checksum, progress=how.progress,
                        backoff_s=how.backoff_s, limits=how.limits)
        companions = {c.filename: str(fetch(self._beside(c), downloads, backoff_s=how.backoff_s,
                                            limits=replace(how.limits, max_bytes=c.max_bytes)).path)
                      for c in self.companions}
        return RawArchive(dataset, "archive", str(fetched.path), redact(self.location), fetched.sha256,
                          fetched.size, companions, fetched.downloaded, time.perf_counter() - started)

    def _beside(self, companion: RemoteFile) -> str:
        if is_url(self.location):
            return urllib.parse.urljoin(self.location, companion.filename)
        return str(Path(self.location).expanduser().parent / companion.filename)


@dataclass(frozen=True)
class ImageFolder(DatasetSource):
    """A folder of images used in place; its identity is a digest of names, sizes and modification times."""

    location: str

    def obtain(self, dataset: str, downloads: Path, how: Fetching) -> RawArchive:
        started = time.perf_counter()
        folder = local_path(self.location).resolve()
        digest = hashlib.sha256()
        for name in list_images(folder):
            stat = (folder / name).stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        return RawArchive(dataset, "folder", str(folder), self.location, digest.hexdigest(), size, {}, False,
                          time.perf_counter() - started)


@dataclass(frozen=True)
class Generated(DatasetSource):
    """Procedurally drawn flowers, made locally: the demo's data, always labelled synthetic."""

    classes: int = 8
    per_class: int = 40

    def obtain(self, dataset: str, downloads: Path, how: Fetching) -> RawArchive:
        started = time.perf_counter()
        archive = downloads / "synthetic-flowers.tgz"
        if not archive.is_file():
            write_synthetic_archive(archive, num_classes=self.classes, per_class=self.per_class)
        fetched = fetch(str(archive), downloads, checksum=how.checksum)
        return RawArchive(dataset, "synthetic", str(fetched.path), "generated locally (synthetic drawings, not photos)",
                          fetched.sha256, fetched.size, {}, fetched.downloaded, time.perf_counter() - started)


def source_for(dataset: str, catalogued: DatasetSource | None, given: str | None,
               checksum: Checksum | None) -> DatasetSource:
    """The branch point: the user's --source (a folder, or an archive at a URL or path), else the catalogue's."""
    if given is None:
        if catalogued is None:
            raise PipelineError(f"{dataset} needs --source: an archive (.tgz/.tar/.zip), a folder or a URL")
        return catalogued
    if not is_url(given) and local_path(given).is_dir():
        return ImageFolder(given)
    if isinstance(catalogued, OfficialDownload):
        if checksum is None:
            raise PipelineError(f"a --source for {dataset} needs --sha256 or --md5: the official md5 only fits the "
                                "official file")
        return ArchiveAt(given, catalogued.companions)
    return ArchiveAt(given)


# --- labels -----------------------------------------------------------------------------------------------------


class Labels(ABC):
    """Class labels for image names (relative paths under the extraction root)."""

    @abstractmethod
    def label(self, names: list[str], companions: dict[str, str]) -> tuple[np.ndarray, list[str]]: ...

    def class_of(self, name: str) -> int | None:
        """The class a (skipped) image would have had, where the name alone says it."""
        return None


@dataclass(frozen=True)
class FileOrder(Labels):
    """Classes of `per_class` consecutive image numbers, as Flowers-17 ships."""

    per_class: int
    classes: int

    def label(self, names: list[str], companions: dict[str, str]) -> tuple[np.ndarray, list[str]]:
        labels = np.array([self.class_of(n) for n in names], np.int64)
        return labels, [f"class_{i:02d}" for i in range(self.classes)]

    def class_of(self, name: str) -> int:
        return (image_number(name) - 1) // self.per_class


@dataclass(frozen=True)
class LabelTable(Labels):
    """Flowers-102's imagelabels.mat: one 1-based label per image number."""

    table: str = "imagelabels.mat"

    def label(self, names: list[str], companions: dict[str, str]) -> tuple[np.ndarray, list[str]]:
        from scipy.io import loadmat

        path = companions.get(self.table)
        if not path:
            raise PipelineError(f"{self.table} was not fetched")
        table = np.asarray(loadmat(path)["labels"]).ravel().astype(np.int64)
        numbers = [image_number(n) for n in names]
        if max(numbers) > len(table):
            raise PipelineError(f"{self.table} has {len(table)} labels, but image number {max(numbers)} exists")
        return table[np.array(numbers) - 1] - 1, [f"class_{i:03d}" for i in range(int(table.max()))]


@dataclass(frozen=True)
class TopFolders(Labels):
    """One class per top-level folder of a user's collection; a single class when there are none."""

    def label(self, names: list[str], companions: dict[str, str]) -> tuple[np.ndarray, list[str]]:
        folders = [n.split("/")[0] if "/" in n else "all" for n in names]
        class_names = sorted(set(folders))
        return np.array([class_names.index(f) for f in folders], np.int64), class_names


def image_number(name: str) -> int:
    match = re.search(r"(\d+)\D*$", name)
    if not match:
        raise PipelineError(f"cannot read an image number from {name!r}")
    return int(match.group(1))
