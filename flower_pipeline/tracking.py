"""MLflow in one place: `MlflowTracker`, the one class through which the pipeline reaches MLflow.

`Tracker` is the interface the run path (`flower_pipeline.runs`) needs from an
experiment tracker; `MlflowTracker` implements it on an MLflow tracking store
and model registry. It never changes MLflow's global tracking URI: the fluent
calls that model logging and loading need run inside a scope that restores it.
The Dagster layer wraps it as a resource (`defs/resources.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import tempfile
import threading
import time
import urllib.parse
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.store.db.utils
import numpy as np
import requests
import sqlalchemy.exc
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

import flower_pipeline
from flower_pipeline.environment import TRACKING_ENV, mlflow_ui
from flower_pipeline.environment import outage_seconds as environment_outage_seconds
from flower_pipeline.errors import PipelineError, redact
from flower_pipeline.layout import DataLayout
from flower_pipeline.models import FlowerGenerator, sample_latent
from flower_pipeline.settings import read_settings_file
from flower_pipeline.training import load_generator_file

EXPERIMENT = "flower-pipeline"
CHAMPION = "champion"  # the alias of the best version that passed the quality gate
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the registered versions made from it
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # what MLflow's pyfunc loader runs: imports only
GENERATOR_ARTIFACT = "generator"  # the logged model's weights file, read as tensors only
# What MLflow's client raises when its store fails: its own errors, HTTP, and a database store's (SQLAlchemy).
MLFLOW_FAILURES = (MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError)
UNREACHABLE = ("Connection refused", "Max retries exceeded", "timed out", "Connection aborted")
# How long a training's tracker calls may keep failing (the MLflow server down) before the step fails; until
# then the calls wait in a bounded queue and training goes on.
# MLflow retries a database it cannot reach ten times, 102 s in all; six tries (6 s) tell a blip from an
# unreachable store, and a command says so in seconds (a server's outage is ridden out by InBackground below).
mlflow.store.db.utils.MAX_RETRY_COUNT = 6


class Tracker(ABC):
    """What a training, its evaluation and its registration record: runs with params, metrics, tags and
    files, and registered model versions with aliases."""

    @abstractmethod
    def start_run(self, name: str, tags: dict[str, str]) -> str: ...

    @abstractmethod
    def log_params(self, run_id: str, params: dict[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None: ...

    @abstractmethod
    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None: ...

    @abstractmethod
    def log_image(self, run_id: str, png: Path, key: str, step: int) -> None: ...

    @abstractmethod
    def log_dataset(self, run_id: str, name: str, digest: str, source: str) -> None: ...

    @abstractmethod
    def log_snapshot(self, run_id: str, iteration: int, generator_file: Path, metrics: dict[str, float]) -> str:
        """A scored snapshot of the run's generator: its id."""

    @abstractmethod
    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...

    @abstractmethod
    def link(self, run_id: str | None = None, model: str | None = None, version: int | None = None,
             logged_model: str | None = None) -> str: ...


_DATASET_ROWS = threading.Lock()


class MlflowTracker(Tracker):
    """Tracking and registry in one MLflow store. Default store: SQLite under the data folder (MLflow 3
    rejects plain files)."""

    def __init__(self, layout: DataLayout, tracking_uri: str | None = None, experiment: str = EXPERIMENT):
        self.layout, self.tracking_uri, self.experiment = layout, tracking_uri, experiment

    @property
    def uri(self) -> str:
        """The store: the one given, else $MLFLOW_TRACKING_URI, else sqlite:///<data folder>/mlflow.db."""
        uri = self.tracking_uri or os.environ.get(TRACKING_ENV)
        if uri:
            return uri
        try:
            self.layout.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PipelineError(f"cannot create the data folder {self.layout.root}: {err.strerror}") from None
        return f"sqlite:///{self.layout.mlflow_db}"

    def client(self) -> MlflowClient:
        uri = self.uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)  # the registry lives in the same store

    @contextlib.contextmanager
    def _fluent(self) -> Iterator[None]:
        """MLflow's fluent API pointed at this store for the block only; the global URI and
        $MLFLOW_TRACKING_URI (which `mlflow.set_tracking_uri` also rewrites) are restored after it."""
        uri, saved, saved_env = self.uri, tracking_utils._tracking_uri, os.environ.get(TRACKING_ENV)
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved)
            if saved_env is not None:
                os.environ[TRACKING_ENV] = saved_env

    def experiment_id(self) -> str:
        with self._first_use():
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            location = None
            if self.uri.startswith("sqlite:"):  # a local store keeps its artifacts inside the data folder
                location = self.layout.mlflow_artifacts.as_uri()
            return client.create_experiment(self.experiment, artifact_location=location, tags={
                "mlflow.experimentKind": "custom_model_development"})  # MLflow's UI opens on the runs table

    @contextlib.contextmanager
    def _first_use(self) -> Iterator[None]:
        """A local store is created (tables, then the experiment) by one process at a time: two first commands
        at once would both create its tables and one would fail. A server or a shared database serializes
        that itself."""
        if not self.uri.startswith("sqlite:"):
            yield
            return
        import fcntl

        with open(self.layout.root / ".mlflow.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def link(self, run_id: str | None = None, model: str | None = None, version: int | None = None,
             logged_model: str | None = None) -> str:
        """A run, model version or logged model (a scored snapshot) as a URL into the MLflow UI: the server's, or
        for a database store the local `mlflow ui` over it ($FLOWER_PIPELINE_MLFLOW_UI)."""
        base = self.uri.rstrip("/")
        if not base.startswith(("http://", "https://")):
            base = mlflow_ui()
        if model is not None:
            return f"{base}/#/models/{model}/versions/{version}"
        if logged_model is not None:
            return f"{base}/#/experiments/{self.experiment_id()}/models/{logged_model}"
        return f"{base}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    # --- runs -----------------------------------------------------------------------------------------

    def start_run(self, name: str, tags: dict[str, str]) -> str:
        return self.client().create_run(self.experiment_id(), run_name=name, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client().log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        client = self.client()
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)

    def log_image(self, run_id: str, png: Path, key: str, step: int) -> None:
        """A picture with its step, so MLflow's UI shows a slider over training."""
        import cv2

        image = cv2.imdecode(np.fromfile(png, np.uint8), cv2.IMREAD_UNCHANGED)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        self.client().log_image(run_id, image, key=key, step=step)

    def log_dataset(self, run_id: str, name: str, digest: str, source: str) -> None:
        """The training input as an MLflow dataset: the tensor cache's variant, content hash and folder. MLflow
        gets or creates the dataset row without a lock: runs that start at once (a study's groups in threads,
        trainings in other processes on a local store) take turns here."""
        with _DATASET_ROWS, self._first_use():
            self.client().log_inputs(run_id, [DatasetInput(Dataset(name, digest[:36], "local", source),
                                                           [InputTag("mlflow.data.context", "training")])])

    def log_snapshot(self, run_id: str, iteration: int, generator_file: Path, metrics: dict[str, float]) -> str:
        """A scored snapshot as an MLflow 3 LoggedModel of its run: the weights file (tensors only) as its
        artifact, its metrics (snapshot_<metric>) linked by model_id at its iteration, so the run's Logged models
        list every snapshot and `mlflow.search_logged_models(order_by=…)` sorts them."""
        client, name = self.client(), f"snapshot-{iteration:06d}"
        logged = client.search_logged_models([self.experiment_id()], f"source_run_id = '{run_id}' AND name = '{name}' "
                                             "AND status = 'READY'", max_results=1)
        if logged:  # a retried evaluation: the snapshot is listed once
            return logged[0].model_id
        model = client.create_logged_model(self.experiment_id(), name=name,
                                           source_run_id=run_id, tags={"iteration": str(iteration)},
                                           model_type="generator-snapshot")
        with tempfile.TemporaryDirectory() as folder:  # the one file, under the name it has in the run folder
            shutil.copyfile(generator_file, Path(folder) / generator_file.name)
            client.log_model_artifacts(model.model_id, folder)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"snapshot_{k}", float(v), now, iteration, model_id=model.model_id)
                                          for k, v in metrics.items() if math.isfinite(v)])
        client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client().set_terminated(run_id, status)

    # --- the model registry ---------------------------------------------------------------------------

    def version_of_run(self, name: str, run_id: str) -> ModelVersion | None:
        """The version already registered from this run, so a retried registration makes no second one."""
        if not self._model_exists(name):
            return None
        found = self.client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return found[0] if found else None

    def log_generator(self, run_id: str, name: str, generator_file: Path) -> Any:
        """Log the generator file (weights and plain values) to the run as an MLflow model named after its
        registered model: a pyfunc "from code" (`mlflow_model.py`, which only imports the installed package), so
        nothing in it is a pickle and no copy of the package's code rides in the artifact store."""
        from mlflow.models import infer_signature

        generator, _, _ = load_generator_file(generator_file)
        z = sample_latent(2, generator.latent_dim, generator.latent_noise, "cpu", torch.Generator().manual_seed(0))
        with torch.no_grad():
            signature = infer_signature(z.numpy(), generator(z).numpy())
        with self._fluent(), mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # The signature is given, so no input example is needed to infer it (MLflow asks for one anyway).
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            return mlflow.pyfunc.log_model(
                name=name, python_model=str(MODEL_CODE), artifacts={GENERATOR_ARTIFACT: str(generator_file)},
                signature=signature, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy",
                                                       f"flower-pipeline=={flower_pipeline.__version__}"])

    def register(self, name: str, run_id: str, model: Any, tags: dict[str, str], description: str) -> ModelVersion:
        """A new version of `name` (created if needed) from a model logged by `log_generator`."""
        client = self.client()
        if not self._model_exists(name):
            client.create_registered_model(name, description=f"DCGAN flower generator {name}")
        with self._fluent():  # the registry looks the logged model up through the global tracking URI
            version = client.create_model_version(name, source=model.model_uri, run_id=run_id, tags=tags,
                                                  description=description, model_id=model.model_id)
        # As mlflow.register_model does: the logged model lists its versions ("Registered models" in the UI).
        entry = {"name": name, "version": int(version.version)}
        listed = json.loads(client.get_logged_model(model.model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
        if entry not in listed:
            client.set_logged_model_tags(model.model_id, {MODEL_VERSIONS_TAG: json.dumps([*listed, entry])})
        return version

    def fail_runs_of(self, dagster_run_id: str) -> None:
        """The MLflow runs a failed Dagster run left RUNNING, marked FAILED."""
        client = self.client()
        found = client.search_runs([self.experiment_id()],
                                   f"tags.dagster_run_id = '{dagster_run_id}' and attributes.status = 'RUNNING'")
        for run in found:
            client.set_terminated(run.info.run_id, "FAILED")

    def end_orphaned_runs(self, partition: str, running: Callable[[str], bool]) -> int:
        """MLflow runs of this partition still RUNNING although their Dagster run is not (the process was
        killed, the machine went down), marked KILLED. Returns how many."""
        client = self.client()
        found = client.search_runs([self.experiment_id()],
                                   f"tags.dagster_partition = '{partition}' and attributes.status = 'RUNNING'")
        orphans = [run for run in found if not running(run.data.tags.get("dagster_run_id", ""))]
        for run in orphans:
            client.set_terminated(run.info.run_id, "KILLED")
        return len(orphans)

    def tag_model(self, name: str, key: str, value: str) -> None:
        """A tag on a registered model, if it exists (a first training that failed has none yet)."""
        if self._model_exists(name):
            self.client().set_registered_model_tag(name, key, value)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(name, alias, version)

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        try:
            return self.client().get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def registered_models(self, name: str | None = None) -> list[dict[str, Any]]:
        """The versions of every registered model (or of `name`), newest first, with aliases and tags.

        MLflow reserves the alias `latest` for the newest version (models:/NAME/latest),
        so it always moves by itself; it is listed here with the set aliases.
        """
        client, rows = self.client(), []
        only = f"name='{name}'" if name is not None else None
        for model in client.search_registered_models(filter_string=only, order_by=["name ASC"]):
            versions = client.search_model_versions(f"name='{model.name}'", order_by=["version_number DESC"])
            aliases: dict[str, list[str]] = {str(versions[0].version): ["latest"]} if versions else {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for version in versions:
                rows.append({"name": model.name, "version": str(version.version), "created": version.creation_timestamp,
                             "aliases": sorted(aliases.get(str(version.version), [])), "tags": dict(version.tags)})
        return rows

    def load_generator(self, name: str, *, alias: str | None = None, version: str | int | None = None,
                       device: str = "cpu") -> FlowerGenerator:
        """A registered generator by alias (default champion) or version; a clear error lists what exists."""
        if alias is not None and version is not None:
            raise PipelineError("give an alias or a version, not both")
        rows = self.registered_models(name)
        if not rows:
            names = sorted(m.name for m in self.client().search_registered_models())
            raise PipelineError(f"no registered model {name!r}; registered: {', '.join(names) or 'none'}")
        if version is not None:
            if str(version) not in {r["version"] for r in rows}:
                listed = ", ".join(r["version"] for r in reversed(rows))
                raise PipelineError(f"{name} has no version {version}; versions: {listed}")
            uri = f"models:/{name}/{version}"
        else:
            alias = alias or CHAMPION
            known = {a: r["version"] for r in rows for a in r["aliases"]}
            if alias not in known:
                listed = ", ".join(f"{a} (v{v})" for a, v in sorted(known.items())) or "none"
                raise PipelineError(f"{name} has no alias {alias!r}; aliases: {listed}")
            uri = f"models:/{name}/latest" if alias == "latest" else f"models:/{name}@{alias}"
            version = known[alias] if alias != "latest" else rows[0]["version"]
        try:
            with self._fluent(), tempfile.TemporaryDirectory() as folder:
                where = self.client().get_model_version_download_uri(name, str(version))
                self._check_location(where, f"{uri} (v{version})")
                model = read_settings_file(Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{where}/MLmodel", dst_path=folder)), "MLflow model file")
                flavors = (model or {}).get("flavors", {}) if isinstance(model, dict) else {}
                weights = (flavors.get("python_function", {}).get("artifacts", {}).get(GENERATOR_ARTIFACT, {})
                           .get("path"))
                if weights is None:
                    variant, _, arch = name.rpartition("-")
                    old = "as a pickled PyTorch model" if "pytorch" in flavors else "without a weights file"
                    raise PipelineError(
                        f"{uri} (v{version}) was registered by an earlier flower-pipeline {old}, which could run "
                        f"code when loaded, so it is refused; register it again: flower-pipeline train --variant "
                        f"{variant} --arch {arch}")
                if not isinstance(weights, str) or not weights.startswith("artifacts/") or ".." in weights:
                    raise PipelineError(f"{uri} (v{version}): its MLmodel points the weights outside the model's "
                                        f"folder ({str(weights)[:100]!r}), so it is refused")
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{where}/{weights}", dst_path=folder))
                generator, _, _ = load_generator_file(local, device)
        except (MlflowException, OSError) as err:  # artifacts deleted or moved, store unreachable
            reason = redact(str(err).splitlines()[0][:200])
            raise PipelineError(f"cannot load {uri} from {redact(self.uri)}: {reason}") from None
        row = next(r for r in rows if r["version"] == str(version))
        _check_identity(generator, name, row["tags"], f"{uri} (v{version})")
        generator.info["registered"] = f"{name} v{version}"
        return generator

    def _check_location(self, where: str, what: str) -> None:
        """A version's files on this machine's disk must lie in the data folder or the experiment's own
        artifact folder: a registry row pointing elsewhere (edited, or planted) is refused unread."""
        parts = urllib.parse.urlsplit(where)
        if parts.scheme not in ("", "file"):
            return  # a server's or a bucket's: MLflow fetches it into a temporary folder
        location = Path(urllib.parse.unquote(parts.path)).resolve()
        homes = [self.layout.root.resolve()]
        experiment = self.client().get_experiment_by_name(self.experiment)
        stored = urllib.parse.urlsplit(experiment.artifact_location) if experiment else None
        if stored is not None and stored.scheme in ("", "file"):
            homes.append(Path(urllib.parse.unquote(stored.path)).resolve())
        if not any(location.is_relative_to(home) for home in homes):
            raise PipelineError(f"{what} is stored at {str(location)[:200]}, outside the data folder and the "
                                "experiment's artifact folder, so it is refused")

    def _model_exists(self, name: str) -> bool:
        try:
            self.client().get_registered_model(name)
        except MlflowException:
            return False
        return True


class InBackground:
    """Tracker calls made while training (metrics, sample grids), sent in order by one thread, so that a slow
    or stopped MLflow server never holds up the training loop. A failing call is tried again every few seconds
    until it goes through, or until it has failed for `outage_seconds`; `flush` waits for the queue to empty
    and then raises that failure, if any. At most `limit` calls wait (then the caller waits: bounded memory)."""

    def __init__(self, outage_seconds: float | None = None, limit: int = 10_000, retry_every: float = 2.0):
        self.outage_seconds = outage_seconds if outage_seconds is not None else environment_outage_seconds()
        self.retry_every = retry_every
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple] | None] = queue.Queue(limit)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._send, daemon=True, name="mlflow-in-background")
        self.thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.failure is None:
            self.calls.put((fn, args))

    def flush(self) -> None:
        self.calls.put(None)
        self.thread.join()
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Stop without waiting (training failed): what is queued is dropped."""
        self.failure = self.failure or RuntimeError("closed")
        with contextlib.suppress(queue.Full):
            self.calls.put_nowait(None)

    def _send(self) -> None:
        while (item := self.calls.get()) is not None:
            fn, args = item
            failing_since = None
            while self.failure is None:
                try:
                    fn(*args)
                    break
                except MLFLOW_FAILURES as err:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= self.outage_seconds:
                        self.failure = err
                    else:
                        time.sleep(self.retry_every)


@contextlib.contextmanager
def mlflow_errors(store: MlflowTracker) -> Iterator[None]:
    """MLflow's own failures (server down, store broken) as one line naming the store."""
    try:
        yield
    except MLFLOW_FAILURES as err:
        text = str(err)
        reason = next((f"unreachable ({marker.lower()})" for marker in UNREACHABLE if marker in text),
                      text.splitlines()[0][:300] if text else type(err).__name__)
        raise PipelineError(f"MLflow at {redact(store.uri)} failed: {redact(reason)}") from None


def _check_identity(generator: FlowerGenerator, name: str, tags: dict[str, str], what: str) -> None:
    """A loaded generator is what its registered name and tags say: the same variant and architecture, and
    the channels and image size of that variant. Weights swapped in from another model are refused."""
    from flower_pipeline.catalog import Variant

    variant, _, arch = name.rpartition("-")
    said = {"variant": variant, "arch": arch}
    for key, value in said.items():
        if tags.get(key, value) != value or generator.info.get(key) != value:
            raise PipelineError(f"{what} holds the weights of {generator.info.get('variant')} × "
                                f"{generator.info.get('arch')}, not of {variant} × {arch}; it is refused")
    try:
        expected = Variant.parse(variant)
    except PipelineError:
        return  # a name from before variants: its tags were compared above
    shape = (3 if expected.mode == "color" else 1, expected.size)
    if (generator.channels, generator.image_size) != shape:
        raise PipelineError(f"{what} makes {generator.channels}×{generator.image_size} px images, not {variant}'s "
                            f"{shape[0]}×{shape[1]} px; it is refused")
