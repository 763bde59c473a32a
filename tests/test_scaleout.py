"""Scaling out against the real services: PostgreSQL, RabbitMQ and Redis, with `flower-pipeline stack` starting
an MLflow server, Dagster's daemon and webserver and Celery workers (two GPU workers, one ingest worker).

The module gets its own databases, RabbitMQ virtual host and Redis database, dropped afterwards. Where a
service is absent the tests skip with the reason; with $CI set, an absent service fails them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import launch_retraining, reexecute

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "flower-pipeline")
POSTGRES = "postgresql://root@127.0.0.1:5432"
PREPARE = ["--dataset", "synthetic", "--size", "32", "--feature-net-epochs", "1", "--feature-net-width", "4",
           "--feature-net-dim", "8"]


def train_flags(iterations: int, *extra: str) -> list[str]:
    """A small, quick training and evaluation (the gate's recall floor off: tens of iterations)."""
    return ["--iterations", str(iterations), "--features", "8", "--log-every", "20", "--sample-every",
            str(iterations), "--eval-samples", "64", "--eval-min-recall", "0", *extra]


LONG_TRAIN = train_flags(150, "--checkpoint-seconds", "0")  # a checkpoint at every log line: 20 iterations


def _missing_service() -> str | None:
    import psycopg2
    import redis

    try:
        psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg2.OperationalError:
        return "PostgreSQL is not reachable on 127.0.0.1:5432"
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=3).ping()
    except redis.RedisError:
        return "Redis is not reachable on 127.0.0.1:6379"
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
    except OSError:
        return "RabbitMQ is not reachable on 127.0.0.1:5672"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl (to make a virtual host per test module) is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _sql(statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(statement)
    connection.close()


class Stack:
    """The environment of one stack, and the CLI run in it."""

    def __init__(self, root: Path, name: str, redis_db: int) -> None:
        self.home, self.data = root / "dagster_home", root / "data"
        self.home.mkdir()
        shutil.copy(PROJECT / "deploy" / "dagster_home" / "dagster.yaml", self.home)
        self.tracking = f"http://127.0.0.1:{_free_port()}"
        self.webserver = f"http://127.0.0.1:{_free_port()}"
        self.env = {
            **os.environ, "DAGSTER_HOME": str(self.home), "FLOWER_PIPELINE_DATA_DIR": str(self.data),
            "DAGSTER_POSTGRES_URL": f"{POSTGRES}/{name}_dagster",
            "FLOWER_PIPELINE_MLFLOW_BACKEND": f"{POSTGRES}/{name}_mlflow", "MLFLOW_TRACKING_URI": self.tracking,
            "FLOWER_PIPELINE_CELERY_BROKER": f"amqp://guest:guest@127.0.0.1:5672/{name}",
            "FLOWER_PIPELINE_CELERY_BACKEND": f"redis://127.0.0.1:6379/{redis_db}",
            # MLflow's client retries a dead server for minutes by default; a test has seconds
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "FLOWER_PIPELINE_DEAD_AFTER": "20",  # the reaper's patience (60 s by default), shortened for tests
        }

    def cli(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> tuple[int, str, str]:
        """The CLI with this stack's environment, in this process (a subprocess would import torch, Dagster
        and MLflow again, seconds each time): (exit code, stdout, stderr)."""
        from flower_pipeline.cli import main

        out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
        os.environ.clear()
        os.environ.update(env or self.env)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert not check or code == 0, err.getvalue()[-3000:]
        return code, out.getvalue(), err.getvalue()

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([CLI, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def record(self, piece: str) -> dict:
        return json.loads((self.home / "stack" / f"{piece}.json").read_text())

    @functools.cached_property
    def instance(self):
        import dagster as dg

        saved = os.environ.get("DAGSTER_POSTGRES_URL")
        os.environ["DAGSTER_POSTGRES_URL"] = self.env["DAGSTER_POSTGRES_URL"]  # read by the instance's yaml
        try:
            return dg.DagsterInstance.from_config(str(self.home))
        finally:
            os.environ.pop("DAGSTER_POSTGRES_URL")
            if saved is not None:
                os.environ["DAGSTER_POSTGRES_URL"] = saved

    def mlflow(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking, self.tracking)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = _missing_service()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: CI must run the scale-out tests")
        pytest.skip(missing)
    import redis

    name, redis_db = f"fp_{uuid.uuid4().hex[:10]}", random.randint(1, 15)
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    stack = Stack(tmp_path_factory.mktemp("stack"), name, redis_db)
    try:
        stack.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver", stack.webserver)
        yield stack
    finally:
        stack.cli("stack", "down", check=False)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True)
        redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
        for database in (f"{name}_dagster", f"{name}_mlflow"):
            _sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def chain(stack: Stack) -> Stack:
    """Both synthetic variants prepared, then two retrainings at once, each trained, evaluated and registered
    through the Celery executor: colour × arch1 from the CLI, grey × arch2 launched from the UI (the daemon runs
    it), with the gpu pool at one slot, as on a one-GPU machine, though two GPU workers are free."""
    for mode in ("color", "gray"):
        stack.cli("prepare", *PREPARE, "--mode", mode)
    stack.instance.event_log_storage.set_concurrency_slots("gpu", 1)
    try:
        from_ui = launch_retraining(stack.webserver, "arch2|synthetic-gray-32", stack.data, {
            "iterations": 150, "features": 8, "log_every": 20, "sample_every": 150, "checkpoint_seconds": 0},
            {"samples": 64, "min_recall": 0.0})
        from_cli = stack.start("train", "--variant", "synthetic-color-32", "--arch", "arch1", *LONG_TRAIN)
        _, err = from_cli.communicate(timeout=300)
        assert from_cli.returncode == 0, err[-3000:]
        deadline = time.monotonic() + 300
        while not stack.instance.get_run_by_id(from_ui).is_finished:
            assert time.monotonic() < deadline, "the run launched from the UI did not finish"
            time.sleep(1)
    finally:
        stack.instance.event_log_storage.set_concurrency_slots("gpu", 2)
    return stack


def _worker_steps(instance, run_ids: list[str]) -> list[tuple[str, str, float, float]]:
    """(worker, step, started, ended) of every step a Celery worker finished, from the runs' event logs."""
    from dagster._core.events import DagsterEventType

    steps = []
    for run_id in run_ids:
        started: dict[str, tuple[str, float]] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None:
                continue
            data = event.engine_event_data if event.event_type == DagsterEventType.ENGINE_EVENT else None
            if data is not None and "Celery worker" in data.metadata:
                started[entry.step_key] = (data.metadata["Celery worker"].value, entry.timestamp)
            elif event.event_type == DagsterEventType.STEP_SUCCESS:
                worker, at = started[entry.step_key]
                steps.append((worker.split("@")[0], entry.step_key, at, entry.timestamp))
    return steps


def test_two_retrainings_share_two_gpu_workers_and_one_gpu_slot(chain: Stack):
    instance = chain.instance
    runs = [r for r in instance.get_runs() if r.job_name == "retrain_generators"]
    assert len(runs) == 2 and all(r.is_success for r in runs)
    records = [instance.get_run_record_by_id(r.run_id) for r in runs]
    assert max(r.start_time for r in records) < min(r.end_time for r in records)  # the runs were concurrent
    steps = _worker_steps(instance, [r.run_id for r in runs])
    gpu_steps = [s for s in steps if s[1] in ("trained_generator", "generator_evaluation")]
    assert len(gpu_steps) == 4 and {worker for worker, *_ in gpu_steps} == {"gpu0", "gpu1"}  # both workers ran
    assert {worker for worker, step, *_ in steps if step == "registered_generator"} == {"ingest"}
    spans = sorted((start, end) for _, _, start, end in gpu_steps)  # the pool's one slot: never two at once,
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))  # so neither per GPU
    versions = chain.mlflow().search_model_versions("")
    assert sorted(v.name for v in versions) == ["synthetic-color-32-arch1", "synthetic-gray-32-arch2"]


def test_a_cli_run_reexecutes_from_the_ui_on_the_postgresql_instance(chain: Stack):
    cli_run = [r for r in chain.instance.get_runs() if r.job_name == "prepare_dataset"][-1]  # `prepare`'s first
    assert cli_run.remote_job_origin.location_name == "flower_pipeline"
    status, run = reexecute(chain.webserver, cli_run.run_id)
    assert status == "SUCCESS", run
    assert {t["key"]: t["value"] for t in run["tags"]}["dagster/parent_run_id"] == cli_run.run_id


def test_each_gpu_worker_sees_its_own_gpu_and_takes_one_step_at_a_time(stack: Stack):
    for i in (0, 1):
        record = stack.record(f"gpu{i}")
        environ = Path(f"/proc/{record['pid']}/environ").read_bytes().split(b"\0")
        assert f"CUDA_VISIBLE_DEVICES={i}".encode() in environ
        assert record["command"][-8:-2] == ["-Q", "gpu", "-c", "1", "-n", f"gpu{i}@%h"]


def test_models_and_sample_match_a_sqlite_store_for_the_same_training(chain: Stack, tmp_path: Path):
    """The same training registered in-process into SQLite: `models` and `sample` say and draw the same."""
    local = {k: v for k, v in chain.env.items() if k not in ("FLOWER_PIPELINE_CELERY_BROKER", "MLFLOW_TRACKING_URI")}
    chain.cli("train", "--variant", "synthetic-color-32", "--arch", "arch1", *LONG_TRAIN, env=local)

    def table(env: dict[str, str]) -> list[list[str]]:  # the cells, without the creation date and time
        lines = chain.cli("models", env=env)[1].splitlines()
        return [line.split()[:-2] for line in lines if line.startswith(("MODEL", "synthetic-color-32-arch1"))]

    assert table(chain.env) == table(local)
    grids = []
    for env, png in ((chain.env, tmp_path / "server.png"), (local, tmp_path / "sqlite.png")):
        chain.cli("sample", "--model", "synthetic-color-32-arch1", "--alias", "latest", "-n", "8", "--seed", "3",
                  "-o", str(png), env=env)
        grids.append(png.read_bytes())
    assert grids[0] == grids[1]


def _wait_for_checkpoint(stack: Stack, variant: str, arch: str, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list((stack.data / "synthetic" / "training" / variant / arch).glob("*/checkpoint.pt"))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError("no checkpoint within 120 s")


def _worker_running(stack: Stack, step: str) -> str:
    """The worker executing `step` now (the newest run's newest Celery engine event for it)."""
    instance = stack.instance
    run = instance.get_runs(limit=1)[0]
    workers = [worker for worker, key, *_ in _started_steps(instance, run.run_id) if key == step]
    return workers[-1]


def _started_steps(instance, run_id: str) -> list[tuple[str, str]]:
    from dagster._core.events import DagsterEventType

    found = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data
        if data is not None and "Celery worker" in data.metadata:
            found.append((data.metadata["Celery worker"].value.split("@")[0], entry.step_key))
    return found


def test_a_worker_killed_mid_training_hands_the_step_over_and_it_resumes(chain: Stack):
    training = chain.start("train", "--variant", "synthetic-gray-32", "--arch", "arch1", *LONG_TRAIN)
    _wait_for_checkpoint(chain, "synthetic-gray-32", "arch1", training)
    worker = _worker_running(chain, "trained_generator")
    os.killpg(chain.record(worker)["pid"], signal.SIGKILL)  # the whole worker, as a lost machine

    _, err = training.communicate(timeout=300)
    assert training.returncode == 0, err[-3000:]  # not hung, not failed: handed to the other GPU worker
    instance = chain.instance
    run = instance.get_runs(limit=1)[0]
    workers = [w for w, step in _started_steps(instance, run.run_id) if step == "trained_generator"]
    assert len(workers) == 2 and workers[0] == worker != workers[1]
    resumed = [e.message for e in instance.all_logs(run.run_id) if "resumed from iteration" in (e.message or "")]
    assert resumed and int(resumed[0].split("resumed from iteration ")[1].split()[0]) > 0
    client = chain.mlflow()
    assert len(client.search_model_versions("name='synthetic-gray-32-arch1'")) == 1  # registered once
    statuses = sorted(r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("flower-pipeline").experiment_id],
        "tags.dagster_partition = 'arch1|synthetic-gray-32'"))
    assert statuses == ["FINISHED", "KILLED"]  # the killed attempt's MLflow run is closed, not left RUNNING
    chain.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver", chain.webserver)


def test_a_gpu_step_waiting_for_the_pool_says_so_in_its_run_log(chain: Stack):
    import dagster as dg

    storage = chain.instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)
    # The one GPU is busy with a live run's step (a slot of a run that does not exist the reaper frees).
    chain.instance.add_run(dg.DagsterRun(job_name="retrain_generators", run_id="another-run",
                                         status=dg.DagsterRunStatus.STARTED))
    storage.claim_concurrency_slot("gpu", "another-run", "its-step")
    try:
        training = chain.start("train", "--variant", "synthetic-gray-32", "--arch", "arch2", *train_flags(20))
        deadline, waits = time.monotonic() + 120, []
        while not waits:
            assert time.monotonic() < deadline and training.poll() is None, "no wait event within 120 s"
            time.sleep(1)
            run = chain.instance.get_runs(limit=1)[0]
            waits = [e.message for e in chain.instance.all_logs(run.run_id) if "waits for a slot" in (e.message or "")]
        assert waits[0] == ('step "trained_generator" waits for a slot of pool "gpu" (1 slot(s), held by run '
                            'another-)')
        storage.free_concurrency_slots_for_run("another-run")
        _, err = training.communicate(timeout=300)
        assert training.returncode == 0, err[-3000:]  # and it went on once the slot was free
    finally:
        storage.free_concurrency_slots_for_run("another-run")
        chain.instance.delete_run("another-run")
        storage.set_concurrency_slots("gpu", 2)


def test_a_killed_cli_driver_is_failed_by_its_silent_heartbeat_and_its_slot_freed(chain: Stack):
    """The command line drives a Celery run on the PostgreSQL instance; SIGKILL it. Nothing on the daemon's
    machine knows its pid: the run's heartbeat stops and the daemon's reaper fails it. Its step, still training
    on its worker, sees that and stops; only then is the GPU slot free."""
    import dagster as dg

    training = chain.start("train", "--variant", "synthetic-color-32", "--arch", "arch1",
                           *train_flags(1_000_000, "--checkpoint-seconds", "0", "--seed", "7"))
    checkpoint = _wait_for_checkpoint(chain, "synthetic-color-32", "arch1", training)
    run = chain.instance.get_runs(limit=1)[0]
    assert run.status == dg.DagsterRunStatus.STARTED
    training.kill()
    training.wait(timeout=30)

    def held() -> bool:
        return any(s.run_id == run.run_id for s in chain.instance.event_log_storage.get_concurrency_info(
            "gpu").claimed_slots)

    deadline = time.monotonic() + 120  # heartbeat silent 20 s (60 by default) + the reaper's 30 s tick + 5 s
    while held() or chain.instance.get_run_by_id(run.run_id).status != dg.DagsterRunStatus.FAILURE:
        assert time.monotonic() < deadline, "the killed driver's run was not failed and its slot freed in 2 min"
        time.sleep(1)
    last_write = checkpoint.stat().st_mtime_ns
    time.sleep(3)  # the step writes a checkpoint every 20 iterations while it trains
    assert checkpoint.stat().st_mtime_ns == last_write, "the slot was freed while the step still trained"
    failure = [e.message for e in chain.instance.all_logs(run.run_id) if "no heartbeat" in (e.message or "")]
    assert failure and "the process driving it was killed" in failure[0]
    stopped = [e for e in chain.instance.all_logs(run.run_id) if "training stopped at iteration" in str(e)]
    assert stopped, "the worker's step did not stop when its run failed"


def test_mlflow_down_mid_training_fails_in_one_line_and_a_retry_registers_once(chain: Stack):
    args = ["train", "--variant", "synthetic-color-32", "--arch", "arch2", *LONG_TRAIN]
    training = chain.start(*args)
    _wait_for_checkpoint(chain, "synthetic-color-32", "arch2", training)
    os.killpg(chain.record("mlflow")["pid"], signal.SIGTERM)

    _, err = training.communicate(timeout=300)
    assert training.returncode == 1
    assert err.strip().splitlines() == [f"error: MLflow at {chain.tracking} failed: unreachable (connection refused)"]
    chain.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver", chain.webserver)
    client = chain.mlflow()
    assert client.search_registered_models("name='synthetic-color-32-arch2'") == []  # nothing half-registered

    chain.cli(*args)  # the retry
    assert len(client.search_model_versions("name='synthetic-color-32-arch2'")) == 1
    statuses = sorted(r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("flower-pipeline").experiment_id],
        "tags.dagster_partition = 'arch2|synthetic-color-32'"))
    # The failed attempt's MLflow run is closed, never left RUNNING: FAILED by the failure sensor (a CLI run is
    # a run like the UI's, so run-status sensors see it) once MLflow is back, or KILLED by the retry, if first.
    assert statuses in (["FAILED", "FINISHED"], ["FINISHED", "KILLED"]), statuses
    instance = chain.instance
    resumed = [e.message for e in instance.all_logs(instance.get_runs(limit=1)[0].run_id)
               if "resumed from iteration" in (e.message or "")]
    assert resumed  # the retry went on from the checkpoint the failed attempt left


def test_a_worker_that_sees_another_data_folder_fails_in_one_line_naming_it(tmp_path: Path):
    """Materialized on one machine's data folder, read on a machine that sees another: the step says so."""
    import dagster as dg
    from conftest import prepare, run_job

    from flower_pipeline.defs.partitions import training_key

    with dg.instance_for_test() as instance:
        assert prepare(instance, tmp_path / "shared", "synthetic-color-32").success
        elsewhere = run_job(instance, "retrain_generators", training_key("synthetic-color-32", "arch1"),
                            tmp_path / "local", assets=["trained_generator"])
    failure = elsewhere.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    expected = tmp_path / "local" / "stage_outputs" / "tensor_cache" / "synthetic-color-32.json"
    assert failure.startswith(f"tensor_cache was materialized, but its output is not at {expected}: ")
    assert "every worker must see one shared data folder" in failure and "\n" not in failure


def test_stack_up_asks_mlflow_for_its_health_without_the_uris_credentials(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """urllib refuses a URL with user:password@, so `stack up` waited its full timeout and said MLflow did not
    start although it had: its /health is asked at the bare host and port."""
    from flower_pipeline import stack

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ann:s3cret@127.0.0.1:5123")
    monkeypatch.setenv("FLOWER_PIPELINE_MLFLOW_BACKEND", "postgresql://ann:s3cret@127.0.0.1/x")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (mlflow,) = [p for p in stack.pieces(1, 1, "http://127.0.0.1:3000", tmp_path) if p.name == "mlflow"]
    assert mlflow.url == "http://127.0.0.1:5123/health"


def test_stack_up_without_its_environment_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch):
    from flower_pipeline.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name in ("DAGSTER_POSTGRES_URL", "FLOWER_PIPELINE_MLFLOW_BACKEND", "MLFLOW_TRACKING_URI",
                 "FLOWER_PIPELINE_CELERY_BROKER", "FLOWER_PIPELINE_CELERY_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    assert main(["stack", "up"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the stack needs DAGSTER_POSTGRES_URL, FLOWER_PIPELINE_MLFLOW_BACKEND, ")
    assert "source deploy/stack.env" in err and err.count("\n") == 1
    assert not (tmp_path / "stack").exists()  # nothing started, nothing written


def test_stack_status_says_when_nothing_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch):
    from flower_pipeline.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["stack", "status"]) == 1
    assert capsys.readouterr().err == "error: the stack is not running: `flower-pipeline stack up` starts it\n"


def test_stack_up_with_a_wrong_broker_says_so_before_starting_anything(stack: Stack, tmp_path: Path):
    env = {**stack.env, "DAGSTER_HOME": str(tmp_path),
           "FLOWER_PIPELINE_CELERY_BROKER": "amqp://guest:guest@127.0.0.1:5672/no-such-vhost"}
    code, _, err = stack.cli("stack", "up", env=env, check=False)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: cannot reach the Celery broker amqp://***@127.0.0.1:5672/no-such-vhost: ")
    assert not (tmp_path / "stack").exists()
