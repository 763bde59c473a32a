"""Resources shared by the assets: where data lives, and how stage outputs pass between assets."""

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

import dagster as dg

from flower_pipeline.errors import PipelineError
from flower_pipeline.storage import atomic_write_json

DATA_DIR_ENV = "FLOWER_PIPELINE_DATA_DIR"
PROJECT_DAGSTER_HOME = Path(__file__).resolve().parents[2] / "dagster_home"  # the instance of a source checkout


def default_data_dir() -> Path:
    """The data folder of the instance: $FLOWER_PIPELINE_DATA_DIR, else `data/` beside the Dagster home
    ($DAGSTER_HOME, else the project's dagster_home/). Never the current directory's, so commands run from
    anywhere and the UI share one data root, and the runs an instance records point at data that exists."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser().resolve()
    return Path(os.environ.get("DAGSTER_HOME") or PROJECT_DAGSTER_HOME).expanduser().resolve().parent / "data"


class FlowerStorage(dg.ConfigurableResource):
    """The data folder: downloads, extracted images, tensor caches, trainings, MLflow's local store."""

    data_dir: str | None = None
    """The data folder; default $FLOWER_PIPELINE_DATA_DIR, else data/ beside the Dagster home (read when the
    run starts)."""

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve() if self.data_dir else default_data_dir()


class StageOutputs(dg.ConfigurableIOManager):
    """Stage records (frozen dataclasses of paths, hashes and counts) as JSON, one file per asset partition.

    Dagster calls `handle_output` only after the asset function returned, so a
    record exists only for a finished materialization, and the file is replaced
    atomically: a failure part-way leaves the previous record in force. An
    input mapped from several partitions (a variant reading its dataset's
    extraction, an asset check) loads as {partition key: record}.
    """

    storage: FlowerStorage

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        name = (partition or "all").replace("|", "__")  # multi-partition keys: arch1|flowers17-color-64
        return self.storage.root / "stage_outputs" / "/".join(asset_key.path) / f"{name}.json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        partition = context.partition_key if context.has_partition_key else None
        atomic_write_json(self._path(context.asset_key, partition),
                          {"type": f"{type(obj).__module__}:{type(obj).__qualname__}", "value": _encode(obj)})

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
        if not path.is_file():
            return None
        stored = json.loads(path.read_text())
        module, name = stored["type"].split(":")
        return _decode(getattr(__import__(module, fromlist=[name]), name), stored["value"])


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


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(cls: type, value: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{k: _decode(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in value.items()})


# Configured per run (launchpad, or the CLI's --data-dir), so a re-executed run uses the same folder.
storage = FlowerStorage.configure_at_launch()


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"storage": storage, "io_manager": StageOutputs(storage=storage)})
