"""Fused-trainer benchmark: K runs trained as one members-wide model against the same K runs one after another,
in one process.

Both sides are the project's Trainer on the same random images: "one by one" steps K solo trainers in turn
(seeds 0…K-1), "fused" steps one Trainer holding all K. Throughput is model-iterations a second (K × steps / s).
On CUDA both sides replay their step as a CUDA graph, and the achieved TFLOP/s is printed from PyTorch's FLOP
counter. The last line is the ratio at the last K:

    fused vs one-by-one: N.NN× (K runs, arch, batch, size, device)

With bf16 units on the CPU (or `--precision bf16`), the fused trainer is also timed in bf16 against itself in
fp32: "fused bf16 vs fp32: N.NN×".

    python benchmarks/fused.py [--device auto] [--runs 4] [--arch arch1] [--batch 16] [--size 32] [--precision auto]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from flower_pipeline.training import TrainConfig, Trainer, cpu_bf16_units, pick_device, precision_for


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(trainers: list[Trainer], steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        for trainer in trainers:
            trainer.run_step()
    for trainer in trainers:
        trainer.read_stats(steps)  # the one sync a logging window costs
    _sync(device)
    return time.perf_counter() - start


def step_flops(config: TrainConfig, images: np.ndarray, device: torch.device) -> int:
    """The FLOPs of one solo training step (eager), as PyTorch's FLOP counter counts them."""
    trainer = Trainer(config, images, device)
    with FlopCounterMode(display=False) as counter:
        trainer._step()
    return counter.get_total_flops()


def compare(sides: dict[str, list[Trainer]], runs: int, device: torch.device, steps: int,
            rounds: int) -> dict[str, float]:
    """Median model-iterations/s of each side (lists of trainers stepped in turn), timed in turn so drift hits
    all alike."""
    for trainer in [t for side in sides.values() for t in side]:
        trainer.try_capture()  # eager warm-up steps, then the CUDA graph (no-op on a CPU)
        trainer.run_step()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            rates[name].append(runs * steps / _seconds(side, steps, device))
    return {name: float(np.median(r)) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=int, nargs="+", default=None, help="K values (default 4 on a CPU, "
                                                                            "1 4 8 19 on CUDA)")
    parser.add_argument("--arch", default="arch1")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="image side (default 32 on a CPU, 64 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block (default 200 CUDA, 3 CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="timed blocks per side (default 5)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16"),
                        help="the fused trainer's second precision, against its fp32 (auto: bf16 where the CPU "
                             "has bf16 units)")
    args = parser.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    runs, size = args.runs or ([1, 4, 8, 19] if cuda else [4]), args.size or (64 if cuda else 32)
    steps, rounds = args.steps or (200 if cuda else 3), args.rounds or 5
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {args.arch}, batch {args.batch}, {size} px; median of "
          f"{rounds} blocks of {steps} steps, one by one and fused in turn")
    images = np.random.default_rng(0).integers(0, 256, (1360, 3, size, size), dtype=np.uint8)
    config = TrainConfig(arch=args.arch, batch_size=args.batch, precision="fp32")
    flops = step_flops(config, images, device)
    print(f"one step of one run: {flops / 1e9:.1f} GFLOP")
    precision = precision_for(args.precision, device)
    line = ""
    for k in runs:
        configs = [replace(config, seed=seed) for seed in range(k)]
        sides = {"one by one": [Trainer(c, images, device) for c in configs],
                 "fused": [Trainer(configs, images, device)]}
        if precision == "bf16":
            sides["fused bf16"] = [Trainer([replace(c, precision="bf16") for c in configs], images, device)]
        rates = compare(sides, k, device, steps, rounds)
        one_by_one, fused = rates["one by one"], rates["fused"]
        print(f"K={k:>2}: one by one {one_by_one:8.1f} model-it/s ({one_by_one * flops / 1e12:.2f} TFLOP/s) | "
              f"fused {fused:8.1f} model-it/s ({fused * flops / 1e12:.2f} TFLOP/s)")
        if precision == "bf16":
            print(f"K={k:>2}: fused bf16 vs fp32: {rates['fused bf16'] / fused:.2f}× "
                  f"(bf16 units: {cpu_bf16_units() or 'none'})")
        line = (f"fused vs one-by-one: {fused / one_by_one:.2f}× ({k} runs, {args.arch}, batch {args.batch}, "
                f"{size} px, {name})")
    print(line)
    if precision != "bf16":
        print(f"fused bf16 not timed: --precision auto is fp32 on {name} (bf16 units: {cpu_bf16_units() or 'none'})")

if __name__ == "__main__":
    main()
