"""Shared fixtures: a real HTTP server on 127.0.0.1, archive and image builders, the tiny training.

The suite is three tiers by folder: unit/ (no Dagster run, no subprocess, no server, no real data: the edit
loop), integration/ (Dagster in-process, MLflow, the CLI) and system/ (`dg dev`, the scale-out stack and its
services, real Flowers-17). `pytest` runs them all side by side (pytest-xdist, `-n 3` in pyproject.toml), each
module on one worker (module fixtures start a service once), the system tier's modules first.
"""

from __future__ import annotations

import os

# One thread per test worker, set before numpy, OpenCV or torch load: workers side by side on two cores run
# three times slower with torch's default of a thread per core (README, "A shared CPU").
os.environ.setdefault("OMP_NUM_THREADS", "1")

import io
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]
PROJECT_INSTANCE_CONFIG = PROJECT / "dagster_home" / "dagster.yaml"  # telemetry off, a gpu pool of 1
SHARED_DATASETS = PROJECT.parent / "shared" / "datasets"
FLOWERS17_TGZ = SHARED_DATASETS / "17flowers.tgz"
FLOWERS17_SHA256 = "161093dfbd5fd2d5ff4e3f8728bd96b028cc0dfa6bc7338d88ec6cd7ce31dbe6"


@dataclass
class FileServer:
    """Serves `files` with HTTP Range support; faults can be injected per path."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before one drop
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            server.requests.append((path, self.headers.get("Range")))
            data = server.files.get(path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if (rng := self.headers.get("Range")) and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = server.drop_after.pop(path, None)
            if cut is not None:  # send part of the body, then drop the connection
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


def real_flowers17(data_dir: Path, size: int):
    """The real Flowers-17 photos from ../shared as a colour tensor cache of the given side (core ingest only)."""
    from flower_pipeline.catalog import Variant
    from flower_pipeline.download import Checksum
    from flower_pipeline.ingest import prepare_variant
    from flower_pipeline.tensor_cache import TensorCache

    ref = prepare_variant(data_dir, Variant("flowers17", "color", size), source=str(FLOWERS17_TGZ),
                          checksum=Checksum("sha256", FLOWERS17_SHA256))
    return TensorCache.load(ref.path)


REEXECUTE = ("mutation($parent: String!) { launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: "
             "ALL_STEPS}) { __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }")
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }"


def graphql(webserver: str, query: str, variables: dict | None = None) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(f"{webserver}/graphql", json.dumps(
        {"query": query, "variables": variables or {}}).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request, timeout=60))["data"]


def reexecute(webserver: str, parent_run_id: str, seconds: float = 300) -> tuple[str, dict]:
    """Re-execute a run as the UI's "Re-execute all" does (GraphQL launchRunReexecution); wait until it ends:
    its status and the run as GraphQL reads it."""
    import time

    launched = graphql(webserver, REEXECUTE, {"parent": parent_run_id})["launchRunReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    deadline, status, run = time.monotonic() + seconds, None, {}
    while status not in ("SUCCESS", "FAILURE", "CANCELED"):  # queued, then run by the daemon's launcher
        assert time.monotonic() < deadline, status
        time.sleep(2)
        run = graphql(webserver, RUN_STATUS, {"id": launched["run"]["runId"]})["runOrError"]
        status = run["status"]
    return status, run


LAUNCH_RUN = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }"""


def launch_retraining(webserver: str, partition: str, data_dir: Path, training: dict, evaluation: dict) -> str:
    """A retraining run launched as the UI's launchpad does: a GraphQL mutation to the webserver (the daemon
    dequeues it and launches its run worker). Returns its run id."""
    arch, variant = partition.split("|")
    tags = {"dagster/partition": partition, "dagster/partition/arch": arch, "dagster/partition/variant": variant}
    config = {"ops": {"trained_generator": {"config": training}, "generator_evaluation": {"config": evaluation}},
              "resources": {"storage": {"config": {"data_dir": str(data_dir)}}}}
    params = {"selector": {"repositoryLocationName": "flower_pipeline", "repositoryName": "__repository__",
                           "jobName": "retrain_generators"},
              "runConfigData": config, "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}
    launched = graphql(webserver, LAUNCH_RUN, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def stop_process_group(process, grace: float = 20) -> None:
    """Stop what a test started, even when it failed: SIGTERM to the whole process group (`dg dev` has a code
    server, a webserver and a daemon), then SIGKILL to what is left after `grace` seconds."""
    import os
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            os.killpg(process.pid, 0)  # the leader exited; are others of its group still alive?
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass


def wait_until_serving(url: str, process, seconds: float = 120) -> None:
    """Poll `url` until it answers; fail with the reason if the server died or never answered."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer (server exit code {process.poll()})")
            time.sleep(0.5)


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """No test leaves a trace in os.environ (a Celery broker left there sends every later in-process run to
    Celery), nor in MLflow's global tracking URI (mlflow.set_tracking_uri)."""
    import os

    from mlflow.tracking._tracking_service import utils

    saved, saved_env = utils._tracking_uri, dict(os.environ)
    yield
    utils._tracking_uri = saved
    if dict(os.environ) != saved_env:
        os.environ.clear()
        os.environ.update(saved_env)


def webhook_receiver() -> tuple[ThreadingHTTPServer, list[dict]]:
    """A failure webhook on 127.0.0.1 that keeps each alert it is sent: (server, alerts). Shut it down after."""
    import json

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """40 random 32 px colour images in 4 classes: a tensor cache that trains in a second."""
    from flower_pipeline.tensor_cache import TensorCache, write_cache

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    path, *_ = write_cache(tmp_path_factory.mktemp("cache"), images, np.arange(40) % 4, [f"{i}.jpg" for i in range(40)],
                           class_names=["a", "b", "c", "d"],
                           params={"dataset": "synthetic", "size": 32, "variant": "synthetic-color-32"})
    return TensorCache.load(path)


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def jpeg(width: int = 96, height: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (9, 9), 0)
    return cv2.imencode(".jpg", image)[1].tobytes()


def make_tgz(members: dict[str, bytes], *, mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def flowers_like(count: int, digits: int = 4) -> dict[str, bytes]:
    """An archive's members in the Oxford layout: jpg/image_0001.jpg …"""
    return {f"jpg/image_{i:0{digits}d}.jpg": jpeg(seed=i) for i in range(1, count + 1)}


def run_job(instance, name: str, partition, data_dir: Path, ops: dict | None = None, assets: list[str] | None = None,
            raise_on_error: bool = False):
    """Run one of the project's jobs (or some of its assets) for one partition, as the CLI and the UI do."""
    import dagster as dg

    from flower_pipeline.definitions import defs

    return defs().resolve_job_def(name).execute_in_process(
        partition_key=partition, instance=instance, raise_on_error=raise_on_error,
        asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
        run_config={"ops": ops or {}, "resources": {"storage": {"config": {"data_dir": str(data_dir)}}}})


QUICK_FEATURES = {"feature_network": {"config": {"epochs": 1, "width": 4, "dim": 8}}}  # tests of other things


def prepare(instance, data_dir: Path, variant: str, raw_config: dict | None = None, ops: dict | None = None):
    """Both prepare jobs for a variant (dataset, then variant); returns the variant job's result.

    The feature network is a token one unless `ops` configures it."""
    from flower_pipeline.catalog import Variant
    from flower_pipeline.defs.partitions import add_variant

    parsed = Variant.parse(variant)
    add_variant(instance, parsed)
    dataset = run_job(instance, "prepare_dataset", parsed.dataset, data_dir,
                      {"raw_archive": {"config": raw_config or {}}})
    if not dataset.success:
        return dataset
    return run_job(instance, "prepare_variant", variant, data_dir, {**QUICK_FEATURES, **(ops or {})})


def measure_known_answers(cache, settings, out: Path) -> tuple[dict, float]:
    """The feature network trained on `cache`, then fd_flowers, precision and recall of each known-answer set."""
    from flower_pipeline.feature_network import (
        flower_features,
        flowers_measures,
        known_answer_sets,
        load_feature_network,
        train_feature_network,
    )

    result = train_feature_network(cache, settings, out)
    network = load_feature_network(result.path)
    train = flower_features(network, cache.train_images())
    table = {name: flowers_measures(train, flower_features(network, images))
             for name, images in known_answer_sets(cache.train_images(), cache.holdout_images()).items()}
    return table, result.accuracy


def assert_known_answers(table: dict) -> None:
    # Bounds that hold for every network seed measured (benchmarks/known_answers.py: seeds 0-2 at 1 and 2
    # threads on real Flowers-17), not for one run: noise's precision, for one, ranges 0.01-0.37 over seeds.
    fd = {name: row["fd_flowers"] for name, row in table.items()}
    assert min(fd, key=fd.get) in ("held-out photos", "checkerboard"), fd  # blind to a ±12 checkerboard: see
    assert fd["checkerboard"] < fd["blur σ=1"], fd  # checkerboard_ratio, which is not (test_evaluation.py)
    assert fd["held-out photos"] < fd["blur σ=1"] < fd["blur σ=2"] < fd["blur σ=3"] < fd["noise"] / 2, fd
    collapsed, varied = table["two colours only"], table["held-out photos"]
    assert collapsed["precision"] > 0.8 and collapsed["recall"] < varied["recall"] / 2, (collapsed, varied)
    assert table["noise"]["precision"] < 0.45 and table["noise"]["recall"] < 0.05, table["noise"]


# One tiny training for every test that needs a trained generator but not a good one: seconds on a CPU.
TINY_TRAINING = {"iterations": 6, "batch_size": 8, "features": 8, "log_every": 3, "sample_every": 3,
                 "checkpoint_seconds": 0}


def tiny_training(**changes) -> dict:
    """The tiny training as a run's config (trained_generator's, or the CLI's flags), on the CPU."""
    return {**TINY_TRAINING, "device": "cpu", **changes}


def tiny_config(**changes):
    """The tiny training as the core's TrainConfig."""
    from flower_pipeline.training import TrainConfig

    return TrainConfig(**{**TINY_TRAINING, **changes})




class Payload:
    """What an attacker who can write to the data folder or the artifact store would leave: a pickle that runs
    code (here: writes a marker file) when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.write_text, (self.marker, "ran")


def plant(path: Path, marker: Path) -> None:
    """A torch file at `path` whose loading, were it unpickled, would write `marker`."""
    import torch

    torch.save({"state_dict": Payload(marker)}, path)


@pytest.fixture
def trained(small_cache, tmp_path) -> Path:
    """A finished tiny training's folder."""
    from flower_pipeline.training import train

    config = tiny_config(iterations=8, batch_size=4, minibatch_kernels=8, log_every=4, sample_every=8)
    return train(config, small_cache, tmp_path / "run", device="cpu").out_dir


TIER_ORDER = ("system", "integration", "unit")  # the longest first, so no worker is left with a long test at the end


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The system tier first: its modules are the longest, and each runs on one worker."""
    def tier(item: pytest.Item) -> int:
        folder = Path(item.path).parent.name
        return TIER_ORDER.index(folder) if folder in TIER_ORDER else len(TIER_ORDER)

    items.sort(key=tier)


# The command line as a user runs it: in a second interpreter (cli_run) or through its entry point (cli_main).


def instance_home(tmp_path: Path) -> Path:
    """A Dagster home configured like the project's (telemetry off, gpu pool of 1)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT_INSTANCE_CONFIG, home)
    return home


def cli_run(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(instance_home(tmp_path))}
    return subprocess.run([sys.executable, "-m", "flower_pipeline.cli", *args, "--data-dir", str(tmp_path / "data")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def files_outside(tmp_path: Path, *allowed: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*")
            if p.is_file() and not any(a == p or a in p.parents for a in allowed)]


def cli_main(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
          *args: str) -> tuple[int, str, str]:
    """The CLI's own entry point in this process: what a user sees, without a second interpreter's start-up."""
    from flower_pipeline.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(instance_home(tmp_path)))
    capsys.readouterr()
    code = main([*args, "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    return code, out, err
