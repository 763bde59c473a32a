"""Resources shared by the assets: the data folder, the MLflow tracker, and how stage records pass between assets."""

from pathlib import Path
from typing import Any

import dagster as dg

from flower_pipeline.environment import DATA_DIR_ENV
from flower_pipeline.errors import PipelineError
from flower_pipeline.layout import DataLayout
from flower_pipeline.records import read_record, write_record
from flower_pipeline.tracking import EXPERIMENT, MlflowTracker


class FlowerStorage(dg.ConfigurableResource):
    """The data folder: downloads, extracted images, tensor caches, trainings, MLflow's local store."""

    data_dir: str | None = None
    """The data folder; default $FLOWER_PIPELINE_DATA_DIR, else data/ beside the Dagster home (read when the
    run starts)."""

    @property
    def layout(self) -> DataLayout:
        return DataLayout.at(self.data_dir)


class MlflowTracking(dg.ConfigurableResource):
    """The MLflow store, as a resource: `.tracker` is the plain `MlflowTracker` every asset logs through."""

    storage: FlowerStorage
    tracking_uri: str | None = None
    """A tracking server (http://host:5000) or database URI; default $MLFLOW_TRACKING_URI, else
    sqlite:///<data folder>/mlflow.db (read when the run starts)."""
    experiment: str = EXPERIMENT

    @property
    def tracker(self) -> MlflowTracker:
        return MlflowTracker(self.storage.layout, self.tracking_uri, self.experiment)


class StageOutputs(dg.ConfigurableIOManager):
    """Stage records (frozen dataclasses of paths, hashes and counts) as JSON, one file per asset partition.

    Dagster calls `handle_output` only after the asset function returned, so a
    record exists only for a finished materialization, and the file is replaced
    atomically: a failure part-way leaves the previous record in force. An
    input mapped from several partitions (a variant reading its dataset's
    extraction, an asset check) loads as {partition key: record}, and an output of several partitions (a fused
    group's step) is written as one record per partition.
    """

    storage: FlowerStorage

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        return self.storage.layout.stage_record(asset_key.path, partition)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:  # several partitions, one step
            for key in context.asset_partition_keys:
                self._write(context.asset_key, key, obj[key])
            return
        self._write(context.asset_key, context.partition_key if context.has_partition_key else None, obj)

    def _write(self, asset_key: dg.AssetKey, partition: str | None, record: Any) -> None:
        write_record(self._path(asset_key, partition), record)

    def load_input(self, context: dg.InputContext) -> Any:
        keys = context.asset_partition_keys if context.has_asset_partitions else [None]
        if len(keys) == 1:
            return self.load_record(context.asset_key, keys[0], context.instance)
        records = {k: self._load(context.asset_key, k) for k in keys}
        return {k: v for k, v in records.items() if v is not None}

    def load_record(self, asset_key: dg.AssetKey, partition: str | None,
                    instance: dg.DagsterInstance | None = None) -> Any:
        """One partition's record. A missing one fails in one line with its path and, where the instance says
        it was materialized, the likely cause: this machine sees another data folder than the one that wrote it."""
        record = self._load(asset_key, partition)
        if record is not None:
            return record
        path, name = self._path(asset_key, partition), asset_key.to_user_string()
        if instance is not None and _materialized(instance, asset_key, partition):
            raise dg.Failure(description=(
                f"{name} was materialized, but its output is not at {path}: this machine does not see the data "
                f"folder that run wrote to; every worker must see one shared data folder at the same path "
                f"(${DATA_DIR_ENV})"))
        raise dg.Failure(description=f"no output of {name} at {path}: materialize it first")

    def _load(self, asset_key: dg.AssetKey, partition: str | None) -> Any:
        path = self._path(asset_key, partition)
        if not path.exists():
            return None
        return read_record(path, self.storage.layout.root)


def _materialized(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None) -> bool:
    if partition is None:
        return instance.get_latest_materialization_event(asset_key) is not None
    return partition in instance.get_materialized_partitions(asset_key)


def pick(loaded: Any, key: str, field: str) -> Any:
    """One partition's record from an input loaded from several partitions (or from one)."""
    record = loaded.get(key) if isinstance(loaded, dict) else loaded
    if record is None or getattr(record, field) != key:
        raise PipelineError(f"{key} has no materialized upstream record yet; materialize its upstream assets first")
    return record


# Configured per run (launchpad, or the CLI's --data-dir), so a re-executed run uses the same folder.
storage = FlowerStorage.configure_at_launch()


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"storage": storage, "io_manager": StageOutputs(storage=storage),
                                     "mlflow": MlflowTracking(storage=storage)})

