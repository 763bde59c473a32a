"""Scaling out, what goes wrong: MLflow down for a minute and past the deadline, a step longer than the broker's
consumer timeout, workers killed, restarted and on a second host. A stack of its own (test_scaleout.py's, started
again for this module), so the two halves of the scale-out tests run side by side on two test workers. Every test
that restarts a worker is here: the consumer-timeout test changes RabbitMQ's setting for the channels opened
meanwhile, and the other module's workers never open one.
"""

from __future__ import annotations

import contextlib
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
from conftest import PROJECT
from test_scaleout import (
    LONG_TRAIN,
    Stack,
    _answering,
    _crash_and_wait,
    _program,
    _started_steps,
    _wait_for_checkpoint,
    _worker_running,
    chain_run,
    stack_up,
    train_flags,
)

pytestmark = pytest.mark.slow
REDIS_DB = 7  # the result backend's database: test_scaleout.py's stack uses another
stack = pytest.fixture(scope="module", name="stack")(stack_up)  # this module's own stack and chain
chain = pytest.fixture(scope="module", name="chain")(chain_run)


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
    with _rabbitmq_consumer_timeout(chain, 3000):
        chain.cli("train", "--variant", "synthetic-color-32", "--arch", "arch2",
                  *train_flags(400, "--checkpoint-seconds", "0", "--seed", "11"))
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
    assert training[-1].timestamp - training[0].timestamp > 6  # longer than twice the timeout
    assert record.end_time


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
                                       "-A", "flower_pipeline.worker", "worker", "-Q", "gpu", "-c", "1", "-n",
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


def test_training_goes_on_at_speed_while_mlflow_is_down_for_a_minute(chain: Stack):
    """Metrics and sample grids wait in a queue while the server is down; the step registers with every metric
    once it is back (within FLOWER_PIPELINE_MLFLOW_OUTAGE_SECONDS)."""
    import dagster as dg

    instance = chain.instance
    earlier = next(r for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
                   if _progress(instance, r.run_id))
    speed = _rate(_progress(instance, earlier.run_id), 0, time.time())
    iterations = max(200, int(speed * 85) // 20 * 20)  # about 85 s: 15 before, 60 without MLflow, 10 after
    training = chain.start("train", "--variant", "synthetic-gray-32", "--arch", "arch2",
                           *train_flags(iterations, "--checkpoint-seconds", "0", "--seed", "5"))
    deadline = time.monotonic() + 120
    while not (run := instance.get_runs(limit=1)[0]) or len(_progress(instance, run.run_id)) < 4:
        assert time.monotonic() < deadline and training.poll() is None, "training did not start"
        time.sleep(1)
    time.sleep(10)
    stopped = time.time()
    os.kill(chain.record("mlflow")["pid"], signal.SIGTERM)
    time.sleep(60)
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


def test_a_sigkilled_worker_is_started_again_within_30_seconds(stack: Stack):
    back = _crash_and_wait(stack, "gpu1")
    assert back < 30
    assert "supervise: celery exited with -9" in Path(stack.record("gpu1")["log"]).read_text()


def test_stack_up_restarts_a_worker_whose_code_changed(stack: Stack):
    record_file = stack.home / "stack" / "gpu1.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "code_version": "0123456789ab"}))  # started before a pull
    said = stack.cli("stack", "up", "--workers", "2", "--ingest-concurrency", "1", "--webserver",
                     stack.webserver)[1]
    assert "restarting gpu1: it runs code version 0123456789ab, this checkout has " in said
    assert stack.record("gpu1")["pid"] != record["pid"] and "gpu1" in _answering(stack)
    assert "restarting gpu0" not in said
