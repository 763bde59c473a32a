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
from conftest import PROJECT, launch_retraining, reexecute

pytestmark = pytest.mark.slow

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

    def __init__(self, root: Path, name: str, redis_db: int, broker_password: str) -> None:
        self.home, self.data = root / "dagster_home", root / "data"
        self.name, self.redis_db, self.broker_password = name, redis_db, broker_password
        self.pg_password = f"pg-{uuid.uuid4().hex[:12]}"  # trust auth ignores it; no line may show it
        self.home.mkdir()
        shutil.copy(PROJECT / "deploy" / "dagster_home" / "dagster.yaml", self.home)
        self.tracking = f"http://127.0.0.1:{_free_port()}"
        self.webserver = f"http://127.0.0.1:{_free_port()}"
        self.env = {
            **os.environ, "DAGSTER_HOME": str(self.home), "FLOWER_PIPELINE_DATA_DIR": str(self.data),
            "DAGSTER_POSTGRES_URL": f"postgresql://root:{self.pg_password}@127.0.0.1:5432/{name}_dagster",
            "FLOWER_PIPELINE_MLFLOW_BACKEND": f"postgresql://root:{self.pg_password}@127.0.0.1:5432/{name}_mlflow",
            "MLFLOW_TRACKING_URI": self.tracking,
            "FLOWER_PIPELINE_CELERY_BROKER": f"amqp://{name}:{broker_password}@127.0.0.1:5672/{name}",
            "FLOWER_PIPELINE_CELERY_BACKEND": f"redis://127.0.0.1:6379/{redis_db}",
            "FLOWER_PIPELINE_COMPUTE_LOGS": str(self.data / "compute_logs"),
            # MLflow's client retries a dead server for minutes by default; a test has seconds
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "FLOWER_PIPELINE_DEAD_AFTER": "20",  # the reaper's patience (60 s by default), shortened for tests
            "FLOWER_PIPELINE_MLFLOW_OUTAGE_SECONDS": "90",  # how long training waits out MLflow (15 min)
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

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen([CLI, *args], env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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

    name, redis_db, password = f"fp_{uuid.uuid4().hex[:10]}", random.randint(1, 15), uuid.uuid4().hex
    # The team's own RabbitMQ user and virtual host (guest is refused from any host but this one); its
    # password goes in on stdin, as an operator would type it, not on a command line.
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "add_user", name], input=password, text=True, check=True,
                   capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, name, ".*", ".*", ".*"], check=True,
                   capture_output=True)
    stack = Stack(tmp_path_factory.mktemp("stack"), name, redis_db, password)
    try:
        stack.said = stack.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver",
                               stack.webserver)[1]
        yield stack
    finally:
        stack.cli("stack", "down", check=False)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "delete_user", name], capture_output=True)
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
    os.killpg(_program(chain, worker), signal.SIGKILL)  # the whole worker (its pool too), as a crash

    _, err = training.communicate(timeout=300)
    assert training.returncode == 0, err[-3000:]  # not hung, not failed: handed to the other GPU worker
    instance = chain.instance
    run = instance.get_runs(limit=1)[0]
    workers = [w for w, step in _started_steps(instance, run.run_id) if step == "trained_generator"]
    assert len(workers) == 2 and workers[0] == worker  # the copy ran (on the other, or on it restarted)
    assert not [e for e in instance.all_logs(run.run_id) if "dropped a redelivered copy" in (e.message or "")]
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

    from flower_pipeline.scaleout.settings import NO_RETRY

    training = chain.start("train", "--variant", "synthetic-color-32", "--arch", "arch1",
                           *train_flags(1_000_000, "--checkpoint-seconds", "0", "--seed", "7"))
    checkpoint = _wait_for_checkpoint(chain, "synthetic-color-32", "arch1", training)
    run = chain.instance.get_runs(limit=1)[0]
    assert run.status == dg.DagsterRunStatus.STARTED
    # Not retried (run retries would resume it at once, writing the same checkpoint; test_ui tests the retry):
    # what stops here is the step of the killed driver's run, and the module's GPU workers are free after it.
    chain.instance.add_run_tags(run.run_id, NO_RETRY)
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


def test_mlflow_down_past_the_deadline_fails_in_one_line_and_a_retry_registers_once(chain: Stack):
    """MLflow stays down: training goes on to its end, then the step fails once MLflow has failed for the outage
    deadline, and the retry (on a Celery worker) resumes at the end of the finished training instead of repeating
    it. The first attempt runs in the command's own process, so that its deadline alone is shortened to 10 s."""
    args = ["train", "--variant", "synthetic-color-32", "--arch", "arch2", *LONG_TRAIN]
    in_process = {k: v for k, v in chain.env.items() if k != "FLOWER_PIPELINE_CELERY_BROKER"}
    training = chain.start(*args, env={**in_process, "FLOWER_PIPELINE_MLFLOW_OUTAGE_SECONDS": "10"})
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
    assert resumed and resumed[0].startswith("resumed from iteration 150 ")  # the finished training, not trained again


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
    from flower_pipeline.scaleout import stack

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


def _program(stack: Stack, piece: str) -> int:
    """The pid (and process group) of the program behind a piece's restarter."""
    return int((stack.home / "stack" / f"{piece}.child").read_text())


def _answering(stack: Stack, timeout: float = 2.0) -> set[str]:
    """The Celery workers that answer a ping through the broker, by name."""
    from flower_pipeline.scaleout.executor import worker_app

    saved = dict(os.environ)
    os.environ.update(stack.env)
    try:
        return {name.split("@")[0] for reply in worker_app().control.ping(timeout=timeout) for name in reply}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _crash_and_wait(stack: Stack, piece: str, within: float = 30.0) -> float:
    """SIGKILL a piece's program (its whole process group, as the OOM killer or a segfault would end it); the
    seconds until it answers again."""
    before, killed_at = _program(stack, piece), time.monotonic()
    with contextlib.suppress(ProcessLookupError):  # it ended by itself just now (its broker channel closed):
        os.killpg(before, signal.SIGKILL)          # what is tested, that it is back, still holds
    while True:
        back = time.monotonic() - killed_at
        assert back < within, f"{piece} was not back within {within:.0f} s"
        with contextlib.suppress(OSError, ValueError):
            if _program(stack, piece) != before and piece in _answering(stack, timeout=1.0):
                return back
        time.sleep(0.5)


def test_no_password_on_a_command_line_in_a_record_or_in_a_printed_line(stack: Stack):
    secrets = (stack.broker_password, stack.pg_password)
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            assert not any(secret in cmdline for secret in secrets), cmdline
    for path in (stack.home / "stack").iterdir():
        assert not any(secret in path.read_text(errors="replace") for secret in secrets), path
    assert stack.said and not any(secret in stack.said for secret in secrets)
    assert "--backend-store-uri" not in stack.record("mlflow")["command"]  # MLflow reads it from the environment


def test_a_setting_from_a_file_only_its_owner_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from flower_pipeline.errors import PipelineError
    from flower_pipeline.scaleout.settings import read_secret_files

    secret = tmp_path / "broker"
    secret.write_text("amqp://flower:s3cret@10.0.0.5:5672/flower\n")
    monkeypatch.delenv("FLOWER_PIPELINE_CELERY_BROKER", raising=False)
    monkeypatch.setenv("FLOWER_PIPELINE_CELERY_BROKER_FILE", str(secret))
    secret.chmod(0o644)
    with pytest.raises(PipelineError, match=r"^FLOWER_PIPELINE_CELERY_BROKER_FILE .* may be read by others "
                                            r"\(mode 644\): `chmod 600 "):
        read_secret_files()
    secret.chmod(0o600)
    read_secret_files()
    assert os.environ["FLOWER_PIPELINE_CELERY_BROKER"] == "amqp://flower:s3cret@10.0.0.5:5672/flower"


def test_stack_up_keeps_a_pool_limit_already_set_and_status_shows_it(stack: Stack):
    storage = stack.instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)  # an operator's `dagster instance concurrency set gpu 1`
    try:
        said = stack.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver",
                         stack.webserver)[1]
        assert storage.get_concurrency_info("gpu").slot_count == 1
        assert "gpu pool: limit 1 kept" in said
        assert "gpu pool: limit 1; held by none" in stack.cli("stack", "status")[1]
    finally:
        storage.set_concurrency_slots("gpu", 2)
    assert "gpu pool: no limit was set; set to 2 slot(s)" in stack.said  # the first `up`, on a new instance


def test_a_sigkilled_worker_is_started_again_within_30_seconds(stack: Stack):
    back = _crash_and_wait(stack, "gpu1")
    assert back < 30
    assert "supervise: celery exited with -9" in Path(stack.record("gpu1")["log"]).read_text()


@contextlib.contextmanager
def _rabbitmq_consumer_timeout(stack: Stack, milliseconds: int) -> Iterator[None]:
    """RabbitMQ's consumer timeout (30 min by default) shortened, checked every second, for the GPU workers'
    channels (they read it when they open one: both are restarted, before and after)."""
    def set_env(key: str, value: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", "eval", f"application:set_env(rabbit, {key}, {value})."], check=True,
                       capture_output=True)

    before = subprocess.run(["rabbitmqctl", "-q", "eval", "application:get_env(rabbit, consumer_timeout)."],
                            check=True, capture_output=True, text=True).stdout.strip()  # {ok,1800000}
    set_env("consumer_timeout", str(milliseconds))
    set_env("channel_tick_interval", "1000")
    try:
        for worker in ("gpu0", "gpu1"):
            _crash_and_wait(stack, worker)
        yield
    finally:
        set_env("consumer_timeout", before.split(",")[1].rstrip("}") if before.startswith("{ok,") else "1800000")
        set_env("channel_tick_interval", "60000")
        for worker in ("gpu0", "gpu1"):
            _crash_and_wait(stack, worker)


def test_a_step_longer_than_the_brokers_consumer_timeout_runs_once(chain: Stack):
    # 10 s, not less: a worker given a redelivered copy must decide and acknowledge within the timeout, or
    # RabbitMQ closes its channel too (on a loaded 2-core machine that decision took over 3 s).
    with _rabbitmq_consumer_timeout(chain, 10_000):
        chain.cli("train", "--variant", "synthetic-color-32", "--arch", "arch2",
                  *train_flags(1500, "--checkpoint-seconds", "0", "--seed", "11"))
    instance = chain.instance
    run = instance.get_runs(limit=1)[0]
    record = instance.get_run_record_by_id(run.run_id)
    started = [(worker, step) for worker, step in _started_steps(instance, run.run_id)
               if step in ("trained_generator", "generator_evaluation")]
    dropped = [e.message for e in instance.all_logs(run.run_id) if "dropped a redelivered copy" in (e.message or "")]
    assert run.is_success and sorted(step for _, step in started) == ["generator_evaluation", "trained_generator"]
    assert dropped, "the broker never redelivered: the step was not longer than the consumer timeout"
    holder = {step: worker for worker, step in started}  # each GPU step ran once, on one worker
    for message in dropped:  # a copy is dropped while its step runs, or once it (or its run) has ended
        step = message.split("copy of step ")[1].split(":")[0]
        assert (f": it still runs on {holder[step]}@" in message
                or message.endswith((": the step already ended", ": its run has ended (SUCCESS)"))), message
    training = [e for e in instance.all_logs(run.run_id) if e.step_key == "trained_generator"]
    assert training[-1].timestamp - training[0].timestamp > 20  # longer than twice the timeout
    assert record.end_time


def test_a_worker_on_other_code_refuses_a_step_in_one_line(chain: Stack, tmp_path: Path):
    from flower_pipeline.scaleout.settings import code_version

    old = tmp_path / "old"
    shutil.copytree(PROJECT / "flower_pipeline", old / "flower_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(old / "flower_pipeline" / "training.py", "a") as source:
        source.write("\n# the checkout before a `git pull`\n")
    stopped = ["gpu0", "gpu1"]
    for worker in stopped:  # the old worker is the only one on the gpu queue
        os.kill(chain.record(worker)["pid"], signal.SIGTERM)
    for worker in stopped:
        while (chain.home / "stack" / f"{worker}.child").exists():
            time.sleep(0.2)
    env = {**chain.env, "PYTHONPATH": str(old)}
    worker = subprocess.Popen([str(Path(sys.executable).parent / "celery"), "-A", "flower_pipeline.scaleout.worker",
                               "worker", "-Q", "gpu", "-c", "1", "-n", "old@%h"], cwd=old, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "old" not in _answering(chain):
            assert time.monotonic() < deadline and worker.poll() is None, "the old worker did not start"
        code, _, err = chain.cli("train", "--variant", "synthetic-color-32", "--arch", "arch1", *train_flags(20),
                                 check=False)
        assert code == 1 and "refuses step trained_generator" in err, err[-3000:]
        instance = chain.instance
        run = instance.get_runs(limit=1)[0]
        refusals = [e.message for e in instance.all_logs(run.run_id) if "refuses step" in (e.message or "")]
        assert len(refusals) == 1 and "\n" not in refusals[0]
        assert refusals[0].startswith("worker old@") and refusals[0].endswith(
            f"refuses step trained_generator: it runs code version {refusals[0].split('code version ')[1][:12]}, "
            f"the run was launched with {code_version()} (`flower-pipeline stack up` restarts workers whose code "
            "changed)")
        assert refusals[0].split("code version ")[1][:12] != code_version()
        assert instance.get_run_by_id(run.run_id).tags["dagster/max_retries"] == "0"  # not retried on that worker
        assert not [e for e in instance.all_logs(run.run_id) if e.step_key == "trained_generator"
                    and e.dagster_event and e.dagster_event.event_type_value == "STEP_START"]  # it never ran
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        chain.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver", chain.webserver)


def test_stack_up_restarts_a_worker_whose_code_changed(stack: Stack):
    record_file = stack.home / "stack" / "gpu1.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "code_version": "0123456789ab"}))  # started before a pull
    said = stack.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver",
                     stack.webserver)[1]
    assert "restarting gpu1: it runs code version 0123456789ab, this checkout has " in said
    assert stack.record("gpu1")["pid"] != record["pid"] and "gpu1" in _answering(stack)
    assert "restarting gpu0" not in said


class Relay:
    """TCP relays from an address of this host to the services on 127.0.0.1 (they listen on loopback only
    here): what a second host reaches instead of a service's network listener."""

    def __init__(self, host: str, ports: list[int]) -> None:
        import socketserver
        import threading

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(("127.0.0.1", self.server.server_address[1]))

                def pump(source: socket.socket, sink: socket.socket) -> None:
                    with contextlib.suppress(OSError):
                        while data := source.recv(65536):
                            sink.sendall(data)
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)

                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join()
                upstream.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.servers = [socketserver.ThreadingTCPServer((host, port), Pipe) for port in ports]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@contextlib.contextmanager
def _second_host(ports: list[int]) -> Iterator[tuple[str, str]]:
    """A Linux network namespace standing in for a second machine: its own address on a veth pair, its
    loopback down (no shortcut to this host's services), the same filesystem. Yields (namespace, this host's
    address as the namespace sees it)."""
    tag = uuid.uuid4().hex[:6]
    namespace, here, there, subnet = f"fp{tag}", f"fpa{tag}", f"fpb{tag}", random.randint(1, 250)
    host, peer = f"10.231.{subnet}.1", f"10.231.{subnet}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", namespace)
    relay = None
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", namespace)
        ip("addr", "add", f"{host}/24", "dev", here)
        ip("link", "set", here, "up")
        ip("netns", "exec", namespace, "ip", "addr", "add", f"{peer}/24", "dev", there)
        ip("netns", "exec", namespace, "ip", "link", "set", there, "up")
        relay = Relay(host, ports)
        yield namespace, host
    finally:
        if relay is not None:
            relay.close()
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _graphql_step_logs(webserver: str, run_id: str, step: str) -> str:
    """A step's captured stdout and stderr, as the UI reads them, from this host's webserver."""
    from conftest import graphql

    events = graphql(webserver, """query ($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection {
        events { __typename ... on LogsCapturedEvent { fileKey stepKeys } } } } }""", {"runId": run_id})
    keys = [e["fileKey"] for e in events["logsForRun"]["events"]
            if e["__typename"] == "LogsCapturedEvent" and step in (e["stepKeys"] or [])]
    assert keys, f"no captured logs of {step} in run {run_id}"
    logs = graphql(webserver, """query ($runId: ID!, $fileKey: String!) { runOrError(runId: $runId) {
        ... on Run { capturedLogs(fileKey: $fileKey) { stdout stderr } } } }""",
                   {"runId": run_id, "fileKey": keys[-1]})["runOrError"]["capturedLogs"]
    return (logs["stdout"] or "") + (logs["stderr"] or "")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="a network namespace needs root and iproute2")
def test_a_worker_on_a_second_host_takes_gpu_steps_and_its_logs_show_from_the_first(chain: Stack, tmp_path: Path):
    tracking_port = int(chain.tracking.rsplit(":", 1)[1])
    with _second_host([5432, 5672, 6379, tracking_port]) as (namespace, services):
        broker = tmp_path / "broker"  # the dedicated user's password, in a file only its owner reads
        broker.write_text(f"amqp://{chain.name}:{chain.broker_password}@{services}:5672/{chain.name}")
        broker.chmod(0o600)
        bare = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_PIPELINE_", "DAGSTER_", "MLFLOW_"))}
        env = {**bare,  # docs/operations.md's second-host recipe, and nothing of this host's settings
               "FLOWER_PIPELINE_CELERY_BROKER_FILE": str(broker),
               "DAGSTER_POSTGRES_URL": chain.env["DAGSTER_POSTGRES_URL"].replace("127.0.0.1", services),
               "MLFLOW_TRACKING_URI": f"http://{services}:{tracking_port}",
               "FLOWER_PIPELINE_CELERY_BACKEND": f"redis://{services}:6379/{chain.redis_db}",
               "DAGSTER_HOME": chain.env["DAGSTER_HOME"], "FLOWER_PIPELINE_DATA_DIR": str(chain.data),
               "FLOWER_PIPELINE_COMPUTE_LOGS": str(chain.data / "compute_logs"), "CUDA_VISIBLE_DEVICES": "0"}
        for worker in ("gpu0", "gpu1"):  # the second host's worker is the only one on the gpu queue
            os.kill(chain.record(worker)["pid"], signal.SIGTERM)
        for worker in ("gpu0", "gpu1"):
            while (chain.home / "stack" / f"{worker}.child").exists():
                time.sleep(0.2)
        log = tmp_path / "hostb.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(["ip", "netns", "exec", namespace, str(Path(sys.executable).parent / "celery"),
                                       "-A", "flower_pipeline.scaleout.worker", "worker", "-Q", "gpu", "-c", "1", "-n",
                                       "hostb@%h"], cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "hostb" not in _answering(chain):
                assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
            chain.cli("train", "--variant", "synthetic-color-32", "--arch", "arch1", *train_flags(40))
            instance = chain.instance
            run = instance.get_runs(limit=1)[0]
            assert {w for w, step in _started_steps(instance, run.run_id)
                    if step in ("trained_generator", "generator_evaluation")} == {"hostb"}
            step_logs = _graphql_step_logs(chain.webserver, run.run_id, "trained_generator")
            assert "iter 40/40" in step_logs  # written on the second host, read through this host's UI
            assert chain.broker_password not in Path(f"/proc/{worker.pid}/cmdline").read_text()
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            chain.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver", chain.webserver)


def _progress(instance, run_id: str) -> list[tuple[float, int]]:
    """(time, iteration) of each progress line of a run's training step."""
    import re

    found = []
    for entry in instance.all_logs(run_id):
        match = re.search(r"iter (\d+)/\d+ ", entry.message or "") if entry.step_key == "trained_generator" else None
        if match:
            found.append((entry.timestamp, int(match.group(1))))
    return found


def _rate(progress: list[tuple[float, int]], start: float, end: float) -> float:
    inside = [(t, it) for t, it in progress if start <= t <= end]
    assert len(inside) >= 2, f"too few progress lines between {start} and {end}: {progress}"
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def test_training_goes_on_at_speed_while_mlflow_is_down_for_half_a_minute(chain: Stack):
    """Metrics and sample grids wait in a queue while the server is down; the step registers with every metric
    once it is back (within FLOWER_PIPELINE_MLFLOW_OUTAGE_SECONDS)."""
    import dagster as dg

    instance = chain.instance
    earlier = next(r for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
                   if _progress(instance, r.run_id))
    speed = _rate(_progress(instance, earlier.run_id), 0, time.time())
    iterations = max(200, int(speed * 55) // 20 * 20)  # about 55 s: 15 before, 30 without MLflow, 10 after
    training = chain.start("train", "--variant", "synthetic-gray-32", "--arch", "arch2",
                           *train_flags(iterations, "--checkpoint-seconds", "0", "--seed", "5"))
    deadline = time.monotonic() + 120
    while not (run := instance.get_runs(limit=1)[0]) or len(_progress(instance, run.run_id)) < 4:
        assert time.monotonic() < deadline and training.poll() is None, "training did not start"
        time.sleep(1)
    time.sleep(10)
    stopped = time.time()
    os.kill(chain.record("mlflow")["pid"], signal.SIGTERM)
    time.sleep(30)  # long enough for hundreds of iterations' metrics and grids to wait in the queue
    back = time.time()
    chain.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver", chain.webserver)
    _, err = training.communicate(timeout=600)
    assert training.returncode == 0, err[-3000:]
    progress = _progress(instance, run.run_id)
    before, during = _rate(progress, 0, stopped), _rate(progress, stopped, back)
    assert during >= 0.5 * before, (before, during)
    client = chain.mlflow()
    (trained,) = [r for r in client.search_runs([client.get_experiment_by_name("flower-pipeline").experiment_id],
                                                f"tags.dagster_run_id = '{run.run_id}'") if "loss_d" in r.data.metrics]
    steps = {m.step for m in client.get_metric_history(trained.info.run_id, "loss_d")}
    assert steps >= set(range(20, iterations + 1, 20))  # every logged iteration, the outage's included
