"""The Dagster UI as the README starts it (`dg dev`): it serves every asset under one code location name, logs
no warning about that name, and re-executes a run the command line started, as it would one of its own."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import graphql, reexecute, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
QUERY = ("{ assetNodes { assetKey { path } } workspaceOrError { ... on Workspace { locationEntries { name } } } }")


@pytest.mark.slow
def test_dg_dev_serves_the_assets_under_one_code_location_name_and_reexecutes_a_cli_run(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLOWER_PIPELINE_DATA_DIR": str(tmp_path / "data")}
    subprocess.run([str(Path(sys.executable).with_name("flower-pipeline")), "prepare", "--dataset", "synthetic",
                    "--size", "16"], env=env, check=True, capture_output=True, timeout=600)
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        cli_run = instance.get_runs(limit=1)[0]  # prepare_variant, started by the command line
    assert cli_run.remote_job_origin.location_name == "flower_pipeline"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "dg.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name("dg")), "dev", "-p", str(port)], cwd=ROOT,
                                  env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 300, None  # readiness, generous: a busy machine loads slowly
        while answer is None:
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-2000:]
            try:
                answer = graphql(f"http://127.0.0.1:{port}", QUERY)
                if not answer["assetNodes"]:
                    answer = None  # the code location is still loading
            except OSError:
                time.sleep(1)
        assets = {"/".join(n["assetKey"]["path"]) for n in answer["assetNodes"]}
        assert {"raw_archive", "tensor_cache", "trained_generator", "generator_evaluation", "registered_generator",
                "feature_network", "study_run", "study_report"} <= assets
        assert [e["name"] for e in answer["workspaceOrError"]["locationEntries"]] == ["flower_pipeline"]

        status, run = reexecute(f"http://127.0.0.1:{port}", cli_run.run_id)
        assert status == "SUCCESS"
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["dagster/parent_run_id"] == cli_run.run_id and tags["dagster/partition"] == "synthetic-color-16"
    finally:
        stop_process_group(server)
    assert "does not match" not in log.read_text()
