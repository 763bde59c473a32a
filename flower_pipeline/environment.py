"""Every environment setting the pipeline reads, named once. Each is read where it is used, when a run or a
command starts, never at import (an edited environment takes effect without reloading the code location), except
the retraining schedule's cron, which Dagster needs when the code location loads.

| setting | what | default |
|---|---|---|
| FLOWER_PIPELINE_DATA_DIR | the data folder | data/ beside the Dagster home |
| DAGSTER_HOME | the Dagster instance | the project's dagster_home/ |
| MLFLOW_TRACKING_URI | the MLflow store (a server, or a database URI) | sqlite:///<data folder>/mlflow.db |
| FLOWER_PIPELINE_DAGSTER_URL | the Dagster UI, for links from MLflow | none |
| FLOWER_PIPELINE_MLFLOW_UI | the MLflow UI over a database store, for links to it | http://127.0.0.1:5000 |
| FLOWER_PIPELINE_DEAD_AFTER | seconds of heartbeat silence before a started run is dead | 60 (20 at least) |
| FLOWER_PIPELINE_MLFLOW_OUTAGE_SECONDS | how long training waits out an MLflow outage | 900 |
| FLOWER_PIPELINE_RETRAIN_CRON | the weekly retraining's schedule | Mondays 03:00 UTC |
| FLOWER_PIPELINE_RETRAINING | the retraining profile (YAML) | flower_pipeline/retraining.yaml |
| FLOWER_PIPELINE_ALERT_WEBHOOK | where a failed retraining is posted | none |
| FLOWER_PIPELINE_INCEPTION_WEIGHTS | Inception's weights, for the setting's "auto" | torch-fidelity's cache |
| FLOWER_PIPELINE_CELERY_BROKER, _BACKEND | scale-out: the broker, the result backend (or `*_FILE`) | in-process |
| DAGSTER_POSTGRES_URL, FLOWER_PIPELINE_MLFLOW_BACKEND | scale-out: the instance's and MLflow's databases | none |
| FLOWER_PIPELINE_COMPUTE_LOGS | scale-out: steps' logs, in a folder every host sees | none |
"""

import os

DATA_DIR_ENV = "FLOWER_PIPELINE_DATA_DIR"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
WEBSERVER_ENV = "FLOWER_PIPELINE_DAGSTER_URL"  # e.g. http://127.0.0.1:3000
MLFLOW_UI_ENV = "FLOWER_PIPELINE_MLFLOW_UI"
DEAD_AFTER_ENV = "FLOWER_PIPELINE_DEAD_AFTER"
OUTAGE_ENV = "FLOWER_PIPELINE_MLFLOW_OUTAGE_SECONDS"
RETRAIN_CRON_ENV = "FLOWER_PIPELINE_RETRAIN_CRON"
PROFILE_ENV = "FLOWER_PIPELINE_RETRAINING"
WEBHOOK_ENV = "FLOWER_PIPELINE_ALERT_WEBHOOK"
INCEPTION_ENV = "FLOWER_PIPELINE_INCEPTION_WEIGHTS"  # stands for the setting's "auto" when set
BROKER_ENV = "FLOWER_PIPELINE_CELERY_BROKER"
BACKEND_ENV = "FLOWER_PIPELINE_CELERY_BACKEND"
POSTGRES_ENV = "DAGSTER_POSTGRES_URL"
MLFLOW_BACKEND_ENV = "FLOWER_PIPELINE_MLFLOW_BACKEND"
COMPUTE_LOGS_ENV = "FLOWER_PIPELINE_COMPUTE_LOGS"  # steps' stdout/stderr, in a folder every host sees


def text(name: str, default: str | None = None) -> str | None:
    """The setting's value, or `default` when it is unset or empty."""
    return os.environ.get(name) or default


def seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


BEAT_EVERY = 10.0  # seconds between a run's heartbeats (scaleout/heartbeat.py)


def dead_after() -> float:
    """Seconds of heartbeat silence after which a STARTED run is dead: never under two beats, which would call a
    live run dead between its beats."""
    return max(seconds(DEAD_AFTER_ENV, 60), 2 * BEAT_EVERY)


def outage_seconds() -> float:
    """How long training rides out an MLflow outage before the step fails."""
    return seconds(OUTAGE_ENV, 900)


def mlflow_ui() -> str:
    """Where the MLflow UI over a database store is: `mlflow ui`'s own address, which the demo prints."""
    return text(MLFLOW_UI_ENV, "http://127.0.0.1:5000").rstrip("/")


def retrain_cron() -> str:
    return text(RETRAIN_CRON_ENV, "0 3 * * 1")  # Mondays 03:00 UTC
