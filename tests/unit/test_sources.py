"""Dataset sources behind one interface: the branch point, and a source of a new kind plugged in."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from flower_pipeline.catalog import DATASETS, DatasetSpec, Variant
from flower_pipeline.download import Checksum
from flower_pipeline.errors import PipelineError
from flower_pipeline.ingest import build_tensor_cache, extract_images, fetch_raw_archive, resize_images
from flower_pipeline.layout import DataLayout
from flower_pipeline.sources import (
    ArchiveAt,
    DatasetSource,
    Fetching,
    ImageFolder,
    RawArchive,
    TopFolders,
    source_for,
)
from flower_pipeline.synthetic import write_synthetic_archive


def test_the_branch_point_picks_the_source_by_what_the_user_gave(tmp_path):
    official = DATASETS["flowers17"].source
    assert source_for("flowers17", official, None, None) is official
    assert isinstance(source_for("roses", None, str(tmp_path), None), ImageFolder)
    assert source_for("flowers102", DATASETS["flowers102"].source, "http://127.0.0.1/mirror/102flowers.tgz",
                      Checksum("md5", "0" * 32)).companions  # a mirror brings the label tables along
    with pytest.raises(PipelineError, match="needs --sha256 or --md5"):
        source_for("flowers17", official, "http://127.0.0.1/17flowers.tgz", None)
    with pytest.raises(PipelineError, match="needs --source"):
        source_for("roses", None, None, None)
    assert isinstance(source_for("roses", None, str(tmp_path / "roses.tgz"), None), ArchiveAt)


@dataclass(frozen=True)
class DrawnOnDemand(DatasetSource):
    """A source of a kind the project does not ship: it makes its archive itself."""

    def obtain(self, dataset: str, downloads: Path, how: Fetching) -> RawArchive:
        archive = write_synthetic_archive(downloads / "drawn.tgz", num_classes=2, per_class=4)
        return RawArchive(dataset, "archive", str(archive), "drawn on demand", "0" * 64, archive.stat().st_size, {},
                          True, 0.0)


def test_a_new_kind_of_source_runs_the_whole_ingest(tmp_path, monkeypatch):
    spec = DatasetSpec("drawn", "Drawn on demand", DrawnOnDemand(), TopFolders())
    monkeypatch.setitem(DATASETS, "drawn", spec)
    layout = DataLayout(tmp_path)
    raw = fetch_raw_archive(layout, spec)
    extracted = extract_images(raw, layout)
    variant = Variant("drawn", "gray", 16)
    ref = build_tensor_cache(extracted, resize_images(extracted, variant, layout), layout, holdout_fraction=0.25)
    assert ref.count == 8 and ref.shape == [8, 1, 16, 16] and Path(ref.path).is_relative_to(tmp_path / "drawn")
