"""The CLI as a user runs it: a real process, one error line, nothing outside the data folder."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT, PROJECT_INSTANCE_CONFIG, flowers_like, make_tgz

MODELS = ["synthetic-color-32-arch1", "synthetic-color-32-arch2", "synthetic-gray-32-arch1", "synthetic-gray-32-arch2"]


def _instance_home(tmp_path: Path) -> Path:
    """A Dagster home configured like the project's (telemetry off, gpu pool of 1)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT_INSTANCE_CONFIG, home)
    return home


def _cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(_instance_home(tmp_path))}
    return subprocess.run([sys.executable, "-m", "flower_pipeline.cli", *args, "--data-dir", str(tmp_path / "data")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def _files_outside(tmp_path: Path, *allowed: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*")
            if p.is_file() and not any(a == p or a in p.parents for a in allowed)]


@pytest.mark.parametrize("content", [b"<html><body>Not found</body></html>", b"",
                                     make_tgz(flowers_like(2))[:-200]])
def test_bad_archives_end_with_one_error_line(tmp_path, content):
    bad = tmp_path / "input" / "bad.tgz"
    bad.parent.mkdir()
    bad.write_bytes(content)
    done = _cli(tmp_path, "prepare", "--dataset", "flowers17", "--source", str(bad),
                "--sha256", hashlib.sha256(content).hexdigest())
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert _files_outside(tmp_path, tmp_path / "data", tmp_path / "dagster_home", bad) == []


def _main(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
          *args: str) -> tuple[int, str, str]:
    """The CLI's own entry point in this process: what a user sees, without a second interpreter's start-up."""
    from flower_pipeline.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(_instance_home(tmp_path)))
    capsys.readouterr()
    code = main([*args, "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_source_and_bad_options_are_one_line(tmp_path, capsys, monkeypatch):
    for args in (["--dataset", "custom"], ["--dataset", "custom", "--name", "mine", "--source", str(tmp_path / "nope")],
                 ["--dataset", "synthetic", "--size", "3"], ["--dataset", "synthetic", "--size", "48"],
                 ["--dataset", "synthetic", "--holdout", "2"], ["--dataset", "synthetic", "--holdout", "nan"],
                 ["--dataset", "synthetic", "--name", "mine"]):
        code, _, err = _main(tmp_path, capsys, monkeypatch, "prepare", *args)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("name", ["a/b", "my.roses", "my roses", "x" * 65, "-x", "flowers17"])
def test_a_collection_name_that_is_not_a_plain_new_slug_is_refused(tmp_path, capsys, monkeypatch, name):
    code, _, err = _main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "custom", f"--name={name}",
                         "--source", str(tmp_path))
    assert code == 1 and err.startswith(f"error: collection name {name!r}") and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()


def test_unknown_variant_lists_the_prepared_ones(tmp_path, capsys, monkeypatch):
    assert _main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16")[0] == 0
    code, _, err = _main(tmp_path, capsys, monkeypatch, "train", "--variant", "flowers17-color-64", "--arch", "arch1")
    assert code == 1 and err == "error: unknown variant 'flowers17-color-64'; variants: synthetic-color-16\n"


def test_prepare_prints_the_cache_and_skips(tmp_path):
    archive = tmp_path / "mine.tgz"
    archive.write_bytes(make_tgz({**flowers_like(4), "jpg/broken.jpg": b"\xff\xd8garbage"}))
    done = _cli(tmp_path, "prepare", "--dataset", "custom", "--name", "mine", "--source", str(archive), "--size", "32",
                "--mode", "gray")
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
def test_demo_runs_every_step_and_the_registry_serves_its_champion(tmp_path, capsys, monkeypatch):
    """The README's main job, as a user runs it, then the registry commands on what it made."""
    done = _cli(tmp_path, "demo", timeout=900)  # about 3 min alone on 2 cores; a busy CI machine takes longer
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "synthetic-color-32: 320 images (3×32×32) in 8 classes" in out
    assert "synthetic-gray-32: 320 images (1×32×32) in 8 classes" in out
    for model in MODELS:
        variant, arch = model.rsplit("-", 1)
        assert f"{variant} × {arch}: 300 iterations" in out and f"{model} v1: " in out
    assert "FID and KID unavailable: " in out  # no Inception weights and no network here: said, not invented
    champions = [line.split()[-1] for line in out.splitlines() if "@champion" in line]
    assert champions and all(Path(c).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in champions)
    assert "dg dev" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    data = tmp_path / "data" / "synthetic" / "training"
    for picture in ("samples", "timeline", "nearest_pairs", "colours"):
        assert len(list(data.glob(f"*/arch*/*/evaluation/{picture}.png"))) == 4, picture
    assert _files_outside(tmp_path, tmp_path / "data", tmp_path / "dagster_home") == []

    code, out, _ = _main(tmp_path, capsys, monkeypatch, "models")
    listing = out.splitlines()
    assert code == 0 and listing[0].split()[:3] == ["MODEL", "VER", "ALIASES"]
    assert [line.split()[:2] for line in listing[1:]] == [[m, "1"] for m in MODELS]
    assert all("latest" in line for line in listing[1:])
    for model, channels in (("synthetic-color-32-arch1", 3), ("synthetic-gray-32-arch1", 1)):  # each its own images
        code, _, err = _main(tmp_path, capsys, monkeypatch, "sample", "--model", model, "--version", "1", "-n", "2",
                             "--dir", "-o", str(tmp_path / "data" / model))
        assert code == 0, err
        png = next((tmp_path / "data" / model).iterdir()).read_bytes()
        assert png[25] == {3: 2, 1: 0}[channels]  # PNG colour type: RGB or grey

    name = next(line.split()[0] for line in listing[1:] if "champion" in line)
    for run in ("a", "b"):  # same seed, same images
        code, _, err = _main(tmp_path, capsys, monkeypatch, "sample", "--model", name, "--version", "1", "-n", "3",
                             "--seed", "5", "--dir", "-o", str(tmp_path / "data" / run))
        assert code == 0, err
    first, second = sorted((tmp_path / "data" / "a").iterdir()), sorted((tmp_path / "data" / "b").iterdir())
    assert len(first) == 3 and [p.read_bytes() for p in first] == [p.read_bytes() for p in second]

    for args, message in ((["--model", "nope"], f"error: no registered model 'nope'; registered: {', '.join(MODELS)}"),
                          (["--model", name, "--alias", "best"], f"error: {name} has no alias 'best'; aliases: "),
                          (["--model", name, "--version", "7"], f"error: {name} has no version 7; versions: 1")):
        code, _, err = _main(tmp_path, capsys, monkeypatch, "sample", *args, "-o", str(tmp_path / "data" / "x.png"))
        assert code == 1 and err.startswith(message) and err.count("\n") == 1, err

    # Output where it cannot go, and a registry whose artifacts were deleted: one line each.
    (tmp_path / "data" / "a-file").write_bytes(b"")
    for args, message in ((["-o", str(tmp_path / "data" / "a")], "error: cannot write "),
                          (["--dir", "-o", str(tmp_path / "data" / "a-file" / "x")], "error: cannot write ")):
        code, _, err = _main(tmp_path, capsys, monkeypatch, "sample", "--model", name, *args)
        assert code == 1 and err.startswith(message) and err.count("\n") == 1, err
    (tmp_path / "data" / "mlartifacts").rename(tmp_path / "data" / "moved")
    code, _, err = _main(tmp_path, capsys, monkeypatch, "sample", "--model", name, "-o", str(tmp_path / "data" / "y"))
    assert code == 1 and err.startswith(f"error: cannot load models:/{name}@champion") and err.count("\n") == 1, err


@pytest.mark.parametrize("args", [["prepare", "--dataset", "flowers18"], ["prepare", "--dataset", "synthetic",
                                  "--mode", "sepia"], ["train", "--variant", "x-color-64", "--arch", "arch3"]])
def test_argument_errors_are_one_line_with_the_choices(tmp_path, capsys, monkeypatch, args):
    code, _, err = _main(tmp_path, capsys, monkeypatch, *args)
    assert code == 1 and err.startswith("error: argument ") and "choose from" in err and "--help" in err
    assert err.count("\n") == 1, err


def test_commands_from_two_directories_share_the_instances_data_root(tmp_path, capsys, monkeypatch):
    from flower_pipeline.cli import main

    monkeypatch.delenv("FLOWER_PIPELINE_DATA_DIR", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(_instance_home(tmp_path)))
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

    assert _main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16",
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
    code, _, err = _main(tmp_path, capsys, monkeypatch, "train", "--variant", "synthetic-color-16", "--arch", "arch1",
                         "--seeds", seeds)
    assert code == 1 and err.startswith("error: ") and "seeds" in err and err.count("\n") == 1, err


def test_a_seed_sweep_trains_side_by_side_and_registers_only_the_best(tmp_path, capsys, monkeypatch):
    import re

    from flower_pipeline.registry import tracking

    assert _main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16",
                 "--feature-net-epochs", "1")[0] == 0
    code, out, err = _main(tmp_path, capsys, monkeypatch, "train", "--variant", "synthetic-color-16", "--arch", "arch1",
                           "--seeds", "0-2", "--iterations", "30", "--features", "8", "--eval-samples", "64")
    assert code == 0, err
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


def test_command_line_runs_with_torch_and_numpy_only(small_cache, tmp_path):
    done = subprocess.run([sys.executable, "-m", "flower_pipeline.training", "--cache", str(small_cache.path),
                           "--arch", "arch2", "--iterations", "4", "--batch-size", "4", "--features", "8",
                           "--log-every", "2", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "iter      4/4" in done.stdout and list(Path(tmp_path, "runs").glob("arch2-*/generator.pt"))
    missing = subprocess.run([sys.executable, "-m", "flower_pipeline.training", "--cache", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
