"""MLflow in one place: the tracking resource, the model registry's rules, and lookups from Python.

    from flower_pipeline.registry import load_generator
    generator = load_generator("flowers17-color-64-arch1")     # the champion
    images = generator.generate(16, seed=0)                    # uint8 N×C×H×W, same seed → same images

Every MLflow call of the pipeline goes through `MlflowTracking`, a Dagster
resource around `MlflowClient`. It never changes MLflow's global tracking URI:
the fluent calls that model logging and loading need run inside a scope that
restores it. The store is $MLFLOW_TRACKING_URI, else SQLite in the data folder.
Models are plain MLflow models too:
`mlflow.pytorch.load_model("models:/flowers17-color-64-arch1@champion")`.

A version becomes `champion` only when it passed the quality gate and beats
the current champion on FID (or, where either lacks FID, on the colour
distance). `latest` is MLflow's own reserved alias for the newest version.
"""


import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import mlflow.pytorch
import numpy as np
import requests
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

import flower_pipeline
from flower_pipeline.defs.resources import FlowerStorage
from flower_pipeline.errors import PipelineError
from flower_pipeline.models import FlowerGenerator, sample_latent
from flower_pipeline.training import load_trained

TRACKING_ENV = "MLFLOW_TRACKING_URI"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the registered versions made from it
METRIC_TAG = "eval."  # version tags carrying evaluation metrics, read back to compare with the champion
FEATURE_NETWORK = "feature_network"  # version tag: the id of the network its fd_flowers was measured with
CHAMPION = "champion"


def model_name(variant: str, arch: str) -> str:
    return f"{variant}-{arch}"


@dataclass(frozen=True)
class RegisteredVersion:
    model: str
    version: int
    promotion: str  # champion or not promoted
    reason: str
    champion_version: int | None
    run_id: str


class MlflowTracking(dg.ConfigurableResource):
    """Tracking and registry. Default store: SQLite under the data folder (MLflow 3 rejects plain files)."""

    storage: FlowerStorage
    tracking_uri: str | None = None
    """A tracking server (http://host:5000) or database URI; default $MLFLOW_TRACKING_URI, else
    sqlite:///<data folder>/mlflow.db (read when the run starts)."""
    experiment: str = "flower-pipeline"

    @property
    def uri(self) -> str:
        uri = self.tracking_uri or os.environ.get(TRACKING_ENV)
        if uri:
            return uri
        try:
            self.storage.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PipelineError(f"cannot create the data folder {self.storage.root}: {err.strerror}") from None
        return f"sqlite:///{self.storage.root / 'mlflow.db'}"

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
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # a local store keeps its artifacts inside the data folder
            location = (self.storage.root / "mlartifacts").as_uri()
        return client.create_experiment(self.experiment, artifact_location=location, tags={
            "mlflow.experimentKind": "custom_model_development"})  # MLflow's UI opens on the runs table

    def link(self, run_id: str | None = None, model: str | None = None, version: int | None = None) -> Any:
        """A run or model version as a link into the MLflow UI when the store is a server, else its id."""
        import dagster as dg

        base = self.uri.rstrip("/")
        if not base.startswith(("http://", "https://")):
            return run_id if model is None else f"models:/{model}/{version}"
        if model is not None:
            return dg.MetadataValue.url(f"{base}/#/models/{model}/versions/{version}")
        return dg.MetadataValue.url(f"{base}/#/experiments/{self.experiment_id()}/runs/{run_id}")

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
        """The training input as an MLflow dataset: the tensor cache's variant, content hash and folder."""
        self.client().log_inputs(run_id, [DatasetInput(Dataset(name, digest[:36], "local", source),
                                                       [InputTag("mlflow.data.context", "training")])])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client().set_terminated(run_id, status)

    # --- the model registry ---------------------------------------------------------------------------

    def version_of_run(self, name: str, run_id: str) -> ModelVersion | None:
        """The version already registered from this run, so a retried registration makes no second one."""
        if not self._model_exists(name):
            return None
        found = self.client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return found[0] if found else None

    def log_generator(self, run_id: str, name: str, generator: FlowerGenerator) -> Any:
        """Log the generator to the run as an MLflow PyTorch model named after its registered model."""
        from mlflow.models import infer_signature

        z = sample_latent(2, generator.latent_dim, generator.latent_noise, "cpu", torch.Generator().manual_seed(0))
        generator = generator.cpu().eval()
        with torch.no_grad():
            signature = infer_signature(z.numpy(), generator(z).numpy())
        with self._fluent(), mlflow.start_run(run_id=run_id):
            return mlflow.pytorch.log_model(
                generator, name=name, signature=signature, input_example=z.numpy(),
                serialization_format="pickle",  # keeps FlowerGenerator.generate(); pt2 would export forward only
                code_paths=[str(Path(flower_pipeline.__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
            )

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

    def register_generator(self, name: str, run_id: str, training_dir: Path, *, gate: tuple[bool, str],
                           metrics: dict[str, float], feature_network: str, tags: dict[str, str], description: str,
                           log: Callable[[str], None]) -> RegisteredVersion:
        """Register the run's generator as a new version of `name` (once per run, however often retried) and
        move `champion` to it when it passed the quality gate and beats the champion."""
        version = self.version_of_run(name, run_id)
        if version is None:
            model = self.log_generator(run_id, name, load_trained(training_dir).generator)
            version = self.register(name, run_id, model, tags, description)
        else:
            log(f"{name} version {version.version} was already registered from run {run_id}")
        champion = self.version_by_alias(name, CHAMPION)
        if champion is not None and champion.version == version.version:
            promoted, reason = True, "already the champion"
        else:
            held = ({**metrics_from_tags(champion.tags), FEATURE_NETWORK: champion.tags.get(FEATURE_NETWORK)}
                    if champion else None)
            promoted, reason = promotion_decision(*gate, {**metrics, FEATURE_NETWORK: feature_network}, held)
            if promoted:
                self.set_alias(name, CHAMPION, version.version)
        decision = CHAMPION if promoted else "not promoted"
        champion_version = version.version if promoted else (champion.version if champion else None)
        self.set_version_tags(name, version.version, {"promotion": decision, "promotion_reason": reason})
        self.set_tags(run_id, {"registered_model": name, "registered_version": version.version,
                               "promotion": decision, "promotion_reason": reason})
        log(f"{name} v{version.version}: {decision} ({reason})")
        return RegisteredVersion(name, int(version.version), decision, reason,
                                 int(champion_version) if champion_version is not None else None, run_id)

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
        try:
            with self._fluent():
                model = mlflow.pytorch.load_model(uri, map_location=device)
        except (MlflowException, OSError) as err:  # artifacts deleted or moved, store unreachable
            raise PipelineError(f"cannot load {uri} from {self.uri}: {str(err).splitlines()[0][:200]}") from None
        return model.eval()

    def _model_exists(self, name: str) -> bool:
        try:
            self.client().get_registered_model(name)
        except MlflowException:
            return False
        return True


# --- what may become the champion -------------------------------------------------------------------------


def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    return {k.removeprefix(METRIC_TAG): float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)}


def ranking_metric(new: dict[str, Any], champion: dict[str, Any]) -> str:
    """FID when both versions have it; else fd_flowers when both were measured with the same feature network;
    else the colour distance. Lower is better for all three.

    D scores do not rank versions: each version is judged by its own discriminator.
    """
    if new.get("fid") is not None and champion.get("fid") is not None:
        return "fid"
    if (new.get("fd_flowers") is not None and champion.get("fd_flowers") is not None
            and new.get(FEATURE_NETWORK) == champion.get(FEATURE_NETWORK) is not None):
        return "fd_flowers"
    return "colour_distance"


def promotion_decision(gate_passed: bool, gate_reason: str, new: dict[str, Any],
                       champion: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether the new version becomes champion, and why."""
    if not gate_passed:
        return False, f"quality gate {gate_reason}"
    if champion is None:
        return True, f"first version to pass the quality gate ({gate_reason})"
    metric = ranking_metric(new, champion)
    if new.get(metric) is None or champion.get(metric) is None:
        return True, f"the champion has no {metric} to compare; the new version passed the gate"
    better = float(new[metric]) < float(champion[metric])
    verdict = "beats" if better else "does not beat"
    return better, f"{metric} {float(new[metric]):.4g} {verdict} the champion's {float(champion[metric]):.4g}"


# --- lookups from Python ---------------------------------------------------------------------------------


def tracking(tracking_uri: str | None = None, data_dir: Path | str | None = None) -> MlflowTracking:
    """The MLflow store the pipeline uses (or the one given)."""
    return MlflowTracking(storage=FlowerStorage(data_dir=str(data_dir) if data_dir is not None else None),
                          tracking_uri=tracking_uri)


MLFLOW_FAILURES = (MlflowException, requests.RequestException)  # what MLflow's client raises when its store fails
UNREACHABLE = ("Connection refused", "Max retries exceeded", "timed out", "Connection aborted")


@contextlib.contextmanager
def mlflow_errors(store: MlflowTracking) -> Iterator[None]:
    """MLflow's own failures (server down, store broken) as one line naming the store."""
    try:
        yield
    except MLFLOW_FAILURES as err:
        text = str(err)
        reason = next((f"unreachable ({marker.lower()})" for marker in UNREACHABLE if marker in text),
                      text.splitlines()[0][:300] if text else type(err).__name__)
        raise PipelineError(f"MLflow at {store.uri} failed: {reason}") from None


def load_generator(name: str, alias: str | None = None, version: int | str | None = None, *,
                   tracking_uri: str | None = None, data_dir: Path | str | None = None,
                   device: str = "cpu") -> FlowerGenerator:
    """A registered generator by alias (default: champion) or version number."""
    store = tracking(tracking_uri, data_dir)
    with mlflow_errors(store):
        return store.load_generator(name, alias=alias, version=version, device=device)


def list_models(*, tracking_uri: str | None = None, data_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Every registered version: name, version, aliases, creation time (ms) and tags (variant, arch, eval.*)."""
    store = tracking(tracking_uri, data_dir)
    with mlflow_errors(store):
        return store.registered_models()
