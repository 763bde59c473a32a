"""What the distributed path costs: one short `flower-pipeline train`, in-process vs through Celery workers.

Needs a running stack and its environment (README, Scaling out):

    source deploy/stack.env && flower-pipeline stack up --workers 1
    flower-pipeline prepare --dataset synthetic --size 32
    python benchmarks/scaleout.py [--rounds 3]

Both paths use the same instance (PostgreSQL) and MLflow server; only the
executor differs (the in-process runs unset FLOWER_PIPELINE_CELERY_BROKER).
The rounds alternate, so drift in the machine's speed hits both alike. Wall
times are whole commands, as a user waits for them.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "flower-pipeline")
TRAIN = ["train", "--variant", "synthetic-color-32", "--arch", "arch1", "--iterations", "60", "--features", "8",
         "--log-every", "20", "--sample-every", "60", "--eval-samples", "64", "--eval-min-recall", "0"]


def timed(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([CLI, *TRAIN], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not os.environ.get("FLOWER_PIPELINE_CELERY_BROKER"):
        sys.exit("error: source deploy/stack.env and run `flower-pipeline stack up` first")
    celery_env, local_env = dict(os.environ), {**os.environ, "FLOWER_PIPELINE_CELERY_BROKER": ""}
    times: dict[str, list[float]] = {"in-process": [], "celery": []}
    for _ in range(args.rounds):
        times["in-process"].append(timed(local_env))
        times["celery"].append(timed(celery_env))
    local, celery = statistics.median(times["in-process"]), statistics.median(times["celery"])
    for name, values in times.items():
        print(f"{name:10} median {statistics.median(values):5.1f} s  ({', '.join(f'{v:.1f}' for v in values)})")
    print(f"celery / in-process: {celery / local:.2f}×  ({celery - local:+.1f} s)")


if __name__ == "__main__":
    main()
