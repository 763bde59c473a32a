"""The datasets the pipeline knows, with their official sources and checksums."""

from __future__ import annotations

from dataclasses import dataclass, field

from flower_pipeline.errors import PipelineError

OXFORD_17 = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
OXFORD_102 = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain one dataset and how to read its labels.

    `labels` names the labelling scheme: "file_order" (classes of
    `images_per_class` consecutive files, as Flowers-17 ships), "imagelabels_mat"
    (Flowers-102's imagelabels.mat) or "folders" (one class per top-level folder
    of a user's archive, a single class when there are none).
    """

    name: str
    title: str
    archive: RemoteFile | None
    companions: tuple[RemoteFile, ...] = field(default=())
    expected_images: int | None = None
    num_classes: int | None = None
    images_per_class: int | None = None
    labels: str = "file_order"
    synthetic: bool = False


DATASETS: dict[str, DatasetSpec] = {
    "flowers17": DatasetSpec(
        name="flowers17",
        title="Oxford Flowers-17",
        archive=RemoteFile(OXFORD_17 + "17flowers.tgz", "b59a65d8d1a99cd66944d474e1289eab"),
        expected_images=1360,
        num_classes=17,
        images_per_class=80,
    ),
    "flowers102": DatasetSpec(
        name="flowers102",
        title="Oxford Flowers-102",
        archive=RemoteFile(OXFORD_102 + "102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"),
        companions=(
            RemoteFile(OXFORD_102 + "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
            RemoteFile(OXFORD_102 + "setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
        ),
        expected_images=8189,
        num_classes=102,
        labels="imagelabels_mat",
    ),
    "synthetic": DatasetSpec(
        name="synthetic",
        title="Synthetic flowers (procedurally drawn, not real photos)",
        archive=None,
        expected_images=320,
        num_classes=8,
        images_per_class=40,
        synthetic=True,
    ),
    "custom": DatasetSpec(
        name="custom",
        title="Your own photos",
        archive=None,
        labels="folders",
    ),
}

DATASET_NAMES = tuple(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise PipelineError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
