"""The training partition materialized through Dagster, its run checked in a real (SQLite) MLflow store."""

import dagster as dg

from flower_pipeline.defs.ingest import extracted_images, raw_archive, resized_images, tensor_cache
from flower_pipeline.defs.mlflow_tracking import MlflowTracking
from flower_pipeline.defs.resources import FlowerStorage
from flower_pipeline.defs.training import trained_generator


def test_training_partition_materializes_and_is_tracked_in_mlflow(tmp_path):
    data = str(tmp_path / "data")
    resources = {"storage": FlowerStorage(data_dir=data), "mlflow": MlflowTracking(data_dir=data)}
    with dg.instance_for_test() as instance:
        assert dg.materialize([raw_archive, extracted_images, resized_images, tensor_cache], partition_key="synthetic",
                              instance=instance, resources=resources,
                              run_config={"ops": {"resized_images": {"config": {"size": 32}}}}).success
        key = dg.MultiPartitionKey({"dataset": "synthetic", "arch": "arch1"})
        config = {"iterations": 6, "batch_size": 4, "features": 8, "log_every": 2, "sample_every": 3,
                  "checkpoint_seconds": 0, "device": "cpu"}
        result = dg.materialize([trained_generator], partition_key=key, instance=instance, resources=resources,
                                run_config={"ops": {"trained_generator": {"config": config}}})
        assert result.success
        meta = result.asset_materializations_for_node("trained_generator")[0].metadata
        assert meta["iterations"].value == 6 and "data:image/png;base64," in meta["samples"].value
        assert "data:image/png;base64," in meta["curves"].value
        assert trained_generator.op.pool == "gpu"  # one training per GPU (dagster_home/dagster.yaml)

    client = resources["mlflow"].client()
    run = client.get_run(meta["mlflow_run_id"].value)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_run_id"] == result.run_id and run.data.tags["dagster_partition"] == str(key)
    assert run.data.params["arch"] == "arch1" and run.data.params["real_label"] == "0.9"
    assert run.data.params["batch_size"] == "4" and run.data.params["minibatch_discrimination"] == "True"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")] == [2, 4, 6]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"final_grid.png", "curves.png", "history.json", "generator.pt", "samples"} <= artifacts
    assert (tmp_path / "data" / "mlflow.db").is_file() and (tmp_path / "data" / "mlartifacts").is_dir()
