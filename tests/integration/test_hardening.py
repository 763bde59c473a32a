"""Hostile and broken inputs get one clear line (or a reported skip), and nothing lands outside the data folder."""

import os
import shutil
import socket
import time

import numpy as np
import pytest
from conftest import PROJECT, PROJECT_INSTANCE_CONFIG, cli_main, files_outside, flowers_like, make_tgz

from flower_pipeline.errors import PipelineError
from flower_pipeline.extract import extract_archive
from flower_pipeline.tensor_cache import TensorCache, write_cache
from flower_pipeline.training import TrainConfig, train


def _one_line(code: int, err: str, start: str) -> None:
    assert code == 1 and err.startswith(f"error: {start}") and err.count("\n") == 1, err


@pytest.mark.parametrize(("args", "start"), [(["-n", "100000000"], "-n must be between 1 and 10,000"),
                                              (["--seed", "99999999999999999999999"], "--seed must be between 0")])
def test_sample_refuses_huge_counts_and_seeds_before_loading_anything(tmp_path, capsys, monkeypatch, args, start):
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "sample", "--model", "x", *args, "-o",
                            str(tmp_path / "a.png"))
    _one_line(code, err, start)


def test_models_with_a_file_as_data_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "data").write_text("not a folder")
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "models")
    _one_line(code, err, "cannot create the data folder")


def test_an_unreachable_tracking_server_fails_within_seconds(tmp_path, capsys, monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed.getsockname()[1]}")
    started = time.monotonic()
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "models")
    assert time.monotonic() - started < 15
    _one_line(code, err, "MLflow at http://127.0.0.1:")


@pytest.mark.parametrize("special", ["/dev/zero", "/proc/self/mem"])
def test_special_paths_are_refused_by_name(tmp_path, capsys, monkeypatch, special):
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "custom", "--name", "odd",
                         "--source", special)
    _one_line(code, err, f"{special} is not a regular file or folder")


def test_file_urls_are_local_paths(tmp_path, capsys, monkeypatch):
    archive = tmp_path / "mine.tgz"
    archive.write_bytes(make_tgz(flowers_like(3)))
    code, out, err = cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "custom", "--name", "mine",
                           "--source", archive.as_uri(), "--size", "16", "--feature-net-epochs", "1")
    assert code == 0 and "mine-color-16: 3 images" in out, err


def test_a_killed_extraction_leaves_nothing_the_next_one_keeps(tmp_path):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(make_tgz(flowers_like(2)))
    stale = tmp_path / "out" / ".extracted.tmp-abc123"
    stale.mkdir(parents=True)
    (stale / "half.jpg").write_bytes(b"x" * 1000)
    extract_archive(archive, tmp_path / "out" / "extracted", archive_sha256="x")
    assert not stale.exists()


def test_a_batch_larger_than_the_training_images_is_refused_with_the_count(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    path, *_ = write_cache(tmp_path / "c", images, np.arange(10) % 2, [f"{i}.jpg" for i in range(10)],
                           class_names=["a", "b"], params={"dataset": "t"}, holdout_fraction=0.2)
    with pytest.raises(PipelineError, match="batch size 64 is larger than the 8 training images"):
        train(TrainConfig(batch_size=64, iterations=2), TensorCache.load(path), tmp_path / "run", device="cpu")


def test_a_local_sqlite_tracking_store_keeps_artifacts_in_the_data_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    assert cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16",
                 "--feature-net-epochs", "1")[0] == 0
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "train", "--variant", "synthetic-color-16",
                            "--arch", "arch1", "--iterations", "4", "--features", "8", "--eval-samples", "16",
                            "--eval-inception-weights", "off", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "data" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
    assert files_outside(tmp_path, tmp_path / "data", tmp_path / "dagster_home", tmp_path / "store") == []
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")


def test_first_commands_started_together_on_a_fresh_instance_do_not_race(tmp_path):
    """Each round: a fresh Dagster home and three commands at once, all creating its storage; repeated."""
    import shutil
    import subprocess
    import sys

    for round_ in range(2):
        home = tmp_path / f"home{round_}"
        home.mkdir()
        shutil.copy(PROJECT_INSTANCE_CONFIG, home)
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        commands = [subprocess.Popen([sys.executable, "-m", "flower_pipeline.cli", "train", "--variant",
                                      "nope-color-16", "--arch", "arch1", "--data-dir", str(tmp_path / "data")],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(3)]
        for command in commands:
            _, err = command.communicate(timeout=120)
            assert err == "error: unknown variant 'nope-color-16'; variants: none (prepare one first)\n", err


def test_unsupported_schemes_bad_folders_and_hostile_names_are_one_plain_line(tmp_path, capsys, monkeypatch):
    from flower_pipeline.cli import main
    from flower_pipeline.errors import printable

    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "custom", "--name", "x", "--source",
                         "ftp://127.0.0.1/x.tgz")
    assert code == 1 and err.strip().endswith("ftp:// sources are not supported: use http(s)://, file:// or a "
                                              "local path")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    code = main(["prepare", "--dataset", "synthetic", "--data-dir", str(loop)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: the data folder ") and err.count("\n") == 1
    assert printable("\x1b[31mred.jpg") == "\\x1b[31mred.jpg"  # shown, not obeyed by the terminal


def test_a_read_only_dagster_home_is_one_line(tmp_path, capsys, monkeypatch):
    import subprocess

    from flower_pipeline.cli import main

    home = tmp_path / "home"
    home.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(home)],
                      capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs needs root")
    try:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        code = main(["prepare", "--dataset", "synthetic", "--data-dir", str(tmp_path / "data")])
        err = capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(home)], check=True)
    assert code == 1 and err.startswith("error: Read-only file system (") and err.count("\n") == 1


def test_a_full_disk_is_called_a_full_disk_and_leaves_nothing_behind(tmp_path):
    import os
    import subprocess

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        archive = tmp_path / "big.tgz"
        archive.write_bytes(make_tgz({f"{i}.jpg": os.urandom(40_000) for i in range(4)}))
        with pytest.raises(PipelineError, match=r"^disk full while extracting big\.tgz into "):
            extract_archive(archive, tiny / "out", archive_sha256="x")
        assert list(tiny.iterdir()) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_a_garbage_instance_file_or_an_unreachable_instance_database_is_one_line(tmp_path, capsys, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("storage: [this, is: not {an instance\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    from flower_pipeline.cli import main

    assert main(["prepare", "--dataset", "synthetic", "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err

    postgres = tmp_path / "postgres_home"
    postgres.mkdir()
    shutil.copy(PROJECT / "deploy" / "dagster_home" / "dagster.yaml", postgres)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", f"postgresql://root:s3cret@127.0.0.1:{closed.getsockname()[1]}/x")
    monkeypatch.setenv("DAGSTER_HOME", str(postgres))
    started = time.monotonic()
    assert main(["prepare", "--dataset", "synthetic", "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "s3cret" not in err, err
    assert time.monotonic() - started < 60


def test_an_unreachable_mlflow_database_is_one_line_within_seconds_without_its_password(tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://user:s3cret@nohost.invalid/x")
    started = time.monotonic()
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "models")
    assert time.monotonic() - started < 15
    _one_line(code, err, "MLflow at postgresql://***@nohost.invalid/x failed")
    assert "s3cret" not in err


def test_a_huge_setting_value_is_quoted_short():
    from flower_pipeline.training import TrainConfig

    with pytest.raises(PipelineError) as refused:
        TrainConfig(augment="x" * 10_000).resolved()
    assert len(str(refused.value)) < 400 and "(10002 characters)" in str(refused.value), str(refused.value)[:500]


def test_two_first_commands_on_a_fresh_mlflow_store_both_succeed(tmp_path):
    """Both create the local store's tables and its experiment at once: a lock lets one go first."""
    import subprocess
    import sys

    script = ("import sys; from flower_pipeline.layout import DataLayout; from flower_pipeline.tracking import "
              "MlflowTracker; print(MlflowTracker(DataLayout.at(sys.argv[1])).experiment_id())")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    first, second = (subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2))
    (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
    assert first.returncode == second.returncode == 0, (err1[-1500:], err2[-1500:])
    assert out1 == out2  # one experiment, found by the second


def test_a_full_disk_during_training_is_called_a_full_disk(tmp_path, capsys, monkeypatch):
    import subprocess

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "synthetic", "--size", "16",
                         "--feature-net-epochs", "1", "--feature-net-width", "4", "--feature-net-dim", "8")
    assert code == 0, err
    trainings = tmp_path / "data" / "synthetic" / "training"
    trainings.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(trainings)],
                      capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        code, _, err = cli_main(tmp_path, capsys, monkeypatch, "train", "--variant", "synthetic-color-16", "--arch",
                             "arch1", "--iterations", "40", "--features", "8", "--device", "cpu")
        assert code == 1 and err.count("\n") == 1 and "disk full" in err, err[-2000:]
    finally:
        subprocess.run(["umount", str(trainings)], check=True)
