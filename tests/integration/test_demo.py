"""The README's main job, `flower-pipeline demo`, as a user runs it, then the registry commands on what it made
(a module of its own: the suite's longest test runs beside the others)."""

from pathlib import Path

from conftest import cli_main, cli_run, files_outside

MODELS = ["synthetic-color-32-arch1", "synthetic-color-32-arch2", "synthetic-gray-32-arch1", "synthetic-gray-32-arch2"]


def test_demo_runs_every_step_and_the_registry_serves_its_champion(tmp_path, capsys, monkeypatch):
    """The README's main job, as a user runs it, then the registry commands on what it made."""
    done = cli_run(tmp_path, "demo", "--iterations", "100", timeout=900)  # 300 prove no more, and cost 2 min
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "synthetic-color-32: 320 images (3×32×32) in 8 classes" in out
    assert "synthetic-gray-32: 320 images (1×32×32) in 8 classes" in out
    for model in MODELS:
        variant, arch = model.rsplit("-", 1)
        assert f"{variant} × {arch}: 100 iterations" in out and f"{model} v1: " in out
    assert "FID and KID unavailable: " in out  # no Inception weights and no network here: said, not invented
    assert "snapshots scored" not in out  # the demo registers its last generators (train scores snapshots)
    champions = [line.split()[-1] for line in out.splitlines() if "@champion" in line]
    assert champions and all(Path(c).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in champions)
    assert "dg dev" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    data = tmp_path / "data" / "synthetic" / "training"
    for picture in ("samples", "timeline", "nearest_pairs", "colours"):
        assert len(list(data.glob(f"*/arch*/*/evaluation/{picture}.png"))) == 4, picture
    assert files_outside(tmp_path, tmp_path / "data", tmp_path / "dagster_home") == []

    code, out, _ = cli_main(tmp_path, capsys, monkeypatch, "models")
    listing = out.splitlines()
    assert code == 0 and listing[0].split()[:3] == ["MODEL", "VER", "ALIASES"]
    assert [line.split()[:2] for line in listing[1:]] == [[m, "1"] for m in MODELS]
    assert all("latest" in line for line in listing[1:])
    for model, channels in (("synthetic-color-32-arch1", 3), ("synthetic-gray-32-arch1", 1)):  # each its own images
        code, _, err = cli_main(tmp_path, capsys, monkeypatch, "sample", "--model", model, "--version", "1", "-n", "2",
                             "--dir", "-o", str(tmp_path / "data" / model))
        assert code == 0, err
        png = next((tmp_path / "data" / model).iterdir()).read_bytes()
        assert png[25] == {3: 2, 1: 0}[channels]  # PNG colour type: RGB or grey

    name = next(line.split()[0] for line in listing[1:] if "champion" in line)
    for run in ("a", "b"):  # same seed, same images
        code, _, err = cli_main(tmp_path, capsys, monkeypatch, "sample", "--model", name, "--version", "1", "-n", "3",
                             "--seed", "5", "--dir", "-o", str(tmp_path / "data" / run))
        assert code == 0, err
    first, second = sorted((tmp_path / "data" / "a").iterdir()), sorted((tmp_path / "data" / "b").iterdir())
    assert len(first) == 3 and [p.read_bytes() for p in first] == [p.read_bytes() for p in second]

    for args, message in ((["--model", "nope"], f"error: no registered model 'nope'; registered: {', '.join(MODELS)}"),
                          (["--model", name, "--alias", "best"], f"error: {name} has no alias 'best'; aliases: "),
                          (["--model", name, "--version", "7"], f"error: {name} has no version 7; versions: 1")):
        code, _, err = cli_main(tmp_path, capsys, monkeypatch, "sample", *args, "-o", str(tmp_path / "data" / "x.png"))
        assert code == 1 and err.startswith(message) and err.count("\n") == 1, err

    # Output where it cannot go, and a registry whose artifacts were deleted: one line each.
    (tmp_path / "data" / "a-file").write_bytes(b"")
    for args, message in ((["-o", str(tmp_path / "data" / "a")], "error: cannot write "),
                          (["--dir", "-o", str(tmp_path / "data" / "a-file" / "x")], "error: cannot write ")):
        code, _, err = cli_main(tmp_path, capsys, monkeypatch, "sample", "--model", name, *args)
        assert code == 1 and err.startswith(message) and err.count("\n") == 1, err
    (tmp_path / "data" / "mlartifacts").rename(tmp_path / "data" / "moved")
    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "sample", "--model", name, "-o",
                            str(tmp_path / "data" / "y"))
    assert code == 1 and err.startswith(f"error: cannot load models:/{name}@champion") and err.count("\n") == 1, err
