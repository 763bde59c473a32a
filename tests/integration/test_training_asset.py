"""The training partition materialized through Dagster, its run checked in a real (SQLite) MLflow store."""

import dagster as dg
from conftest import prepare, run_job, tiny_training

from flower_pipeline.defs.generator_assets import trained_generator
from flower_pipeline.defs.partitions import training_key
from flower_pipeline.registry import tracking

TINY = tiny_training(batch_size=4, log_every=2)


def test_training_partition_materializes_and_is_tracked_in_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWER_PIPELINE_DAGSTER_URL", "http://127.0.0.1:3000")
    data = tmp_path / "data"
    key = training_key("synthetic-gray-32", "arch1")
    with dg.instance_for_test() as instance:
        cache = prepare(instance, data, "synthetic-gray-32").output_for_node("tensor_cache")
        result = run_job(instance, "retrain_generators", key, data, {"trained_generator": {"config": TINY}},
                         assets=["trained_generator"])
        assert result.success
        trained = result.output_for_node("trained_generator")
        meta = result.asset_materializations_for_node("trained_generator")[0].metadata
        assert trained.iterations == 6 and "data:image/png;base64," in meta["samples"].value
        assert "data:image/png;base64," in meta["curves"].value
        assert trained.cache == cache and meta["cache_hash"].value == cache.content_hash  # one identity
        assert trained_generator.op.pool == "gpu"  # one training per GPU (dagster_home/dagster.yaml)

    client = tracking(data_dir=data).client()
    run = client.get_run(trained.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_run_id"] == result.run_id and run.data.tags["dagster_partition"] == str(key)
    assert run.data.params["arch"] == "arch1" and run.data.params["real_label"] == "0.9"
    assert run.data.params["batch_size"] == "4" and run.data.params["minibatch_discrimination"] == "True"
    assert run.data.params["variant"] == "synthetic-gray-32"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")] == [2, 4, 6]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"final_grid.png", "curves.png", "history.json", "generator.pt", "samples"} <= artifacts
    assert (data / "mlflow.db").is_file() and (data / "mlartifacts").is_dir()
    # Where it came from, what it trained on, and the grids with their steps (MLflow's image slider).
    assert run.data.tags["mlflow.source.name"] == "dagster:retrain_generators" and run.data.tags["mlflow.user"]
    assert run.data.tags["dagster_run_url"] == f"http://127.0.0.1:3000/runs/{result.run_id}"
    assert f"](http://127.0.0.1:3000/runs/{result.run_id})" in run.data.tags["mlflow.note.content"]  # clickable
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.source) == ("synthetic-gray-32", cache.path)
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert sum("step+3+" in p for p in images) >= 1 and sum("step+6+" in p for p in images) >= 1, images
