"""Every file the pipeline loads is untrusted: each torch file on a load path, replaced by a pickle whose loading
would write a marker file, is refused in one line, and the marker never appears."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from flower_pipeline.errors import PipelineError
from flower_pipeline.training import TrainConfig, load_trained, train

TINY = TrainConfig(iterations=8, batch_size=4, features=8, minibatch_kernels=8, log_every=4, sample_every=8,
                   checkpoint_seconds=0)


class Payload:
    """What an attacker who can write to the data folder or the artifact store would leave: a pickle that runs
    code (here: writes a marker file) when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.write_text, (self.marker, "ran")


def plant(path: Path, marker: Path) -> None:
    torch.save({"state_dict": Payload(marker)}, path)


@pytest.fixture
def trained(small_cache, tmp_path) -> Path:
    return train(TINY, small_cache, tmp_path / "run", device="cpu").out_dir


def test_a_planted_checkpoint_generator_or_discriminator_file_is_refused_unrun(small_cache, trained, tmp_path):
    marker = tmp_path / "marker"
    for name in ("generator.pt", "final_state.pt"):
        saved = (trained / name).read_bytes()
        plant(trained / name, marker)
        with pytest.raises(PipelineError, match=f"{re.escape(name)} is not a tensors-only file") as refused:
            load_trained(trained)
        assert "\n" not in str(refused.value)
        (trained / name).write_bytes(saved)
    assert load_trained(trained).generator.generate(2).shape == (2, 3, 32, 32)  # the real files still load

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(TINY, small_cache, killed, device="cpu", on_log=lambda r: (_ for _ in ()).throw(KeyboardInterrupt))
    plant(killed / "checkpoint.pt", marker)  # a retry resumes from the checkpoint
    with pytest.raises(PipelineError, match=r"checkpoint\.pt is not a tensors-only file"):
        train(TINY, small_cache, killed, device="cpu")
    assert not marker.exists()


def test_a_planted_feature_network_is_refused_unrun(tmp_path):
    from flower_pipeline.feature_network import load_feature_network

    marker = tmp_path / "marker"
    plant(tmp_path / "model.pt", marker)
    with pytest.raises(PipelineError, match=r"model\.pt is not a tensors-only file"):
        load_feature_network(tmp_path / "model.pt")
    assert not marker.exists()


def test_planted_inception_weights_are_refused_by_checksum_and_read_tensors_only(tmp_path):
    from flower_pipeline.evaluation import inception_features, resolve_inception_weights

    marker, weights = tmp_path / "marker", tmp_path / "weights.pth"
    plant(weights, marker)
    found, why = resolve_inception_weights(str(weights), tmp_path)  # the setting, a study or the profile
    assert found is None and "its sha256 does not start with 6726825d" in why
    with pytest.raises(PipelineError, match="is not a usable Inception weights file"):
        inception_features(weights)  # even past the checksum: torch-fidelity's own load reads tensors only
    assert not marker.exists()


def test_a_registered_model_loads_without_unpickling_and_a_planted_or_pickled_one_is_refused(trained, tmp_path,
                                                                                              monkeypatch):
    import mlflow
    import mlflow.pytorch

    from flower_pipeline.layout import DataLayout
    from flower_pipeline.tracking import MlflowTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store, marker = MlflowTracker(DataLayout.at(tmp_path / "data")), tmp_path / "marker"
    name = "synthetic-color-32-arch1"
    run_id = store.start_run("run", {})
    store.register(name, run_id, store.log_generator(run_id, name, trained / "generator.pt"), {}, "")
    loaded = store.load_generator(name, version=1)
    np.testing.assert_array_equal(loaded.generate(3, seed=1), load_trained(trained).generator.generate(3, seed=1))

    # The weights file in the artifact store replaced by a payload.
    stored = next(Path(store.client().get_model_version_download_uri(name, "1").removeprefix("file://"))
                  .rglob("generator.pt"))
    plant(stored, marker)
    with pytest.raises(PipelineError, match=r"generator\.pt is not a tensors-only file"):
        store.load_generator(name, version=1)

    # A version registered by earlier code: a pickled PyTorch model. Refused, with how to register it again.
    mlflow.set_tracking_uri(store.uri)  # restored after the test (conftest)
    with mlflow.start_run(run_id=run_id):
        old = mlflow.pytorch.log_model(load_trained(trained).generator, name="old", serialization_format="pickle")
    store.register(name, run_id, old, {}, "")
    with pytest.raises(PipelineError, match=r"v2\) was registered by an earlier flower-pipeline as a pickled "
                                            r"PyTorch model.*flower-pipeline train --variant synthetic-color-32 "
                                            r"--arch arch1"):
        store.load_generator(name, version=2)
    assert not marker.exists()


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20))


def test_settings_files_are_bounded_regular_files_without_alias_bombs(tmp_path, monkeypatch):
    import os
    import time

    from flower_pipeline.defs.automation import retraining_run_config
    from flower_pipeline.study import load_study

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(PipelineError, match="uses more than 100 YAML aliases; refused"):
        load_study(str(bomb))
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PipelineError, match=r"fifo\.yaml is not a regular file"):
        load_study(str(fifo))  # would block forever waiting for a writer
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)
    with pytest.raises(PipelineError, match="is larger than 1 MiB"):
        load_study(str(huge))
    for profile in (bomb, fifo, Path("/dev/zero")):
        monkeypatch.setenv("FLOWER_PIPELINE_RETRAINING", str(profile))
        with pytest.raises(PipelineError, match="retraining profile"):
            retraining_run_config()
    assert time.monotonic() - started < 10


def test_unknown_keys_and_out_of_range_values_are_named_at_every_level(tmp_path, monkeypatch):
    from flower_pipeline.defs.automation import retraining_run_config
    from flower_pipeline.study import load_study

    source = (Path(__file__).resolve().parents[1] / "flower_pipeline" / "studies" / "source.yaml").read_text()
    for old, new, message in (
            ("\nprofiles:", "\nprofile_typo: 1\nprofiles:", "unknown key 'profile_typo'"),
            ("    size: 32", "    size: 32\n    sizes: 64", "profile quick: unknown key 'sizes'"),
            ("  - id: ", "  - idd: x\n    id: ", "unknown key 'idd'"),
            ("{label: f17-color-arch2,", "{labl: x, label: f17-color-arch2,", "unknown key 'labl'"),
            ("    iterations: 400", "    iterations: 1000000000000", "iterations must be a number from 1 to")):
        assert old in source, old
        study = tmp_path / "study.yaml"
        study.write_text(source.replace(old, new, 1))
        with pytest.raises(PipelineError, match=message):
            load_study(str(study))
    profile = tmp_path / "retraining.yaml"
    monkeypatch.setenv("FLOWER_PIPELINE_RETRAINING", str(profile))
    for text, message in (("trainig: {iterations: 5}\n", "unknown section 'trainig'"),
                          ("training: {batch_size: 100000000}\n", "batch_size must be a number from 2 to 4096"),
                          ("evaluation: {samples: -5}\n", "samples must be a number from 2 to 100000, got -5"),
                          ("evaluation: {inception_weights: /etc/passwd}\n", "its sha256 does not start with")):
        profile.write_text(text)
        with pytest.raises(PipelineError, match=message):
            retraining_run_config()


def test_the_failure_webhook_has_a_total_deadline_speaks_http_only_and_never_raises():
    import http.server
    import socket
    import threading
    import time

    from flower_pipeline.defs.automation import post_alert

    class Server(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/trickle":  # its answer, one byte a second: each read is quick, the whole is not
                for byte in b"HTTP/1.1 204 No Content\r\n\r\n":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1)
                return
            self.send_response({"/error": 500, "/moved": 307}.get(self.path, 204))
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    try:
        assert post_alert(f"{base}/ok", {"run_id": "r"}) is None
        started = time.monotonic()
        assert post_alert(f"{base}/trickle", {}, deadline=3) == "no complete answer within 3 s"
        assert time.monotonic() - started < 5
        assert post_alert(f"{base}/error", {}) == "HTTP 500 Internal Server Error"
        assert post_alert(f"{base}/moved", {}) == "HTTP 307 Temporary Redirect"  # not followed
        assert post_alert(refused, {}).startswith("URLError: [Errno 111] Connection refused")
        assert post_alert("file:///tmp/alert", {}) == "only http:// and https:// webhooks are supported, not file:"
    finally:
        server.shutdown()
        server.server_close()


def test_passwords_never_reach_an_error_line(tmp_path, monkeypatch):
    from flower_pipeline.errors import redact
    from flower_pipeline.layout import DataLayout
    from flower_pipeline.tracking import MlflowTracker, mlflow_errors

    assert redact("postgresql://user:s3cret@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setattr("mlflow.store.db.utils.MAX_RETRY_COUNT", 1)  # MLflow's own ten tries take 100 s
    store = MlflowTracker(DataLayout.at(tmp_path), "postgresql://user:s3cret@nohost.invalid/x")
    with pytest.raises(PipelineError) as failed, mlflow_errors(store):
        store.experiment_id()
    assert "s3cret" not in str(failed.value) and "://***@nohost.invalid" in str(failed.value)
    assert "\n" not in str(failed.value)
