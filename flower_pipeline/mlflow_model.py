"""The registered generator for MLflow's pyfunc loader ("models from code"): MLflow keeps this file with each
logged model and runs it on load; it only imports the installed flower_pipeline, so no pickle and no copy of the
package's code is read from the artifact store."""

import mlflow

from flower_pipeline.served import GeneratorModel

mlflow.models.set_model(GeneratorModel())
