"""The project's structure holds: a Dagster-free core, one home per fact, records of earlier versions still load."""

import json
import shutil

import dagster as dg
import pytest
from conftest import PROJECT

from flower_pipeline.defs.resources import RECORD_ALIASES, FlowerStorage, StageOutputs
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


def test_every_computed_metric_is_declared(tmp_path):
    """A metric computed by the evaluation but missing from metrics.py fails here (it would reach nothing)."""
    from flower_pipeline import metrics

    evaluation = json.loads((RECORDS / "generator_evaluation-0.1.0.json").read_text())["value"]
    undeclared = [k for k in evaluation["metrics"] if not metrics.known(k)]
    assert undeclared == []


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
        (stage / asset).mkdir(parents=True)
        shutil.copy(RECORDS / f"{asset}-0.1.0.json", stage / asset / f"{partition}.json")
    io = StageOutputs(storage=FlowerStorage(data_dir=str(tmp_path)))
    evaluation = io.load_record(dg.AssetKey("generator_evaluation"), "arch1|synthetic-color-32")
    assert isinstance(evaluation, Evaluation) and evaluation.training.arch == "arch1"
    assert evaluation.training.cache.variant == "synthetic-color-32" and evaluation.metrics["recall"] > 0
    assert isinstance(io.load_record(dg.AssetKey("raw_archive"), "synthetic"), RawArchive)
    assert io.load_record(dg.AssetKey("feature_network"), "synthetic-color-32").network_id
    assert all(new.startswith("flower_pipeline.") for new in RECORD_ALIASES.values())


def test_a_record_naming_a_foreign_class_is_refused(tmp_path):
    path = DataLayout(tmp_path).stage_record(["raw_archive"], "synthetic")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"type": "os:system", "value": {}}))
    with pytest.raises(PipelineError, match="not one of the pipeline's record types"):
        StageOutputs(storage=FlowerStorage(data_dir=str(tmp_path))).load_record(dg.AssetKey("raw_archive"),
                                                                                "synthetic")
