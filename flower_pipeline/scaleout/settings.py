"""Beyond one machine: the settings shared by the executor, the workers and the stack, read from the environment
alone.

    FLOWER_PIPELINE_CELERY_BROKER=amqp://guest:guest@127.0.0.1:5672//   # set: steps go to Celery workers
    FLOWER_PIPELINE_CELERY_BACKEND=redis://127.0.0.1:6379/0

Unset, the project runs in-process on one machine, as before. Set, every job of
the code location (UI, daemon, schedules, the CLI) uses dagster-celery's
executor: training and evaluation steps go to the `gpu` queue, one worker per
GPU consumes it one step at a time; ingest and registration go to dagster-celery's
default queue. The workers run `celery -A flower_pipeline.scaleout.worker worker`
(`flower-pipeline stack` starts them; docs/operations.md "Scaling out").
"""

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from flower_pipeline.environment import BACKEND_ENV, BROKER_ENV, MLFLOW_BACKEND_ENV, POSTGRES_ENV

# Settings that may hold a password: each is read from the environment, or from the file NAME_FILE names, which
# only its owner may read (never from a command line, so no password shows in `ps` or in `stack`'s records).
SECRET_ENV = (POSTGRES_ENV, MLFLOW_BACKEND_ENV, BROKER_ENV, BACKEND_ENV, "MLFLOW_TRACKING_PASSWORD")
GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "dagster"  # dagster-celery's default queue: the steps without a queue tag
GPU_STEP = {"dagster-celery/queue": GPU_QUEUE}  # op tags of the steps that use the GPU

# Shared by the executor (the producer) and the workers, so both ends agree.
CELERY_SETTINGS: dict[str, Any] = {
    # A step's message is acknowledged when the step ends, not when it starts: if its worker dies
    # (SIGKILL, a lost machine), the broker hands the step to another worker, which resumes the
    # training from its checkpoint, instead of the run waiting for a result that never comes.
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,  # a busy GPU worker holds no second step another worker could run
    "broker_connection_retry_on_startup": True,
    "result_expires": 7 * 24 * 3600,
    # RabbitMQ closes the channel of a step unacknowledged past its consumer timeout; the step goes on (Celery
    # says this default will change), and its redelivered copy is dropped while it runs (GuardedStep).
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    # A step's stdout and stderr stay the process's own, which Dagster's compute log manager captures into the
    # shared folder: Celery's logging proxy, its default, has no file descriptor, so nothing was captured.
    "worker_redirect_stdouts": False,
}
CODE_VERSION_TAG = "flower_pipeline/code_version"
REFUSAL = "refusal"  # the metadata key of a worker's engine event when it refuses a step
NO_RETRY = {"dagster/max_retries": "0"}  # run tags that keep Dagster's run retries from retrying a run


@functools.cache
def code_version() -> str:
    """What this process runs: a hash of the package's source and settings files, the same on every machine
    that has the same checkout (a git commit would miss uncommitted edits, and is absent from a wheel)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


code_version()  # at import: the version of the code this process loaded, not of files edited after


MAX_SECRET_BYTES = 64 << 10  # a password or a URL: a few hundred bytes


def read_secret_files() -> None:
    """NAME from the file NAME_FILE, for each setting of SECRET_ENV given so (a 0600 file: a Docker or systemd
    secret, a mounted Kubernetes secret); the processes this one starts inherit it."""
    from flower_pipeline.errors import PipelineError
    from flower_pipeline.storage import read_bounded

    for name in SECRET_ENV:
        file = os.environ.get(f"{name}_FILE")
        if not file or os.environ.get(name):
            continue
        try:
            status = os.stat(file)
        except OSError as err:
            raise PipelineError(f"{name}_FILE {file} cannot be read: {err.strerror or err}") from None
        if status.st_mode & 0o077:
            raise PipelineError(f"{name}_FILE {file} may be read by others (mode {status.st_mode & 0o777:o}): "
                                f"`chmod 600 {file}`")
        if status.st_uid != os.getuid():
            raise PipelineError(f"{name}_FILE {file} belongs to another user (uid {status.st_uid}); a secret "
                                "is read only from the reader's own file")
        data = read_bounded(file, f"{name}_FILE", MAX_SECRET_BYTES)
        try:
            secret = data.decode()
        except UnicodeDecodeError:
            raise PipelineError(f"{name}_FILE {file} is not UTF-8 text") from None
        if "\0" in secret:
            raise PipelineError(f"{name}_FILE {file} holds a NUL byte; a secret is one line of text")
        os.environ[name] = secret.strip()


def celery_enabled() -> bool:
    return bool(os.environ.get(BROKER_ENV))


