"""MLflow, reached through this one resource around MlflowClient."""

import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

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


@dg.definitions
def mlflow_resources() -> dg.Definitions:
    return dg.Definitions(resources={"mlflow": MlflowTracking()})
