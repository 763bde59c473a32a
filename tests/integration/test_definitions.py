"""The code location loads as `dagster dev -w workspace.yaml` loads it."""


import dagster as dg
import yaml
from conftest import PROJECT


def test_code_location_has_every_asset_check_job_and_resource():
    from flower_pipeline.definitions import defs

    loaded = defs()
    graph = loaded.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "raw_archive", "extracted_images", "resized_images", "tensor_cache", "trained_generator",
        "generator_evaluation", "registered_generator", "feature_network", "study_run", "study_report"}
    assert {c.name for c in graph.asset_check_keys} == {"image_count", "tensor_format", "no_duplicates",
                                                        "class_balance", "scores_in_range", "quality_gate"}
    for job in ("prepare_dataset", "prepare_variant", "retrain_generators", "study_runs", "study_reports"):
        assert loaded.resolve_job_def(job) is not None
    assert all(graph.get(k).owners and graph.get(k).code_version for k in graph.get_all_asset_keys())
    for check in graph.asset_check_keys:
        assert graph.get_check_spec(check).description, check  # every check says what it checks
    assert all(graph.get(k).kinds for k in graph.get_all_asset_keys())  # and every asset has a kind
    assert {s.name for s in loaded.schedules} == {"weekly_retraining"}
    assert {s.name for s in loaded.sensors} == {"retrain_on_new_data", "retraining_failed", "dead_run_reaper"}
    assert {"storage", "mlflow", "io_manager"} <= set(loaded.resources)
    assert graph.get(dg.AssetKey("registered_generator")).freshness_policy is not None  # a champion can go stale
    dg.Definitions.validate_loadable(loaded)


def test_instance_config_limits_the_gpu_pool_to_one():
    config = yaml.safe_load((PROJECT / "dagster_home" / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    workspace = yaml.safe_load((PROJECT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "flower_pipeline.definitions"


def test_variants_and_datasets_are_dynamic_and_training_is_variant_by_architecture():
    from flower_pipeline.defs.partitions import dataset_partitions, training_partitions, variant_partitions

    assert (dataset_partitions.name, variant_partitions.name) == ("datasets", "variants")
    assert [d.name for d in training_partitions.partitions_defs] == ["arch", "variant"]

def test_gpu_steps_take_the_gpu_pool_and_the_gpu_queue_and_the_rest_neither():
    from flower_pipeline.definitions import defs

    graph = defs().resolve_asset_graph()
    nodes = {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}
    on_gpu = {name for name, node in nodes.items() if node.pools == {"gpu"}}
    queued = {name for name, node in nodes.items() if node.assets_def.op.tags.get("dagster-celery/queue") == "gpu"}
    assert on_gpu == queued == {"trained_generator", "generator_evaluation", "feature_network", "study_run"}


def test_a_broker_in_the_environment_makes_celery_the_executor(monkeypatch):
    from flower_pipeline.defs.executor import executor

    assert executor().executor.name == "in_process"  # a step dies with its run: no orphan on the GPU
    monkeypatch.setenv("FLOWER_PIPELINE_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
    assert executor().executor.name == "celery"


def test_the_postgres_instance_reads_its_database_from_the_environment():
    config = yaml.safe_load((PROJECT / "deploy" / "dagster_home" / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_a_step_sees_its_run_end_and_its_gpu_slot_is_freed_only_after_the_step_stops():
    """A Celery step outlives its dead driver: it must stop once the reaper fails its run, and the slot must
    not go to another run while it still computes."""
    import time

    from flower_pipeline.scaleout.heartbeat import free_slots_of_ended_runs, step_watch

    @dg.asset
    def quick() -> int:
        return 1

    with dg.instance_for_test() as instance:
        run_id = dg.materialize([quick], instance=instance).run_id
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 2)
        for step in ("trained_generator", "generator_evaluation"):  # as steps of a run whose driver died hold them
            storage.claim_concurrency_slot("gpu", run_id, step)
        with step_watch(instance, run_id, "trained_generator", every=0.05) as run_ended:
            time.sleep(0.2)
            assert not run_ended.is_set() and free_slots_of_ended_runs(instance) == []  # a step still beats
            instance.report_run_failed(instance.get_run_by_id(run_id), "the dead-run reaper found its driver gone")
            assert run_ended.wait(timeout=5)
            assert storage.get_concurrency_info("gpu").active_slot_count == 2  # still computing
        assert storage.get_concurrency_info("gpu").active_slot_count == 1  # the stopped step freed its own
        assert free_slots_of_ended_runs(instance) == [run_id]  # and the reaper the rest, no step beating
        assert storage.get_concurrency_info("gpu").active_slot_count == 0
