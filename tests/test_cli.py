"""The CLI as a user runs it: a real process, one error line, nothing outside the data folder."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import flowers_like, make_tgz

PROJECT_INSTANCE_CONFIG = Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml"


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    shutil.copy(PROJECT_INSTANCE_CONFIG, tmp_path / "dagster_home")
    return subprocess.run([sys.executable, "-m", "flower_pipeline.cli", *args, "--data-dir", str(tmp_path / "data")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


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


def test_missing_source_and_bad_options_are_one_line(tmp_path):
    for args in (["--dataset", "custom"], ["--dataset", "custom", "--source", str(tmp_path / "nope")],
                 ["--dataset", "synthetic", "--size", "3"]):
        done = _cli(tmp_path, "prepare", *args)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_prepare_prints_the_cache_and_skips(tmp_path):
    archive = tmp_path / "mine.tgz"
    archive.write_bytes(make_tgz({**flowers_like(4), "jpg/broken.jpg": b"\xff\xd8garbage"}))
    done = _cli(tmp_path, "prepare", "--dataset", "custom", "--source", str(archive), "--size", "32",
                "--mode", "gray")
    assert done.returncode == 0, done.stderr
    assert "custom: 4 images (1×32×32)" in done.stdout and "tensor cache: " in done.stdout
    assert "skipped: 1" in done.stdout and "jpg/broken.jpg" in done.stdout


def test_train_flags_cover_every_training_setting():
    from flower_pipeline.cli import build_parser
    from flower_pipeline.defs.training import TrainingConfig

    args = build_parser().parse_args(["train", "--dataset", "synthetic", "--arch", "arch1", "--latent-dim", "64",
                                      "--no-minibatch-discrimination", "--real-label", "0.8"])
    given = {k: getattr(args, k) for k in TrainingConfig.model_fields if getattr(args, k) is not None}
    assert given == {"latent_dim": 64, "minibatch_discrimination": False, "real_label": 0.8}
