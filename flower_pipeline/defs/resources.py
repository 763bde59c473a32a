"""Resources shared by the assets: where data lives."""


import os
from pathlib import Path

import dagster as dg

from flower_pipeline.ingest import DatasetPaths

DEFAULT_DATA_DIR = os.environ.get("FLOWER_PIPELINE_DATA_DIR", "data")


class FlowerStorage(dg.ConfigurableResource):
    """The data folder: downloads, extracted images, tensor caches, trainings, MLflow."""

    data_dir: str = DEFAULT_DATA_DIR

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def dataset(self, name: str) -> DatasetPaths:
        return DatasetPaths(self.root, name)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"storage": FlowerStorage()})
