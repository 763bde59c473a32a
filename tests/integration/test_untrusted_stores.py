"""Untrusted stores: a registered model is read as tensors only, a webhook cannot hang or raise, and no
password reaches an error line."""

from pathlib import Path

import numpy as np
import pytest
from conftest import plant, tiny_config

from flower_pipeline.errors import PipelineError
from flower_pipeline.training import load_trained


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


def test_a_registered_generator_must_be_what_its_name_says_and_live_where_its_store_keeps_files(trained, tmp_path,
                                                                                                monkeypatch):
    """A grey arch2 generator put in a colour arch1 version, a version whose stored location points outside
    the data folder, and an MLmodel whose weights path climbs out are each refused in one line naming why."""
    import shutil
    import sqlite3

    import yaml

    from flower_pipeline.layout import DataLayout
    from flower_pipeline.tensor_cache import TensorCache, write_cache
    from flower_pipeline.tracking import MlflowTracker
    from flower_pipeline.training import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store, name = MlflowTracker(DataLayout.at(tmp_path / "data")), "synthetic-color-32-arch1"
    run_id = store.start_run("run", {})
    store.register(name, run_id, store.log_generator(run_id, name, trained / "generator.pt"),
                   {"variant": "synthetic-color-32", "arch": "arch1"}, "")
    folder = Path(store.client().get_model_version_download_uri(name, "1").removeprefix("file://"))
    stored, genuine = next(folder.rglob("generator.pt")), next(folder.rglob("generator.pt")).read_bytes()

    grey = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 1), dtype=np.uint8)
    path, *_ = write_cache(tmp_path / "grey", grey, np.arange(40) % 4, [f"{i}.jpg" for i in range(40)],
                           class_names=list("abcd"), params={"dataset": "synthetic", "variant": "synthetic-gray-32"})
    swapped = train(tiny_config(arch="arch2", batch_size=4), TensorCache.load(path), tmp_path / "g", device="cpu")
    shutil.copy(swapped.out_dir / "generator.pt", stored)
    with pytest.raises(PipelineError, match=r"holds the weights of synthetic-gray-32 × arch2, not of "
                                            r"synthetic-color-32 × arch1; it is refused"):
        store.load_generator(name, version=1)
    stored.write_bytes(genuine)
    assert store.load_generator(name, version=1).channels == 3

    outside = tmp_path / "elsewhere"
    shutil.copytree(folder, outside)
    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(model_versions)")}
        for column in {"source", "storage_location"} & columns:
            db.execute(f"UPDATE model_versions SET {column} = ?", (f"file://{outside}",))
    with pytest.raises(PipelineError, match=r"v1\) is stored at .*elsewhere, outside the data folder"):
        store.load_generator(name, version=1)
    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as db:
        for column in {"source", "storage_location"} & columns:
            db.execute(f"UPDATE model_versions SET {column} = ?", (f"file://{folder}",))

    model = yaml.safe_load((folder / "MLmodel").read_text())
    model["flavors"]["python_function"]["artifacts"]["generator"]["path"] = "artifacts/../../../outside.pt"
    (folder / "MLmodel").write_text(yaml.safe_dump(model))
    with pytest.raises(PipelineError, match=r"its MLmodel points the weights outside the model's folder"):
        store.load_generator(name, version=1)
