"""Train → evaluate → register through Dagster, against a SQLite store and a real `mlflow server` on 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import mlflow.pytorch
import numpy as np
import pytest

from flower_pipeline.defs.evaluation import generator_evaluation
from flower_pipeline.defs.ingest import extracted_images, raw_archive, resized_images, tensor_cache
from flower_pipeline.defs.mlflow_tracking import MlflowTracking
from flower_pipeline.defs.registry import registered_generator
from flower_pipeline.defs.resources import FlowerStorage
from flower_pipeline.defs.training import trained_generator
from flower_pipeline.errors import PipelineError
from flower_pipeline.models import FlowerGenerator
from flower_pipeline.registry import list_models, load_generator

KEY = dg.MultiPartitionKey({"dataset": "synthetic", "arch": "arch1"})
TINY = {"iterations": 6, "batch_size": 8, "features": 8, "log_every": 3, "sample_every": 3, "checkpoint_seconds": 0,
        "device": "cpu"}
LENIENT = {"samples": 32, "inception_weights": "off", "min_colour_coverage": 0.0, "max_near_copy_share": 1.0}
STRICT = {**LENIENT, "min_colour_coverage": 1.01}  # no version can pass: never promoted


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server with a SQLite store and proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(params=["sqlite", "server"])
def tracking(request, tmp_path) -> MlflowTracking:
    if request.param == "sqlite":
        return MlflowTracking(data_dir=str(tmp_path / "data"))
    return MlflowTracking(tracking_uri=request.getfixturevalue("mlflow_server"), data_dir=str(tmp_path / "data"))


def _run(assets: list, instance: dg.DagsterInstance, resources: dict, training: dict | None = None,
         evaluation: dict | None = None) -> dg.ExecuteInProcessResult:
    ops = {}
    if training is not None:
        ops["trained_generator"] = {"config": training}
    if evaluation is not None:
        ops["generator_evaluation"] = {"config": evaluation}
    return dg.materialize(assets, partition_key=KEY, instance=instance, resources=resources, run_config={"ops": ops})


def _meta(result: dg.ExecuteInProcessResult, node: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_every_training_registers_a_version_and_only_a_better_one_is_champion(tmp_path, tracking):
    resources = {"storage": FlowerStorage(data_dir=str(tmp_path / "data")), "mlflow": tracking}
    chain = [trained_generator, generator_evaluation, registered_generator]
    with dg.instance_for_test() as instance:
        assert dg.materialize([raw_archive, extracted_images, resized_images, tensor_cache], partition_key="synthetic",
                              instance=instance, resources=resources,
                              run_config={"ops": {"resized_images": {"config": {"size": 32}}}}).success

        first = _run(chain, instance, resources, TINY, LENIENT)
        evaluated = _meta(first, "generator_evaluation")
        assert 0 < evaluated["d_real_holdout_mean"] < 1 and 0 < evaluated["d_fake_mean"] < 1
        assert evaluated["fid"] == "unavailable: turned off (inception_weights: off)"
        for picture in ("samples", "timeline", "nearest_pairs", "colours"):
            assert "data:image/png;base64," in evaluated[picture], picture
        checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
        assert checks == {"scores_in_range": True, "quality_gate": True}
        registered = _meta(first, "registered_generator")
        assert (registered["model"], registered["version"], registered["promotion"]) == ("synthetic-arch1", 1,
                                                                                         "champion")

        second = _run(chain, instance, resources, {**TINY, "seed": 1}, STRICT)
        assert {e.check_name: e.passed for e in second.get_asset_check_evaluations()}["quality_gate"] is False
        registered = _meta(second, "registered_generator")
        assert registered["version"] == 2 and registered["promotion"] == "not promoted"
        assert registered["reason"].startswith("quality gate failed: colour_coverage")
        assert registered["champion_version"] == 1

        retried = _run([registered_generator], instance, resources)  # a retried step: no third version
        assert _meta(retried, "registered_generator")["version"] == 2

    rows = list_models(tracking_uri=tracking.tracking_uri, data_dir=tracking.data_dir)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        ("synthetic-arch1", "2", ["latest"]), ("synthetic-arch1", "1", ["champion"])]
    tags = rows[1]["tags"]
    assert tags["dataset"] == "synthetic" and tags["arch"] == "arch1" and len(tags["cache_hash"]) == 64
    assert '"iterations": 6' in tags["config"] and tags["code_version"].startswith("0.1.0")
    assert 0 < float(tags["eval.d_fake_mean"]) < 1 and tags["promotion"] == "champion"
    assert rows[0]["tags"]["promotion_reason"].startswith("quality gate failed")
    run = tracking.client().get_run(tracking.client().get_model_version("synthetic-arch1", "1").run_id)
    assert "eval_d_fake_mean" in run.data.metrics and run.data.tags["promotion"] == "champion"

    # The champion is a plain MLflow PyTorch model that makes images.
    mlflow.set_tracking_uri(tracking.uri)
    model = mlflow.pytorch.load_model("models:/synthetic-arch1@champion")
    assert isinstance(model, FlowerGenerator) and model.generate(4, seed=7).shape == (4, 3, 32, 32)
    by_version = load_generator("synthetic-arch1", version=1, tracking_uri=tracking.tracking_uri,
                                data_dir=tracking.data_dir)
    np.testing.assert_array_equal(model.generate(4, seed=7), by_version.generate(4, seed=7))
    latest = load_generator("synthetic-arch1", alias="latest", tracking_uri=tracking.tracking_uri,
                            data_dir=tracking.data_dir)
    assert not np.array_equal(latest.generate(4, seed=7), by_version.generate(4, seed=7))  # v2: another seed
    np.testing.assert_array_equal(mlflow.pytorch.load_model("models:/synthetic-arch1@latest").generate(4, seed=7),
                                  latest.generate(4, seed=7))  # MLflow's reserved alias: the newest version

    where = {"tracking_uri": tracking.tracking_uri, "data_dir": tracking.data_dir}
    with pytest.raises(PipelineError, match="no registered model 'nope'; registered: synthetic-arch1"):
        load_generator("nope", **where)
    with pytest.raises(PipelineError, match=r"no alias 'best'; aliases: champion \(v1\), latest \(v2\)"):
        load_generator("synthetic-arch1", alias="best", **where)
    with pytest.raises(PipelineError, match="no version 9; versions: 1, 2"):
        load_generator("synthetic-arch1", version=9, **where)


def test_registry_default_store_lives_in_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = MlflowTracking(tracking_uri=None, data_dir=str(tmp_path / "data"))
    assert tracking.uri == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    assert list_models(data_dir=tmp_path / "data") == []
    assert os.path.exists(tmp_path / "data" / "mlflow.db")


def test_an_unreachable_tracking_server_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(PipelineError, match=f"^MLflow at {url} failed: "):
        list_models(tracking_uri=url)
    with pytest.raises(PipelineError, match=f"^MLflow at {url} failed: "):
        load_generator("flowers17-arch1", tracking_uri=url)
