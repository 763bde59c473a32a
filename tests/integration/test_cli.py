"""The CLI as a user runs it: a real process, one error line, nothing outside the data folder."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT, cli_main, cli_run, files_outside, flowers_like, instance_home, make_tgz


@pytest.mark.parametrize("content", [b"<html><body>Not found</body></html>", b"",
                                     make_tgz(flowers_like(2))[:-200]])
def test_bad_archives_end_with_one_error_line(tmp_path, content):
    bad = tmp_path / "input" / "bad.tgz"
    bad.parent.mkdir()
    bad.write_bytes(content)
    done = cli_run(tmp_path, "prepare", "--dataset", "flowers17", "--source", str(bad),
                "--sha256", hashlib.sha256(content).hexdigest())
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert files_outside(tmp_path, tmp_path / "data", tmp_path / "dagster_home", bad) == []


def test_missing_source_and_bad_options_are_one_line(tmp_path, capsys, monkeypatch):
    for args in (["--dataset", "custom"], ["--dataset", "custom", "--name", "mine", "--source", str(tmp_path / "nope")],
                 ["--dataset", "synthetic", "--size", "3"], ["--dataset", "synthetic", "--size", "48"],
                 ["--dataset", "synthetic", "--holdout", "2"], ["--dataset", "synthetic", "--holdout", "nan"],
                 ["--dataset", "synthetic", "--name", "mine"]):
        code, _, err = cli_main(tmp_path, capsys, monkeypatch, "prepare", *args)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("name", ["a/b", "my.roses", "my roses", "x" * 65, "-x", "flowers17"])
def test_a_collection_name_that_is_not_a_plain_new_slug_is_refused(tmp_path, capsys, monkeypatch, name):
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "custom", f"--name={name}",
                         "--source", str(tmp_path))
    assert code == 1 and err.startswith(f"error: collection name {name!r}") and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()


def test_unknown_variant_lists_the_prepared_ones(tmp_path, capsys, monkeypatch):
    assert cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16")[0] == 0
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "train", "--variant", "flowers17-color-64",
                            "--arch", "arch1")
    assert code == 1 and err == "error: unknown variant 'flowers17-color-64'; variants: synthetic-color-16\n"


def test_prepare_prints_the_cache_and_skips(tmp_path):
    archive = tmp_path / "mine.tgz"
    archive.write_bytes(make_tgz({**flowers_like(4), "jpg/broken.jpg": b"\xff\xd8garbage"}))
    done = cli_run(tmp_path, "prepare", "--dataset", "custom", "--name", "mine", "--source", str(archive),
                   "--size", "32", "--mode", "gray")
    assert done.returncode == 0, done.stderr
    assert "mine-gray-32: 4 images (1×32×32)" in done.stdout and "tensor cache: " in done.stdout
    assert "skipped: 1" in done.stdout and "jpg/broken.jpg" in done.stdout


def test_train_flags_cover_every_training_and_evaluation_setting():
    from flower_pipeline.cli import build_parser
    from flower_pipeline.evaluation import EvalSettings
    from flower_pipeline.settings import given_flags
    from flower_pipeline.training import TrainConfig

    args = build_parser().parse_args(["train", "--variant", "synthetic-color-64", "--arch", "arch1", "--latent-dim",
                                      "64", "--no-minibatch-discrimination", "--real-label", "0.8", "--beta1", "0.4",
                                      "--eval-samples", "10", "--eval-max-fid", "90"])
    assert given_flags(args, TrainConfig) == {"arch": "arch1", "latent_dim": 64, "minibatch_discrimination": False,
                                              "real_label": 0.8, "beta1": 0.4}
    assert given_flags(args, EvalSettings, prefix="eval_") == {"samples": 10, "max_fid": 90.0}


@pytest.mark.slow
@pytest.mark.parametrize("args", [["prepare", "--dataset", "flowers18"], ["prepare", "--dataset", "synthetic",
                                  "--mode", "sepia"], ["train", "--variant", "x-color-64", "--arch", "arch3"]])
def test_argument_errors_are_one_line_with_the_choices(tmp_path, capsys, monkeypatch, args):
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, *args)
    assert code == 1 and err.startswith("error: argument ") and "choose from" in err and "--help" in err
    assert err.count("\n") == 1, err


def test_commands_from_two_directories_share_the_instances_data_root(tmp_path, capsys, monkeypatch):
    from flower_pipeline.cli import main

    monkeypatch.delenv("FLOWER_PIPELINE_DATA_DIR", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(instance_home(tmp_path)))
    for folder, mode in (("a", "color"), ("b", "gray")):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        assert main(["prepare", "--dataset", "synthetic", "--size", "16", "--mode", mode,
                     "--feature-net-epochs", "1"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"tensor cache: {tmp_path / 'data'}" in out and out.count(str(tmp_path / "data")) == 2
    assert [list((tmp_path / folder).iterdir()) for folder in ("a", "b")] == [[], []]  # nothing beside either


def test_a_command_line_run_can_be_re_executed_through_dagster(tmp_path, capsys, monkeypatch):
    """CLI runs are runs of the project's own jobs, so Dagster (the UI's Re-execute) can run them again."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    assert cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16",
                 "--feature-net-epochs", "1")[0] == 0
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="prepare_variant"))
        job = ReconstructableRepository.for_module("flower_pipeline.definitions", "defs",
                                                   str(PROJECT))
        again = dg.execute_job(job.get_reconstructable_job(run.job_name), instance, run_config=run.run_config,
                               tags=run.tags, reexecution_options=dg.ReexecutionOptions(
                                   parent_run_id=run.run_id, step_selection=["tensor_cache"]))
        assert again.success and again.dagster_run.parent_run_id == run.run_id
        assert again.dagster_run.tags["dagster/partition"] == "synthetic-color-16"


@pytest.mark.parametrize("seeds", ["0-", "5-2", "0-64", "0,0", "a"])
def test_a_bad_seed_sweep_is_one_line(tmp_path, capsys, monkeypatch, seeds):
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "train", "--variant", "synthetic-color-16",
                            "--arch", "arch1", "--seeds", seeds)
    assert code == 1 and err.startswith("error: ") and "seeds" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("parallel", ["-1", "100000"])
def test_a_bad_parallel_count_is_one_line_and_starts_nothing(tmp_path, capsys, monkeypatch, parallel):
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "study", "run", "source", "--parallel", parallel)
    assert code == 1 and err == f"error: --parallel must be 0 (one per core) to 256, got {parallel}\n", err
    assert not (tmp_path / "data").exists()


def test_a_seed_sweep_trains_side_by_side_and_registers_only_the_best(tmp_path, capsys, monkeypatch):
    import re

    from flower_pipeline.registry import tracking

    assert cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16",
                 "--feature-net-epochs", "1")[0] == 0
    code, out, err = cli_main(tmp_path, capsys, monkeypatch, "train", "--variant", "synthetic-color-16",
                              "--arch", "arch1", "--seeds", "0-2", "--iterations", "30", "--features", "8",
                              "--eval-samples", "64")
    assert code == 0, err
    assert "10 snapshots scored; evaluated and registered: iteration " in out  # train's default: every tenth
    metric = re.search(r"seed sweep: 3 seeds trained side by side, ranked by the quality gate, then (\w+)", out)[1]
    rows = re.findall(rf"    seed +(\d+): {metric} ([\d.e+-]+), quality gate (\w+).*?(<- registered)?$", out, re.M)
    assert [seed for seed, *_ in rows] == ["0", "1", "2"] and out.count("<- registered") == 1, out
    ranked = sorted(rows, key=lambda row: (row[2] != "passed", float(row[1])))
    assert ranked[0][3], out  # the mark is on the best by the gate, then the metric

    store = tracking(data_dir=tmp_path / "data")
    client = store.client()
    (version,) = client.search_model_versions("name='synthetic-color-16-arch1'")  # one version: the best seed's
    runs = client.search_runs([store.experiment_id()])
    assert len(runs) == 3 and {r.data.tags["fused_with"] for r in runs} == {"2"}
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    chosen = next(r for r in runs if r.info.run_id == version.run_id)
    assert chosen.data.params["seed"] == ranked[0][0]
    assert {r.data.tags["sweep_choice"] for r in runs} == {f"seed {ranked[0][0]} of 3"}
    import dagster as dg

    from flower_pipeline.cli.launch import instance

    shown = instance().get_latest_materialization_event(dg.AssetKey("generator_evaluation")).asset_materialization
    assert shown.metadata["registered_seed"].value == int(ranked[0][0])  # the UI names the registered seed
    assert version.run_id in shown.metadata["mlflow_run"].value  # and links its run, not seed 0's
    # Each member's folder is keyed by its sweep too: trained alone, seed 0 would be another run, in another folder.
    trainings = tmp_path / "data" / "synthetic" / "training" / "synthetic-color-16" / "arch1"
    folders = [p.name for p in trainings.iterdir()]
    (group,) = [f for f in folders if f.startswith("fused+")]
    assert sorted(f.split("-in-")[1] for f in folders if f != group) == [group.removeprefix("fused+")] * 3


def test_command_line_runs_with_torch_and_numpy_only(small_cache, tmp_path):
    done = subprocess.run([sys.executable, "-m", "flower_pipeline.training", "--cache", str(small_cache.path),
                           "--arch", "arch2", "--iterations", "4", "--batch-size", "4", "--features", "8",
                           "--log-every", "2", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "iter      4/4" in done.stdout and list(Path(tmp_path, "runs").glob("arch2-*/generator.pt"))
    missing = subprocess.run([sys.executable, "-m", "flower_pipeline.training", "--cache", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
