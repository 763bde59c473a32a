"""Training-loop benchmark: the project's loop vs a plain reference DCGAN loop, in one process.

Reference: a CPU DataLoader over the same images, a host→device copy per step,
`nn.BCELoss` on sigmoid outputs, the standard 64×64 DCGAN (PyTorch's example)
and Adam. Project: the project's loop (data on the device, no per-step sync
and, on CUDA, a captured CUDA graph), run twice: on the reference's own DCGAN
networks, which isolates the loop, and on architecture 1 (a deeper generator
and minibatch discrimination: more compute per step). Prints iterations/s and
the ratios at each batch size, plus the device. Architecture 1 also runs in fp32
and in bf16 (autocast, channels-last), the project's loop against itself: the
gain of the CPU's matrix units (AMX, AVX512-BF16). Without them `--precision auto`
is fp32 and that line says so; `--precision bf16` times emulated bf16 anyway.

    python benchmarks/train.py [--device auto] [--steps N] [--rounds R] [--batch-sizes 16 64] [--precision auto]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flower_pipeline.training import TrainConfig, Trainer, cpu_bf16_units, pick_device, precision_for


def reference_models(nz: int = 100, ngf: int = 64, ndf: int = 64, logits: bool = False) -> tuple[nn.Module, nn.Module]:
    generator = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())
    discriminator = nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Flatten(0) if logits else nn.Sigmoid())
    return generator, discriminator


class ReferenceLoop:
    """The plain loop: DataLoader batches copied to the device, BCELoss on sigmoid outputs, a sync per step."""

    def __init__(self, images: np.ndarray, batch: int, device: torch.device):
        data = torch.from_numpy(images).float().div(127.5).sub(1.0)
        self.loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True)
        self.batches = iter(self.loader)
        self.batch, self.device = batch, device
        self.generator, self.discriminator = (m.to(device) for m in reference_models())
        self.opt_g = torch.optim.Adam(self.generator.parameters(), 2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
        self.criterion = nn.BCELoss()

    def run_step(self) -> None:
        try:
            (real,) = next(self.batches)
        except StopIteration:  # a new epoch
            self.batches = iter(self.loader)
            (real,) = next(self.batches)
        batch, device = self.batch, self.device
        real = real.to(device)
        fake = self.generator(torch.randn(batch, 100, 1, 1, device=device))
        self.opt_d.zero_grad()
        loss_d = (self.criterion(self.discriminator(real).view(-1), torch.ones(batch, device=device))
                  + self.criterion(self.discriminator(fake.detach()).view(-1), torch.zeros(batch, device=device)))
        loss_d.backward()
        self.opt_d.step()
        self.opt_g.zero_grad()
        loss_g = self.criterion(self.discriminator(fake).view(-1), torch.ones(batch, device=device))
        loss_g.backward()
        self.opt_g.step()
        loss_d.item(), loss_g.item()  # the usual per-step logging sync


def project_trainer(images: np.ndarray, batch: int, device: torch.device, network: str,
                    precision: str = "fp32") -> tuple[Trainer, bool]:
    """The project's Trainer on `network`: "arch1", or "dcgan" (the reference's networks, D returning logits)."""
    trainer = Trainer(TrainConfig(arch="arch1", batch_size=batch, precision=precision), images, device)
    if network == "dcgan":  # same networks as the reference: only the loop differs
        generator, discriminator = reference_models(logits=True)
        trainer.generator = nn.Sequential(nn.Unflatten(1, (100, 1, 1)), generator).to(device)
        trainer.discriminator = discriminator.to(device)
        lr = trainer.config.lr
        trainer.opt_g, trainer.opt_d = trainer._optimizer(trainer.generator, lr), trainer._optimizer(discriminator, lr)
    return trainer, trainer.try_capture()


def measure(loops: dict[str, Any], steps: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median iterations/s of each loop, timed in blocks of `steps` taken in turn, so drift hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for loop in loops.values():  # warm-up
        for _ in range(3):
            loop.run_step()
    for _ in range(rounds):
        for name, loop in loops.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                loop.run_step()
            if isinstance(loop, Trainer):
                loop.read_stats(steps)  # the one sync a logging window costs
            _sync(device)
            rates[name].append(steps / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block (default 200 CUDA, 2 CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="timed blocks per loop (default 5 CUDA, 8 CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--images", type=int, default=1360, help="random 64×64 images (Flowers-17's count)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16"),
                        help="architecture 1's second precision, against its fp32 (auto: bf16 where the CPU has "
                             "bf16 units)")
    args = parser.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    steps, rounds = args.steps or (200 if cuda else 2), args.rounds or (5 if cuda else 8)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; median of {rounds} blocks of {steps} steps, loops in turn")
    images = np.random.default_rng(0).integers(0, 256, (args.images, 3, 64, 64), dtype=np.uint8)
    precision = precision_for(args.precision, device)
    units = cpu_bf16_units() or "none"
    for batch in args.batch_sizes:
        same, captured = project_trainer(images, batch, device, "dcgan")
        loops = {"reference": ReferenceLoop(images, batch, device), "same": same,
                 "arch1": project_trainer(images, batch, device, "arch1")[0]}
        if precision == "bf16":
            loops["arch1 bf16"] = project_trainer(images, batch, device, "arch1", "bf16")[0]
        rates = measure(loops, steps, rounds, device)
        graph = ", CUDA graph" if captured else ""
        reference = rates["reference"]
        print(f"batch {batch:>3}: reference {reference:8.2f} it/s | project loop{graph}: same DCGAN "
              f"{rates['same']:8.2f} it/s (ratio {rates['same'] / reference:.2f}x), arch1 {rates['arch1']:8.2f} it/s "
              f"(ratio {rates['arch1'] / reference:.2f}x)")
        if precision == "bf16":
            bf16 = rates["arch1 bf16"]
            print(f"batch {batch:>3}: arch1 bf16 {bf16:8.2f} it/s: {bf16 / rates['arch1']:.2f}x its fp32 loop, "
                  f"{bf16 / reference:.2f}x the reference (bf16 units: {units})")
        else:
            print(f"batch {batch:>3}: arch1 bf16 not timed: --precision auto is fp32 on {name} (bf16 units: {units})")

if __name__ == "__main__":
    main()
