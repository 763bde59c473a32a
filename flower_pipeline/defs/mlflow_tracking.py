"""MLflow, reached through this one resource around MlflowClient: runs, models and the registry."""

import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import mlflow.pytorch
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import flower_pipeline
from flower_pipeline.errors import PipelineError
from flower_pipeline.models import FlowerGenerator, sample_latent

from .resources import DEFAULT_DATA_DIR


class MlflowTracking(dg.ConfigurableResource):
    """Tracking and registry. Default store: SQLite under the data folder (MLflow 3 rejects plain files)."""

    tracking_uri: str | None = os.environ.get("MLFLOW_TRACKING_URI")
    """A tracking server (http://host:5000) or database URI; default sqlite:///<data_dir>/mlflow.db."""
    data_dir: str = DEFAULT_DATA_DIR
    experiment: str = "flower-pipeline"

    @property
    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        root = Path(self.data_dir).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{root / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self) -> str:
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if not self.tracking_uri:  # keep local artifacts inside the data folder
            location = (Path(self.data_dir).expanduser().resolve() / "mlartifacts").as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    def start_run(self, name: str, tags: dict[str, str]) -> str:
        return self.client().create_run(self.experiment_id(), run_name=name, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client().log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        client = self.client()
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client().set_terminated(run_id, status)

    # --- the model registry ---------------------------------------------------------------------------

    def version_of_run(self, name: str, run_id: str) -> ModelVersion | None:
        """The version already registered from this run, so a retried registration makes no second one."""
        if not self._model_exists(name):
            return None
        found = self.client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return found[0] if found else None

    def log_generator(self, run_id: str, generator: FlowerGenerator) -> Any:
        """Log the generator to the run as an MLflow PyTorch model; returns its ModelInfo."""
        from mlflow.models import infer_signature

        z = sample_latent(2, generator.latent_dim, generator.latent_noise, "cpu", torch.Generator().manual_seed(0))
        generator = generator.cpu().eval()
        with torch.no_grad():
            signature = infer_signature(z.numpy(), generator(z).numpy())
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                generator, name="generator", signature=signature, input_example=z.numpy(),
                serialization_format="pickle",  # keeps FlowerGenerator.generate(); pt2 would export forward only
                code_paths=[str(Path(flower_pipeline.__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
            )
        return info

    def register(self, name: str, run_id: str, model: Any, tags: dict[str, str], description: str) -> ModelVersion:
        """A new version of `name` (created if needed) from a model logged by `log_generator`."""
        client = self.client()
        if not self._model_exists(name):
            client.create_registered_model(name, description=f"DCGAN flower generator {name}")
        return client.create_model_version(name, source=model.model_uri, run_id=run_id, tags=tags,
                                           description=description, model_id=model.model_id)

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
            alias = alias or "champion"
            known = {a: r["version"] for r in rows for a in r["aliases"]}
            if alias not in known:
                listed = ", ".join(f"{a} (v{v})" for a, v in sorted(known.items())) or "none"
                raise PipelineError(f"{name} has no alias {alias!r}; aliases: {listed}")
            uri = f"models:/{name}/latest" if alias == "latest" else f"models:/{name}@{alias}"
        mlflow.set_tracking_uri(self.uri)
        try:
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


@dg.definitions
def mlflow_resources() -> dg.Definitions:
    return dg.Definitions(resources={"mlflow": MlflowTracking()})
