"""The registered generator as MLflow's pyfunc serves it. Only MLflow's loader imports this module (through
`mlflow_model.py`); the project's own loaders read the generator file directly (`MlflowTracker.load_generator`)."""

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from flower_pipeline.tracking import GENERATOR_ARTIFACT
from flower_pipeline.training import load_generator_file


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """A registered generator as MLflow's pyfunc (`mlflow.pyfunc.load_model`, `mlflow models serve`): latent
    vectors in, images in [-1, 1] out. The network comes from the installed package, its weights from the
    model's generator file read as tensors only; `.generator.generate(n, seed=s)` gives uint8 images."""

    def load_context(self, context: Any) -> None:
        self.generator, _, _ = load_generator_file(Path(context.artifacts[GENERATOR_ARTIFACT]))

    # np.ndarray: a type MLflow infers no signature from, so it keeps the logged one and warns of nothing
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        with torch.no_grad():
            return self.generator(torch.as_tensor(np.asarray(model_input, np.float32))).numpy()
