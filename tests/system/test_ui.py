"""The Dagster UI as the README starts it (`dg dev`: webserver and daemon), on the README's SQLite instance. Every
run is the same run, whoever started it: the UI re-executes a run the command line started; a crashed command
line run is failed, alerted and retried once by the daemon; a killed run worker leaves no training behind, and
the GPU slot goes to the next training only after it is gone."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from conftest import PROJECT, graphql, launch_retraining, reexecute, stop_process_group, webhook_receiver

CLI = str(Path(sys.executable).with_name("flower-pipeline"))
QUERY = ("{ assetNodes { assetKey { path } } workspaceOrError { ... on Workspace { locationEntries { name } } } }")
VARIANT = "synthetic-color-16"
# Small enough to end in seconds on a CPU, long enough to be killed after its first checkpoint.
TRAINING = {"iterations": 600, "features": 8, "batch_size": 8, "log_every": 20, "sample_every": 600,
            "checkpoint_seconds": 0, "device": "cpu"}
EVALUATION = {"samples": 16, "inception_weights": "off", "device": "cpu"}
DEAD_AFTER = 20  # seconds of heartbeat silence before the reaper fails a run (60 by default)


def _wait(what: str, seconds: float, found):
    deadline = time.monotonic() + seconds
    while not (value := found()):
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        time.sleep(0.5)
    return value


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie, killed and not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _family(pid: int) -> set[int]:
    """The process and all its descendants, from the process table."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    family, todo = set(), [pid]
    while todo:
        family.add(current := todo.pop())
        todo.extend(children.get(current, []))
    return family


def _run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id):
        if entry.dagster_event and (message := entry.dagster_event.message or "").startswith("Started process"):
            return int(message.split("pid: ")[1].rstrip(").")) if "pid: " in message else None
    return None


def _step_started(instance: dg.DagsterInstance, run_id: str, step: str) -> float | None:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
        if entry.step_key == step:
            return entry.timestamp
    return None


def _retry_of(instance: dg.DagsterInstance, run_id: str) -> list[dg.DagsterRun]:
    return instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))


def _finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus | None:
    run = instance.get_run_by_id(run_id)
    return run.status if run.is_finished else None


def _logged(instance: dg.DagsterInstance, run_id: str, text: str) -> bool:
    return any(text in (entry.user_message or "") for entry in instance.all_logs(run_id))


def _checkpoint(data: Path, arch: str) -> Path | None:
    return next(iter(data.glob(f"synthetic/training/{VARIANT}/{arch}/*/checkpoint.pt")), None)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dg.DagsterInstance, Path, dict, list]]:
    """`dg dev` on a fresh SQLite instance with a prepared variant: (webserver, instance, data, env, alerts)."""
    tmp = tmp_path_factory.mktemp("ui")
    home, data = tmp / "home", tmp / "data"
    home.mkdir()
    shutil.copy(PROJECT / "dagster_home" / "dagster.yaml", home)
    hook, received = webhook_receiver()
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLOWER_PIPELINE_DATA_DIR": str(data), "OMP_NUM_THREADS": "1",
           "FLOWER_PIPELINE_ALERT_WEBHOOK": f"http://127.0.0.1:{hook.server_address[1]}/hook",
           "FLOWER_PIPELINE_DEAD_AFTER": str(DEAD_AFTER)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([CLI, "prepare", "--dataset", "synthetic", "--size", "16", "--feature-net-epochs", "1"], env=env,
                   check=True, capture_output=True, timeout=600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp / "dg.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name("dg")), "dev", "-p", str(port)], cwd=PROJECT,
                                  env=env, stdout=out, stderr=out, start_new_session=True)
    webserver = f"http://127.0.0.1:{port}"

    def serving() -> bool:  # readiness, generous: a busy machine loads slowly
        assert server.poll() is None, log.read_text()[-2000:]
        try:
            return bool(graphql(webserver, QUERY)["assetNodes"])  # else the code location is still loading
        except OSError:
            return False

    try:
        _wait("dg dev answers with the assets", 300, serving)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield webserver, instance, data, env, received
    finally:
        stop_process_group(server)
        hook.shutdown()
        hook.server_close()
    assert "does not match" not in log.read_text()


@pytest.mark.slow
def test_dg_dev_serves_the_assets_under_one_code_location_name_and_reexecutes_a_cli_run(ui):
    webserver, instance, *_ = ui
    cli_run = instance.get_runs(limit=1)[0]  # prepare_variant, started by the command line
    assert cli_run.remote_job_origin.location_name == "flower_pipeline"
    answer = graphql(webserver, QUERY)
    assets = {"/".join(n["assetKey"]["path"]) for n in answer["assetNodes"]}
    assert {"raw_archive", "tensor_cache", "trained_generator", "generator_evaluation", "registered_generator",
            "feature_network", "study_run", "study_report"} <= assets
    assert [e["name"] for e in answer["workspaceOrError"]["locationEntries"]] == ["flower_pipeline"]

    status, run = reexecute(webserver, cli_run.run_id)
    assert status == "SUCCESS"
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/parent_run_id"] == cli_run.run_id and tags["dagster/partition"] == "synthetic-color-16"


@pytest.mark.slow
def test_a_killed_run_worker_leaves_no_training_and_the_next_training_waits_for_it(ui):
    """SIGKILL of the run worker the daemon launched, mid-training: nothing of it trains 30 s later, the queued
    training's step starts only after that, and the retry resumes from the last checkpoint."""
    webserver, instance, data, _, received = ui
    first = launch_retraining(webserver, f"arch1|{VARIANT}", data, TRAINING, EVALUATION)
    _wait("the first training wrote a checkpoint", 300, lambda: _checkpoint(data, "arch1"))
    queued = launch_retraining(webserver, f"arch2|{VARIANT}", data, {**TRAINING, "iterations": 40}, EVALUATION)
    worker = _run_worker_pid(instance, first)
    assert worker and _alive(worker) and _step_started(instance, queued, "trained_generator") is None
    family = _family(worker)
    os.kill(worker, signal.SIGKILL)
    killed = time.time()
    _wait("every process of the killed run ended", 30, lambda: not any(_alive(p) for p in family))
    gone = time.time()
    assert gone - killed < 30

    assert _wait("the killed run is failed", 120, lambda: _finished(instance, first)) == dg.DagsterRunStatus.FAILURE
    assert _wait("the queued training ends", 300, lambda: _finished(instance, queued)) == dg.DagsterRunStatus.SUCCESS
    assert _step_started(instance, queued, "trained_generator") >= gone  # the slot was never shared

    (retry,) = _wait("the daemon retries the killed run", 120, lambda: _retry_of(instance, first))
    assert _wait("the retry ends", 300, lambda: _finished(instance, retry.run_id)) == dg.DagsterRunStatus.SUCCESS
    assert _logged(instance, retry.run_id, "resumed from iteration")
    _wait("the failure is alerted", 90, lambda: any(a["run_id"] == first for a in received))


@pytest.mark.slow
def test_a_crashed_cli_run_is_failed_alerted_and_retried_once_by_the_daemon(ui):
    """SIGKILL of `flower-pipeline train`: its heartbeat stops, the reaper fails the run, the failure sensor
    alerts, and run retries start it again from the code location, resuming its checkpoint."""
    _, instance, data, env, received = ui
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TRAINING.items()]
    flags += [f"--eval-{k.replace('_', '-')}={v}" for k, v in EVALUATION.items() if k != "device"]
    cli = subprocess.Popen([CLI, "train", "--variant", VARIANT, "--arch", "arch2", *flags, "--seed", "7"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        checkpoint = _wait("the command-line training wrote a checkpoint", 300, lambda: _checkpoint(data, "arch2"))
        assert cli.poll() is None, "the training ended before it was killed"
        (run,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=30)
    finally:
        cli.kill()
    assert checkpoint.exists()
    assert _wait("the crashed run is failed", 120, lambda: _finished(instance, run.run_id)) == \
        dg.DagsterRunStatus.FAILURE
    _wait("the failure is alerted", 90, lambda: any(a["run_id"] == run.run_id for a in received))
    (retry,) = _wait("the daemon retries the crashed run", 120, lambda: _retry_of(instance, run.run_id))
    assert _wait("the retry ends", 300, lambda: _finished(instance, retry.run_id)) == dg.DagsterRunStatus.SUCCESS
    assert _logged(instance, retry.run_id, "resumed from iteration")
    assert len(_retry_of(instance, run.run_id)) == 1 and not _retry_of(instance, retry.run_id)
