"""The study as data, its verdicts, and a tiny study run through Dagster: table, reuse, resume, bad input."""

import json
import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import PROJECT_INSTANCE_CONFIG, prepare, run_job

from flower_pipeline import source_version
from flower_pipeline.errors import PipelineError
from flower_pipeline.study import judge, load_study, run_key, study_run_key
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import TrainConfig, train

TINY_STUDY = {
    "name": "tiny", "title": "A tiny study",
    "profiles": {"quick": {"size": 16, "iterations": 40, "evaluation": {"samples": 40, "kid_subsets": 5},
                           "settings": {"features": 8, "log_every": 10, "sample_every": 20, "checkpoint_seconds": 0}}},
    "claims": [{"id": "batch-size", "text": "Batch 8 and batch 32 are worse than 16.", "source": "batch 16 best",
                "runs": [
        {"label": "arch2-batch16", "variant": "synthetic-color", "arch": "arch2", "snapshots": [5000],
         "settings": {"batch_size": 16, "iterations": 10000}},
        {"label": "arch2-batch8", "variant": "synthetic-color", "arch": "arch2",
         "settings": {"batch_size": 8, "iterations": 10000}},
        {"label": "arch2-batch32", "variant": "synthetic-color", "arch": "arch2",
         "settings": {"batch_size": 32, "iterations": 10000}}]}],
}


def _write(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_the_source_study_lists_every_run_of_the_source():
    study = load_study("source")
    assert len(study.claims) == 13 and len(study.runs) == 20
    quick = {run.label: run for run in study.plan("quick")}
    assert len(quick) == 48  # three seeds of each of the 16 runs on Flowers-17
    assert quick["arch2-batch8"].config["iterations"] == 200 and quick["f17-color-arch1"].snapshots == (300,)
    assert [quick[f"arch1-sgd{mark}"].config["seed"] for mark in ("", "+s1", "+s2")] == [0, 1, 2]
    assert quick["arch2-batch16"].config["iterations"] == quick["arch2-batch8"].config["iterations"]
    assert {c.id for c in study.claims if c.own} == {"flowers102", "black-and-white", "black-and-white-102"}
    assert not any(run.variant.startswith("flowers102") for run in quick.values())  # its claims: not measured
    full = {run.label: run for run in study.plan("full")}
    assert full["arch2-batch8"].config["iterations"] == 10_000 and full["f17-color-arch1"].variant.endswith("-64")


def test_changing_a_setting_or_the_data_changes_the_run_key(tmp_path):
    run = load_study(str(_write(tmp_path, TINY_STUDY))).plan("quick")[0]
    key = run_key(run, "cache-a", "1.0")
    assert key == run_key(run, "cache-a", "1.0") and key != run_key(run, "cache-b", "1.0")
    changed = {**TINY_STUDY, "profiles": {"quick": {**TINY_STUDY["profiles"]["quick"], "iterations": 80}}}
    assert run_key(load_study(str(_write(tmp_path, changed))).plan("quick")[0], "cache-a", "1.0") != key


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["claims"][0]["runs"][1]["settings"].update(batch=8), "unknown setting 'batch'"),
    (lambda s: s["claims"][0]["runs"][1].update(variant="flowers17-sepia"), "bad variant 'flowers17-sepia'"),
    (lambda s: s["claims"][0]["runs"][1].update(variant="flowers18-color"), "the collection 'flowers18', which is "
                                                                            "not prepared"),
    (lambda s: s["claims"][0]["runs"][2].update(label="arch2-batch8"), "the label 'arch2-batch8' is used twice"),
    (lambda s: s["claims"][0]["runs"][0].update(arch="arch3"), "unknown architecture 'arch3'"),
    (lambda s: s["claims"][0]["runs"][0].update(label="../up"), "run label '../up' cannot name a folder"),
    (lambda s: s["claims"][0]["runs"][0].update(label="a:b"), "run label 'a:b' may not contain"),
    (lambda s: s.update(name="../../etc"), "study name '../../etc' cannot name a folder"),
    (lambda s: s.update(claims=["not a claim"]), "is malformed (AttributeError"),
    (lambda s: s["profiles"]["quick"].update(size="big"), "is malformed (ValueError"),
])
def test_bad_study_files_are_one_line_and_start_nothing(tmp_path, capsys, monkeypatch, edit, message):
    import copy

    from flower_pipeline.cli import main

    study = copy.deepcopy(TINY_STUDY)
    edit(study)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_INSTANCE_CONFIG, home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code = main(["study", "run", str(_write(tmp_path, study)), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()
    with pytest.raises(PipelineError, match="unknown study 'nope'; studies: beyond, source"):
        load_study("nope")


def test_a_verdict_needs_the_difference_to_exceed_the_seeds_spread(tmp_path):
    study = load_study(str(_write(tmp_path, {**TINY_STUDY, "profiles": {"quick": {**TINY_STUDY["profiles"]["quick"],
                                                                              "seeds": 3}}})))

    def verdict(fd16: list[float], fd8: list[float], fd32: list[float]) -> str:
        metrics = {}
        for label, values in (("arch2-batch16", fd16), ("arch2-batch8", fd8), ("arch2-batch32", fd32)):
            for seed, value in enumerate(values):
                metrics[label + (f"+s{seed}" if seed else "")] = {"fd_flowers": value}
        return judge(study, metrics, "quick")["batch-size"].status

    assert verdict([10.0, 10.5, 9.8], [14.0, 14.4, 13.9], [12.0, 12.5, 12.2]) == "supported"
    assert verdict([10.0, 10.5, 9.8], [7.0, 7.4, 6.9], [12.0, 12.5, 12.2]) == "not supported"
    assert verdict([10.0, 14.0, 6.0], [11.0, 15.0, 7.0], [12.0, 16.0, 8.0]) == "inconclusive"  # inside the spread
    assert verdict([10.0, 10.5, 9.8], [14.0, 14.4], [12.0, 12.5, 12.2]) == "not measured"  # a seed missing
    nan = float("nan")
    assert verdict([10.0, 10.5, 9.8], [14.0, nan, 13.9], [12.0, 12.5, 12.2]) == "not measured"


def test_a_tiny_study_runs_through_dagster_reuses_finished_runs_and_resumes_a_killed_one(tmp_path):
    path, data = _write(tmp_path, TINY_STUDY), tmp_path / "data"
    study = load_study(str(path))
    config = {"study_run": {"config": {"study_file": str(path)}}}
    with dg.instance_for_test() as instance:
        cache = TensorCache.load(prepare(instance, data, "synthetic-color-16").output_for_node("tensor_cache").path)
        keys = [study_run_key("tiny", "quick", run.label) for run in study.plan("quick")]
        instance.add_dynamic_partitions("study_runs", keys)
        instance.add_dynamic_partitions("studies", ["tiny:quick"])

        # A run killed at iteration 10: its checkpoint is where the study's run will train.
        killed = study.plan("quick", ("arch2-batch32",))[0]
        out_dir = data / "studies" / "tiny-quick" / killed.label / run_key(killed, cache.content_hash, source_version())

        def kill(record: dict) -> None:
            if record["iteration"] == 10:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(**killed.config), cache, out_dir, device="cpu", on_log=kill)

        results = {key: run_job(instance, "study_runs", key, data, config) for key in keys}
        assert all(r.success for r in results.values())
        logs = [e.message for e in instance.all_logs(results[keys[2]].run_id) if e.message]
        assert any("arch2-batch32: resumed from iteration 10" in m for m in logs)
        first = results[keys[0]].output_for_node("study_run")
        assert first.snapshot == 10 and first.snapshot_metrics and first.metrics["fd_flowers"] > 0

        again = run_job(instance, "study_runs", keys[0], data, config)  # finished: reused, not trained again
        assert again.asset_materializations_for_node("study_run")[0].metadata["reused"].value is True
        assert again.output_for_node("study_run") == first

        report = run_job(instance, "study_reports", "tiny:quick", data,
                         {"study_report": {"config": {"study_file": str(path)}}}).output_for_node("study_report")
    page = Path(report.path).read_text()
    assert report.verdicts["batch-size"] == "inconclusive"  # one seed a run: no spread to decide by
    assert page.count("data:image/png;base64,") >= 3 and "Batch 8 and batch 32 are worse than 16." in page
    assert "<i>“batch 16 best”</i>" in page  # the source's words beside the claim
    assert "arch2-batch16 at 10 iterations" in page and "arch2-batch16 at 20 iterations" in page  # snapshot grids
    for column in ("D(x) train", "D(x) held-out", "fd_flowers", "precision", "recall", "near-copies",
                   "edge distance", "checkerboard", "blockiness", "seeds", "it/s", "trained beside"):
        assert f"<th>{column}</th>" in page, column
    for column in ("FID", "fd_effnet"):  # no run has it (no Inception weights; 40 samples for 112 dimensions)
        assert f"<th>{column}</th>" not in page and f"<b>{column} n/a</b>: " in page, column  # its reason instead
    assert page.count("<td>arch2-batch") >= 2


def test_a_dataset_that_cannot_be_had_is_skipped_with_its_runs(tmp_path, capsys, monkeypatch):
    """Flowers-102 cannot be downloaded here: its runs are skipped with a warning (their claims are then reported
    not measured), and a study left with no run at all is one error line."""
    from flower_pipeline.cli import main

    run = {"label": "f102-color-arch1", "variant": "flowers102-color", "arch": "arch1"}
    study = {**TINY_STUDY, "claims": [{"id": "flowers102", "text": "Flowers-102 changes the results.", "runs": [run]}]}
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_INSTANCE_CONFIG, home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code = main(["study", "run", str(_write(tmp_path, study)), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 2, err
    assert err[0].startswith("warning: skipping 1 runs on flowers102-color-16, which could not be prepared")
    assert err[1].startswith("error: no run of tiny (quick) has its data: flowers102-color-16: could not download")


FUSABLE_STUDY = {
    "name": "fusable", "title": "Runs that fuse",
    "profiles": {"quick": {"size": 16, "iterations": 60, "seeds": 2, "evaluation": {"samples": 40, "kid_subsets": 5},
                           "settings": {"features": 8, "log_every": 20, "sample_every": 30, "checkpoint_seconds": 0,
                                        "deterministic": True}}},
    "claims": [
        {"id": "dropout", "text": "Dropout in architecture 1 hurts.", "runs": [
            {"label": "f17-color-arch1", "variant": "synthetic-color", "arch": "arch1"},
            {"label": "arch1-dropout", "variant": "synthetic-color", "arch": "arch1", "settings": {"dropout": 0.3}}]},
        {"id": "collapse", "text": "Architecture 2 collapses.", "runs": [
            {"label": "f17-color-arch2", "variant": "synthetic-color", "arch": "arch2"}]},
        {"id": "d-scores", "text": "D scores.", "uses": ["f17-color-arch1", "f17-color-arch2"]}],
}


def test_study_run_fuses_compatible_runs_trains_groups_side_by_side_and_gives_the_unfused_verdicts(
        tmp_path, monkeypatch, capsys):
    """Four architecture-1 runs (two settings × two seeds) fuse into one group, the two architecture-2 runs into
    another. On two cores both groups train at once in one step, each on its own thread, with exactly the
    numbers they get one after the other; each partition is still materialized with its own record, and the
    numbers are close to those of `--no-fuse`, which trains the six alone."""
    from flower_pipeline.cli import main
    from flower_pipeline.training import precision_for

    path = tmp_path / "fusable.yaml"
    path.write_text(yaml.safe_dump(FUSABLE_STUDY, sort_keys=False))
    outcome = {}
    for mode, flags in (("fused", ["--parallel", "2"]), ("one-at-a-time", ["--parallel", "1"]),
                        ("unfused", ["--no-fuse", "--parallel", "2"])):
        home = tmp_path / mode / "home"
        home.mkdir(parents=True)
        shutil.copy(PROJECT_INSTANCE_CONFIG, home)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        data = tmp_path / mode / "data"
        assert main(["study", "run", str(path), "--data-dir", str(data), "--device", "cpu", *flags]) == 0
        printed = capsys.readouterr().out
        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name="study_runs"))
            materialized = instance.get_materialized_partitions(dg.AssetKey("study_run"))
        records = {label: json.loads(p.read_text()) for label in ("f17-color-arch1", "f17-color-arch1+s1",
                                                                    "arch1-dropout", "arch1-dropout+s1",
                                                                    "f17-color-arch2", "f17-color-arch2+s1")
                   for p in (data / "studies" / "fusable-quick" / label).glob("*/result.json")}
        outcome[mode] = (len(runs), len(materialized), records, printed)
        report = tmp_path / mode / "report.html"
        assert main(["study", "report", str(path), "--data-dir", str(data), "-o", str(report)]) == 0
        outcome[mode] += (report.read_text(),)
    fused, alone, unfused = outcome["fused"], outcome["one-at-a-time"], outcome["unfused"]
    assert (fused[0], fused[1]) == (1, 6) and (alone[0], alone[1]) == (2, 6) and (unfused[0], unfused[1]) == (1, 6)
    assert "6 runs in 2 trainings (6 trained side by side in 2 fused groups" in fused[3]
    assert "up to 2 at once, one per core" in fused[3] and "at once" not in alone[3]
    assert len(fused[2]) == len(unfused[2]) == 6
    for label, record in fused[2].items():
        assert record["metrics"] == alone[2][label]["metrics"]  # what trained beside on the other core: nothing
        assert record["run_key"] == alone[2][label]["run_key"]
        other = unfused[2][label]
        assert record["run_key"] != other["run_key"]  # trained beside others: another run, with its group
        assert other["provenance"]["fused_group"] == "solo" and label in record["provenance"]["fused_group"]
        assert record["provenance"]["cpu_capability"] and record["provenance"]["device"] == "cpu"
        assert record["provenance"]["precision"] == precision_for("auto", "cpu")  # the machine's, made concrete
        for metric in ("d_real_train_mean", "d_fake_mean", "checkerboard_ratio", "colour_distance"):
            assert record["metrics"][metric] == pytest.approx(other["metrics"][metric], rel=0.05, abs=0.02), metric
    shown = r"class='(supported|not-supported|inconclusive|not-measured)'"
    verdicts = [re.findall(shown, o[4]) for o in outcome.values()]
    # Unfused is another seed (docs/design.md, "What a run is"): with 2 seeds a verdict may differ, the numbers not.
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) == len(verdicts[2]) == 3
    assert "<th>trained beside</th>" in fused[4] and "cpu_capability=" in fused[4]

    # --only in the fused data folder: the run's group is the study's, never the selection's. Its group is
    # finished, so it is reused; alone (--no-fuse) it is another run, in its own folder, overwriting nothing.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "fused" / "home"))
    data, runs = tmp_path / "fused" / "data", tmp_path / "fused" / "data" / "studies" / "fusable-quick"
    before = {p: p.read_bytes() for p in runs.glob("*/*/result.json")}
    assert main(["study", "run", str(path), "--data-dir", str(data), "--device", "cpu", "--only", "arch1-dropout"]) == 0
    printed = capsys.readouterr().out
    assert "2 more runs train with the chosen ones" in printed and printed.count(": reused;") == 4, printed
    assert main(["study", "run", str(path), "--data-dir", str(data), "--device", "cpu", "--only", "arch1-dropout",
                 "--no-fuse"]) == 0
    assert "reused" not in capsys.readouterr().out
    after = {p: p.read_bytes() for p in runs.glob("*/*/result.json")}
    assert all(after[p] == content for p, content in before.items()) and len(after) == len(before) + 2
