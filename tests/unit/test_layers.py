"""The project's structure holds: a Dagster-free core, one home per fact, records of earlier versions still load."""

import json
from pathlib import Path

import dagster as dg
import pytest
from conftest import PROJECT

from flower_pipeline.defs.resources import FlowerStorage, StageOutputs
from flower_pipeline.errors import PipelineError
from flower_pipeline.layout import DataLayout
from flower_pipeline.metrics import BY_NAME, HEADLINE, METRICS, run_metrics, version_tags
from flower_pipeline.runs import Evaluation
from flower_pipeline.sources import RawArchive

RECORDS = PROJECT / "tests" / "records"


def test_each_metric_is_declared_once_and_reaches_mlflow_and_the_registry():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    metrics = {name: 0.5 for name in names}
    assert set(run_metrics(metrics)) == {f"eval_{n}" for n in names}  # every metric reaches the run
    assert set(version_tags(metrics)) == {f"eval.{n}" for n in HEADLINE}  # the headline ones tag the version
    assert BY_NAME["fid"].better == "lower" and BY_NAME["recall"].better == "higher"


def test_names_become_paths_only_inside_the_data_root(tmp_path):
    layout = DataLayout(tmp_path)
    assert layout.training("flowers17", "flowers17-color-64", "arch1", "abc") == \
        tmp_path / "flowers17" / "training" / "flowers17-color-64" / "arch1" / "abc"
    assert layout.stage_record(["trained_generator"], "arch1|flowers17-color-64").name == \
        "arch1__flowers17-color-64.json"
    for hostile in ("../up", "a/b", "..", ".hidden", ""):
        with pytest.raises(PipelineError, match="cannot name a folder"):
            layout.study_run("source", "quick", hostile, "key")


def test_records_written_by_earlier_versions_still_load(tmp_path):
    """Records stored under their classes' old module paths (0.1.0, before the renovation) load through the
    IO manager's alias table."""
    stage = tmp_path / "stage_outputs"
    for asset, partition in (("generator_evaluation", "arch1__synthetic-color-32"), ("raw_archive", "synthetic"),
                             ("feature_network", "synthetic-color-32")):
        (stage / asset).mkdir(parents=True)  # written in a data folder at /tmp/base/data: moved here
        text = (RECORDS / f"{asset}-0.1.0.json").read_text().replace("/tmp/base/data", str(tmp_path))
        (stage / asset / f"{partition}.json").write_text(text)
    io = StageOutputs(storage=FlowerStorage(data_dir=str(tmp_path)))
    evaluation = io.load_record(dg.AssetKey("generator_evaluation"), "arch1|synthetic-color-32")
    assert isinstance(evaluation, Evaluation) and evaluation.training.arch == "arch1"
    assert evaluation.training.cache.variant == "synthetic-color-32" and evaluation.metrics["recall"] > 0
    assert isinstance(io.load_record(dg.AssetKey("raw_archive"), "synthetic"), RawArchive)
    assert io.load_record(dg.AssetKey("feature_network"), "synthetic-color-32").network_id


def _plant(root: Path, asset: str, partition: str, record: object) -> StageOutputs:
    path = DataLayout(root).stage_record([asset], partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return StageOutputs(storage=FlowerStorage(data_dir=str(root)))


def _cache_record(path: str) -> dict:
    return {"type": "flower_pipeline.ingest:TensorCacheRef", "value": {
        "variant": "synthetic-color-32", "path": path, "content_hash": "h", "count": 1, "shape": [1, 3, 32, 32],
        "class_counts": {"a": 1}, "expected_images": 1, "skipped": {}, "reused": False, "seconds": 0.1}}


@pytest.mark.parametrize("name", ["os:system", "flower_pipeline.scaleout.supervisor:supervise",
                                  "flower_pipeline.cli.main:main", "flower_pipeline.ingest:Variant",
                                  "flower_pipeline.storage:atomic_write_json", 7])
def test_a_record_naming_anything_but_a_record_type_is_refused_and_nothing_is_called(tmp_path, monkeypatch, name):
    import importlib

    called = []  # what the record names, replaced by a recorder: were it called, the test would see it
    for module, function in (("flower_pipeline.scaleout.supervisor", "supervise"),
                             ("flower_pipeline.cli.main", "main")):
        monkeypatch.setattr(importlib.import_module(module), function, lambda *a, **k: called.append(a))
    io = _plant(tmp_path, "raw_archive", "synthetic", {"type": name, "value": {"argv": ["prepare"]}})
    with pytest.raises(PipelineError, match=r"raw_archive/synthetic\.json names .* not one of the pipeline's record"):
        io.load_record(dg.AssetKey("raw_archive"), "synthetic")
    assert called == []


def test_paths_in_records_stay_inside_the_data_root(tmp_path):
    """Absolute, climbing and symlinked paths out of the data folder are refused before anything reads them."""
    root, outside = tmp_path / "data", tmp_path / "outside"
    (outside / "cache").mkdir(parents=True)
    (root / "synthetic" / "cache").mkdir(parents=True)
    (root / "synthetic" / "cache" / "link").symlink_to(outside / "cache")
    for path in (str(outside / "cache"), str(root / "synthetic" / ".." / ".." / "outside" / "cache"),
                 str(root / "synthetic" / "cache" / "link"), "relative/cache"):
        io = _plant(root, "tensor_cache", "synthetic-color-32", _cache_record(path))
        with pytest.raises(PipelineError, match=r"tensor_cache/synthetic-color-32\.json is refused: "
                                                r"TensorCacheRef\.path .* is outside the data folder"):
            io.load_record(dg.AssetKey("tensor_cache"), "synthetic-color-32")
    inside = str(root / "synthetic" / "cache" / "abc")
    io = _plant(root, "tensor_cache", "synthetic-color-32", _cache_record(inside))
    assert io.load_record(dg.AssetKey("tensor_cache"), "synthetic-color-32").path == inside


@pytest.mark.parametrize(("change", "message"), [
    ({"count": "1"}, r"TensorCacheRef\.count is str, not int"),
    ({"shape": {"a": 1}}, r"TensorCacheRef\.shape is dict, not list"),
    ({"reused": 1}, r"TensorCacheRef\.reused is int, not bool"),
    ({"surprise": 1}, r"TensorCacheRef has an unknown field 'surprise'"),
    ({"variant": None}, r"TensorCacheRef\.variant is NoneType, not str"),
])
def test_record_fields_are_checked_against_their_types(tmp_path, change, message):
    record = _cache_record(str(tmp_path / "synthetic" / "cache" / "abc"))
    record["value"].update(change)
    io = _plant(tmp_path, "tensor_cache", "synthetic-color-32", record)
    with pytest.raises(PipelineError, match=message):
        io.load_record(dg.AssetKey("tensor_cache"), "synthetic-color-32")


def test_a_missing_field_a_truncated_or_a_huge_record_names_its_file(tmp_path):
    record = _cache_record(str(tmp_path / "synthetic" / "cache" / "abc"))
    del record["value"]["count"]
    for planted, message in ((record, r"is refused: TensorCacheRef: .*missing 1 required .*'count'"),
                             (json.dumps(_cache_record("x"))[:60], r"is not valid JSON \(truncated or damaged"),
                             (" " * (1 << 20) + "{}", r"is larger than 1 MiB")):
        io = _plant(tmp_path, "tensor_cache", "synthetic-color-32", planted)
        with pytest.raises(PipelineError, match=r"stage record \S*tensor_cache/synthetic-color-32\.json " + message):
            io.load_record(dg.AssetKey("tensor_cache"), "synthetic-color-32")


def test_an_atomic_write_gets_the_umasks_mode_not_the_temp_files(tmp_path):
    """A report or a record is as readable as the user's other files (a temp file is 0600)."""
    import os

    from flower_pipeline.storage import atomic_write_bytes

    saved = os.umask(0o027)
    try:
        written = atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    finally:
        os.umask(saved)
    assert written.stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".report.html.*"))  # no temp file left behind
