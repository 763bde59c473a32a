"""The README's serving recipe: `mlflow models serve` on the champion, latent vectors in, images out."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from conftest import prepare, run_job, stop_process_group, tiny_training, wait_until_serving

from flower_pipeline.defs.partitions import training_key

TINY = tiny_training(iterations=4, log_every=2)
LENIENT = {"samples": 32, "inception_weights": "off", "min_colour_coverage": 0.0, "max_near_copy_share": 1.0,
           "min_recall": 0.0}


@pytest.mark.slow
def test_the_champion_serves_images_for_latent_vectors(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with dg.instance_for_test() as instance:
        prepare(instance, data, "synthetic-gray-16")
        assert run_job(instance, "retrain_generators", training_key("synthetic-gray-16", "arch1"), data,
                       {"trained_generator": {"config": TINY}, "generator_evaluation": {"config": LENIENT}}).success
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    venv_bin = str(Path(sys.executable).parent)  # the recipe puts the venv's bin on PATH (uvicorn lives there)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{data / 'mlflow.db'}"}
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", "models:/synthetic-gray-16-arch1@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/ping", server)
        z = np.random.default_rng(0).normal(size=(3, 100)).astype(np.float32)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": z.tolist()})
                                         .encode(), {"Content-Type": "application/json"})
        images = np.array(json.load(urllib.request.urlopen(request, timeout=60))["predictions"])
    finally:
        stop_process_group(server)
    assert images.shape == (3, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
