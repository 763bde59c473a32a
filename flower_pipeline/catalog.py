"""The datasets the pipeline knows, and the variants made of them.

A dataset is where photos come from: a catalogued one (Flowers-17, Flowers-102,
the synthetic stand-in) or a user's collection under a name of their own. A
variant is dataset × colour mode × image side, e.g. `flowers17-gray-64`: the
unit that has its own tensor cache, trainings and registered models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flower_pipeline.errors import PipelineError
from flower_pipeline.sources import (
    DatasetSource,
    FileOrder,
    Generated,
    Labels,
    LabelTable,
    OfficialDownload,
    RemoteFile,
    TopFolders,
)

OXFORD_17 = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
OXFORD_102 = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: where its photos come from (`source`; None: the user gives --source) and how they are
    labelled. `expected_images` is the catalogued count the image_count check compares with."""

    name: str
    title: str
    source: DatasetSource | None
    labels: Labels
    expected_images: int | None = None
    synthetic: bool = False


DATASETS: dict[str, DatasetSpec] = {
    "flowers17": DatasetSpec(
        name="flowers17",
        title="Oxford Flowers-17",
        source=OfficialDownload(
            RemoteFile(OXFORD_17 + "17flowers.tgz", "b59a65d8d1a99cd66944d474e1289eab", 80_000_000)),
        labels=FileOrder(per_class=80, classes=17),
        expected_images=1360,
    ),
    "flowers102": DatasetSpec(
        name="flowers102",
        title="Oxford Flowers-102",
        source=OfficialDownload(
            RemoteFile(OXFORD_102 + "102flowers.tgz", "52808999861908f626f3c1f4e79d11fa", 400_000_000),
            companions=(RemoteFile(OXFORD_102 + "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d", 1_000_000),
                        RemoteFile(OXFORD_102 + "setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c", 1_000_000))),
        labels=LabelTable(),
        expected_images=8189,
    ),
    "synthetic": DatasetSpec(
        name="synthetic",
        title="Synthetic flowers (procedurally drawn, not real photos)",
        source=Generated(classes=8, per_class=40),
        labels=FileOrder(per_class=40, classes=8),
        expected_images=320,
        synthetic=True,
    ),
}

CATALOGUED = tuple(DATASETS)
CUSTOM = "custom"  # what `prepare --dataset` takes for a user's collection, named with --name
MODES = ("color", "gray")
CROPS = ("center", "pad", "stretch")
DEFAULT_CROP = "center"
DEFAULT_HOLDOUT = 0.1  # share of each class held out of training, for evaluation
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def custom_name(name: str) -> str:
    """A user's collection name, checked: a plain slug that no catalogued dataset uses."""
    if not _SLUG.fullmatch(name):
        raise PipelineError(f"collection name {name!r} is not a plain slug: use letters, digits, '-' and '_', "
                            "at most 64 characters, starting with a letter or digit")
    if name in CATALOGUED or name == CUSTOM:
        raise PipelineError(f"collection name {name!r} is taken by a catalogued dataset; choose another")
    return name


def get_dataset(name: str) -> DatasetSpec:
    """A catalogued dataset, or a user's collection (classes from its top-level folders)."""
    if name in DATASETS:
        return DATASETS[name]
    return DatasetSpec(name=custom_name(name), title=f"{name} (your photos)", source=None, labels=TopFolders())


def check_size(size: int) -> int:
    """Image sides the networks take: powers of two from 16 to 512."""
    if not (16 <= size <= 512 and size & (size - 1) == 0):
        raise PipelineError(f"image size must be one of 16, 32, 64, 128, 256 or 512, got {size}")
    return size


@dataclass(frozen=True)
class Variant:
    """Dataset × colour mode × image side: `flowers17-color-64`, `roses-gray-128`."""

    dataset: str
    mode: str = "color"
    size: int = 64

    def __post_init__(self) -> None:
        get_dataset(self.dataset)
        if self.mode not in MODES:
            raise PipelineError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_size(self.size)

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.mode}-{self.size}"

    @property
    def channels(self) -> int:
        return 3 if self.mode == "color" else 1

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.rsplit("-", 2)
        if len(parts) != 3 or not parts[2].isdigit():
            raise PipelineError(f"{name!r} is not a variant name: <dataset>-<color|gray>-<size>, "
                                "e.g. flowers17-gray-64")
        return cls(parts[0], parts[1], int(parts[2]))
