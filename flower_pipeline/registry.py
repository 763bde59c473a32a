"""Registered generators, by name, from Python.

    from flower_pipeline.registry import load_generator
    generator = load_generator("flowers17-arch1")          # the champion
    images = generator.generate(16, seed=0)                # uint8 N×C×H×W, same seed → same images

The tracking store is $MLFLOW_TRACKING_URI, else the SQLite store in the data
folder ($FLOWER_PIPELINE_DATA_DIR, default ./data), as for the pipeline.
Models are also plain MLflow models: `mlflow.pytorch.load_model("models:/flowers17-arch1@champion")`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flower_pipeline.errors import PipelineError
from flower_pipeline.models import FlowerGenerator


def _tracking(tracking_uri: str | None, data_dir: Path | str | None) -> Any:
    from flower_pipeline.defs.mlflow_tracking import MlflowTracking

    options: dict[str, str] = {}
    if tracking_uri:
        options["tracking_uri"] = tracking_uri
    if data_dir is not None:
        options["data_dir"] = str(data_dir)
    return MlflowTracking(**options)


@contextlib.contextmanager
def _mlflow_errors(tracking: Any) -> Iterator[None]:
    """MLflow's own failures (server down, artifacts gone) as one line naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as err:
        raise PipelineError(f"MLflow at {tracking.uri} failed: {str(err).splitlines()[0][:300]}") from None


def load_generator(name: str, alias: str | None = None, version: int | str | None = None, *,
                   tracking_uri: str | None = None, data_dir: Path | str | None = None,
                   device: str = "cpu") -> FlowerGenerator:
    """A registered generator by alias (default: champion) or version number."""
    tracking = _tracking(tracking_uri, data_dir)
    with _mlflow_errors(tracking):
        return tracking.load_generator(name, alias=alias, version=version, device=device)


def list_models(*, tracking_uri: str | None = None, data_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Every registered version: name, version, aliases, creation time (ms) and tags (dataset, arch, eval.*)."""
    tracking = _tracking(tracking_uri, data_dir)
    with _mlflow_errors(tracking):
        return tracking.registered_models()
