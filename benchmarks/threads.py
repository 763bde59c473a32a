"""torch's intra-op threads on a CPU: the quick profile's training step with 1 thread against the default, on an
idle machine and beside a busy neighbour (another process spinning on one core), in one run.

    OMP_NUM_THREADS= .venv/bin/python benchmarks/threads.py
"""

import multiprocessing
import time

import numpy as np
import torch

from flower_pipeline.training import TrainConfig, Trainer


def spin(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def steps_per_second(trainer: Trainer, threads: int, steps: int = 30) -> float:
    torch.set_num_threads(threads)
    trainer.run_step()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.run_step()
    return steps / (time.perf_counter() - started)


def measure(trainer: Trainer, default: int, rounds: int = 3) -> tuple[float, float]:
    """Medians over alternating rounds, so drift in the machine's speed hits both alike."""
    one, many = [], []
    for _ in range(rounds):
        one.append(steps_per_second(trainer, 1))
        many.append(steps_per_second(trainer, default))
    return float(np.median(one)), float(np.median(many))


def main() -> None:
    default = torch.get_num_threads()
    images = np.random.default_rng(0).integers(0, 256, (256, 3, 32, 32), dtype=np.uint8)
    trainer = Trainer(TrainConfig(arch="arch1", features=32, batch_size=16), images, torch.device("cpu"))
    for situation in ("idle", "busy"):
        stop = multiprocessing.Event()
        neighbour = multiprocessing.Process(target=spin, args=(stop,)) if situation == "busy" else None
        if neighbour:
            neighbour.start()
        try:
            one, many = measure(trainer, default)
        finally:
            if neighbour:
                stop.set()
                neighbour.join()
        print(f"{situation}: 1 thread {one:.1f} it/s, {default} threads {many:.1f} it/s; "
              f"1 thread vs default: {one / many:.2f}×")


if __name__ == "__main__":
    main()
