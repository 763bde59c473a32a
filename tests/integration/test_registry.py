"""Train → evaluate → register through Dagster, against a SQLite store and a real `mlflow server` on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from conftest import cli_main, prepare, run_job, tiny_training, wait_until_serving
from mlflow.tracking._tracking_service import utils as tracking_utils

from flower_pipeline.defs.partitions import training_key
from flower_pipeline.errors import PipelineError
from flower_pipeline.models import FlowerGenerator
from flower_pipeline.registry import list_models, load_generator, tracking
from flower_pipeline.tracking import MlflowTracker

VARIANT = "synthetic-color-32"
KEY = training_key(VARIANT, "arch1")
MODEL = f"{VARIANT}-arch1"
TINY = tiny_training()
LENIENT = {"samples": 32, "inception_weights": "off", "min_colour_coverage": 0.0, "max_near_copy_share": 1.0,
           "min_recall": 0.0}
STRICT = {**LENIENT, "max_fd_flowers": 0.0}  # no version can pass (a Fréchet distance is never 0): never promoted


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
        wait_until_serving(f"{url}/health", server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(params=["sqlite", "server"])
def store(request, tmp_path, monkeypatch) -> MlflowTracker:
    """The MLflow store the pipeline reaches: SQLite in the data folder, or a server named by MLFLOW_TRACKING_URI."""
    if request.param == "sqlite":
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return tracking(data_dir=tmp_path / "data")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", request.getfixturevalue("mlflow_server"))
    return tracking(data_dir=tmp_path / "data")


def _chain(instance: dg.DagsterInstance, data, training: dict | None = None, evaluation: dict | None = None,
           assets: list[str] | None = None) -> dg.ExecuteInProcessResult:
    ops = {}
    if training is not None:
        ops["trained_generator"] = {"config": training}
    if evaluation is not None:
        ops["generator_evaluation"] = {"config": evaluation}
    return run_job(instance, "retrain_generators", KEY, data, ops, assets=assets)


def _meta(result: dg.ExecuteInProcessResult, node: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_every_training_registers_a_version_and_only_a_better_one_is_champion(tmp_path, store):
    data = tmp_path / "data"
    global_uri = (tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"))
    with dg.instance_for_test() as instance:
        assert prepare(instance, data, VARIANT).success

        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            first = _chain(instance, data, TINY, LENIENT)
        assert first.success
        assert not [w for w in warned if "signature" in str(w.message) or "input example" in str(w.message)]
        evaluated = _meta(first, "generator_evaluation")
        assert 0 < evaluated["d_real_holdout_mean"] < 1 and 0 < evaluated["d_fake_mean"] < 1
        assert "fid" not in evaluated and evaluated["fid_status"] == "unavailable: turned off (inception_weights: off)"
        for picture in ("samples", "timeline", "nearest_pairs", "colours"):
            assert "data:image/png;base64," in evaluated[picture], picture
        headline = {record.data["metric"]: record.data for record in evaluated["headline"].records}
        assert [c.name for c in evaluated["headline"].schema.columns] == ["metric", "title", "value", "better"]
        assert headline["d_fake_mean"]["better"] == "0.5" and headline["fd_flowers"]["title"] == "fd_flowers"
        checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
        assert checks == {"scores_in_range": True, "quality_gate": True}
        assert {e.partition for e in first.get_asset_check_evaluations()} == {str(KEY)}  # shown in the UI
        registered = first.output_for_node("registered_generator")
        assert (registered.model, registered.version, registered.promotion) == (MODEL, 1, "champion")
        link = first.asset_materializations_for_node("registered_generator")[0].metadata["model_version"]
        # A server: into its own UI; a database store: into the local `mlflow ui` over it, which the demo prints.
        ui = store.uri if store.uri.startswith("http") else "http://127.0.0.1:5000"
        assert isinstance(link, dg.UrlMetadataValue) and link.value == f"{ui}/#/models/{MODEL}/versions/1"

        second = _chain(instance, data, {**TINY, "seed": 1}, STRICT)
        assert {e.check_name: e.passed for e in second.get_asset_check_evaluations()}["quality_gate"] is False
        registered = second.output_for_node("registered_generator")
        assert registered.version == 2 and registered.promotion == "not promoted"
        assert registered.reason.startswith("quality gate failed: fd_flowers")
        assert registered.champion_version == 1

        retried = _chain(instance, data, assets=["registered_generator"])  # a retried step: no third version
        assert retried.output_for_node("registered_generator").version == 2
    assert (tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")) == global_uri  # left as it was

    rows = list_models(data_dir=data)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        (MODEL, "2", ["latest"]), (MODEL, "1", ["champion"])]
    tags = rows[1]["tags"]
    assert tags["variant"] == VARIANT and tags["arch"] == "arch1" and len(tags["cache_hash"]) == 64
    assert '"iterations": 6' in tags["config"] and tags["code_version"].startswith("0.1.0")
    assert 0 < float(tags["eval.d_fake_mean"]) < 1 and tags["promotion"] == "champion"
    assert rows[0]["tags"]["promotion_reason"].startswith("quality gate failed")
    version = store.client().get_model_version(MODEL, "1")
    assert version.description.count("unavailable") == 1  # each fact said once
    logged = store.client().get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == MODEL and json.loads(logged.tags["mlflow.modelVersions"]) == [
        {"name": MODEL, "version": 1}]  # the logged model lists its registered version
    assert store.client().get_experiment_by_name("flower-pipeline").tags["mlflow.experimentKind"] == \
        "custom_model_development"
    run = store.client().get_run(version.run_id)
    assert "eval_d_fake_mean" in run.data.metrics and run.data.tags["promotion"] == "champion"
    pictures = [a.path for a in store.client().list_artifacts(version.run_id, "images")]
    assert any(p.startswith("images/evaluation_samples+step+6+") for p in pictures), pictures

    # The champion loads through MLflow's pyfunc too (models from code: no pickle), and makes the same images.
    mlflow.set_tracking_uri(store.uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    stored = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(tmp_path / "model")))
    code_or_weights = sorted(str(f.relative_to(stored)) for f in stored.rglob("*") if f.suffix in (".py", ".pt",
                                                                                                 ".pth", ".pkl"))
    assert code_or_weights == ["artifacts/generator.pt", "mlflow_model.py"]  # the latter: imports the package
    assert not (stored / "code").exists()  # no copy of the package's code rides along
    by_version = load_generator(MODEL, version=1, data_dir=data)
    assert isinstance(by_version, FlowerGenerator) and by_version.generate(4, seed=7).shape == (4, 3, 32, 32)
    served = model.unwrap_python_model().generator
    np.testing.assert_array_equal(served.generate(4, seed=7), by_version.generate(4, seed=7))
    z = np.random.default_rng(0).standard_normal((2, served.latent_dim)).astype(np.float32)
    assert model.predict(z).shape == (2, 3, 32, 32)
    latest = load_generator(MODEL, alias="latest", data_dir=data)
    assert not np.array_equal(latest.generate(4, seed=7), by_version.generate(4, seed=7))  # v2: another seed
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(f"models:/{MODEL}@latest").unwrap_python_model()
                                  .generator.generate(4, seed=7), latest.generate(4, seed=7))  # the newest version

    with pytest.raises(PipelineError, match=f"no registered model 'nope'; registered: {MODEL}"):
        load_generator("nope", data_dir=data)
    with pytest.raises(PipelineError, match=r"no alias 'best'; aliases: champion \(v1\), latest \(v2\)"):
        load_generator(MODEL, alias="best", data_dir=data)
    with pytest.raises(PipelineError, match="no version 9; versions: 1, 2"):
        load_generator(MODEL, version=9, data_dir=data)


def test_an_evaluation_whose_mlflow_step_failed_is_never_registered(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with dg.instance_for_test() as instance:
        assert prepare(instance, data, VARIANT).success
        assert _chain(instance, data, TINY, assets=["trained_generator"]).success
        # Evaluation against a store that has no such run: its MLflow step fails after the metrics are computed.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
        failed = _chain(instance, data, TINY, LENIENT, assets=["generator_evaluation"])
        assert not failed.success
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        alone = _chain(instance, data, assets=["registered_generator"])  # registration run on its own later
        assert not alone.success
        failure = alone.get_step_failure_events()[0].step_failure_data.user_failure_data.description
        assert "no output of generator_evaluation" in failure
    assert list_models(data_dir=data) == []


def test_registry_default_store_lives_in_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking(data_dir=tmp_path / "data").uri == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
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


def test_tracker_calls_in_the_background_wait_out_an_outage_in_order_and_fail_after_it():
    import requests

    from flower_pipeline.tracking import InBackground

    sent, down_until = [], time.monotonic() + 0.5

    def log(step: int) -> None:
        if time.monotonic() < down_until:
            raise requests.ConnectionError("Connection refused")
        sent.append(step)

    background, started = InBackground(outage_seconds=5, retry_every=0.05), time.monotonic()
    for step in range(100):
        background.call(log, step)
    assert time.monotonic() - started < 0.2  # the caller never waited for the server
    background.flush()
    assert sent == list(range(100))  # all of them, in order, once it was back

    never = InBackground(outage_seconds=0.3, retry_every=0.05)
    never.call(lambda: (_ for _ in ()).throw(requests.ConnectionError("Connection refused")))
    with pytest.raises(requests.ConnectionError):
        never.flush()  # out of time: the step fails with MLflow's error


def test_scored_snapshots_register_the_best_when_the_last_is_spoiled(tmp_path, capsys, monkeypatch):
    """eval_every keeps and scores a snapshot every 2 of 6 iterations. The final generator is spoiled (its
    weights replaced by large noise): the best snapshot is an earlier one, is evaluated in full and registered,
    and MLflow lists every snapshot as a LoggedModel of the run with its metrics."""
    data = tmp_path / "data"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with dg.instance_for_test() as instance:
        assert prepare(instance, data, VARIANT).success
        trained = _chain(instance, data, {**TINY, "eval_every": 2}, assets=["trained_generator"])
        assert trained.success
        run = Path(trained.output_for_node("trained_generator").path)
        assert sorted(p.name for p in run.glob("generator*.pt")) == [
            "generator.pt", "generator_000002.pt", "generator_000004.pt"]
        final = torch.load(run / "generator.pt", weights_only=True)
        noise = torch.Generator().manual_seed(0)  # weights of another scale: saturated pixel noise
        final["state_dict"] = {k: torch.randn(v.shape, generator=noise) * 10 if v.is_floating_point() else v
                               for k, v in final["state_dict"].items()}
        torch.save(final, run / "generator.pt")
        judged = {**LENIENT, "samples": 120}  # fd_effnet needs more samples than its 112 features
        chained = _chain(instance, data, evaluation=judged, assets=["generator_evaluation", "registered_generator"])
        assert _chain(instance, data, evaluation=judged, assets=["generator_evaluation"]).success  # a retry
    assert chained.success
    evaluation = chained.output_for_node("generator_evaluation")
    scores = {s.iteration: s.metrics for s in evaluation.snapshots}
    assert sorted(scores) == [2, 4, 6] and all(set(m) == {"fd_flowers", "fd_effnet"} for m in scores.values())
    assert evaluation.iteration == min((2, 4), key=lambda it: scores[it]["fd_effnet"])  # ranked by fd_effnet
    assert scores[6]["fd_effnet"] > max(scores[2]["fd_effnet"], scores[4]["fd_effnet"])
    assert Path(evaluation.files["metrics"]).parent.name == f"evaluation_{evaluation.iteration:06d}"
    shown = _meta(chained, "generator_evaluation")
    assert shown["chosen_iteration"] == evaluation.iteration and "data:image/png;base64," in shown["snapshots"]
    assert [r.data["chosen"] for r in shown["snapshot_scores"].records].count("yes") == 1
    chosen = next(s.model_id for s in evaluation.snapshots if s.iteration == evaluation.iteration)
    assert shown["chosen_snapshot"].endswith(f"/#/experiments/1/models/{chosen}")  # its page in the MLflow UI

    store = tracking(data_dir=data)
    version = store.client().get_model_version(MODEL, "1")
    assert version.tags["snapshot_iteration"] == str(evaluation.iteration) and version.tags["iterations"] == "6"
    assert f"its snapshot at iteration {evaluation.iteration} (the best of 3 scored)" in version.description
    snapshot = torch.load(run / f"generator_{evaluation.iteration:06d}.pt", weights_only=True)["state_dict"]
    registered = load_generator(MODEL, version=1, data_dir=data).net.state_dict()
    assert all(torch.equal(snapshot[k], registered[k]) for k in snapshot)  # the snapshot's weights, not the last
    mlflow.set_tracking_uri(store.uri)
    logged = mlflow.search_logged_models(experiment_ids=[store.experiment_id()], output_format="list",
                                         filter_string=f"source_run_id = '{evaluation.training.mlflow_run_id}'",
                                         order_by=[{"field_name": "metrics.snapshot_fd_effnet", "ascending": True}])
    snapshots = [m for m in logged if m.name.startswith("snapshot-")]
    assert len(snapshots) == 3 and snapshots[0].name == f"snapshot-{evaluation.iteration:06d}"
    assert {m.model_id for m in snapshots} == {s.model_id for s in evaluation.snapshots}
    assert all({x.key for x in m.metrics} == {"snapshot_fd_flowers", "snapshot_fd_effnet"} for m in snapshots)
    assert [a.path for a in store.client().list_logged_model_artifacts(snapshots[0].model_id)] == [
        f"generator_{evaluation.iteration:06d}.pt"]
    code, out, _ = cli_main(tmp_path, capsys, monkeypatch, "models")
    assert code == 0 and out.splitlines()[0].split()[5] == "ITER" and f" {evaluation.iteration}/6 " in out
