"""The Dagster UI as the README starts it (`dg dev`): it serves every asset under one code location name and
logs no warning about that name."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUERY = ("{ assetNodes { assetKey { path } } workspaceOrError { ... on Workspace { locationEntries { name } } } }")


@pytest.mark.slow
def test_dg_dev_serves_the_assets_under_one_code_location_name(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "dg.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name("dg")), "dev", "-p", str(port)], cwd=ROOT,
                                  env={**os.environ, "DAGSTER_HOME": str(home)}, stdout=out, stderr=out,
                                  start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 120, None
        while answer is None:
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-2000:]
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", json.dumps({"query": QUERY})
                                                 .encode(), {"Content-Type": "application/json"})
                answer = json.load(urllib.request.urlopen(request, timeout=5))["data"]
                if not answer["assetNodes"]:
                    answer = None  # the code location is still loading
            except OSError:
                time.sleep(1)
        assets = {"/".join(n["assetKey"]["path"]) for n in answer["assetNodes"]}
        assert {"raw_archive", "tensor_cache", "trained_generator", "generator_evaluation", "registered_generator",
                "feature_network", "study_run", "study_report"} <= assets
        assert [e["name"] for e in answer["workspaceOrError"]["locationEntries"]] == ["flower_pipeline"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert "does not match" not in log.read_text()
