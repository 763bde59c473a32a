"""Training-loop benchmark: the project's loop vs a plain reference DCGAN loop, in one process.

Reference: a CPU DataLoader over the same images, a host→device copy per step,
`nn.BCELoss` on sigmoid outputs, the standard 64×64 DCGAN (PyTorch's example)
and Adam. Project: architecture 1 (deeper generator, minibatch discrimination)
with data on the device, no per-step sync and, on CUDA, a captured CUDA graph.
Prints iterations/s of both and the ratio at each batch size, plus the device.

    python benchmarks/train.py [--device auto] [--iterations 200] [--batch-sizes 16 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flower_pipeline.training import TrainConfig, Trainer, pick_device


def reference_models(nz: int = 100, ngf: int = 64, ndf: int = 64) -> tuple[nn.Module, nn.Module]:
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
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())
    return generator, discriminator


def reference_loop(images: np.ndarray, batch: int, iterations: int, device: torch.device) -> float:
    """Iterations per second of the plain loop (the first batches are warm-up)."""
    data = torch.from_numpy(images).float().div(127.5).sub(1.0)
    loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True)
    generator, discriminator = (m.to(device) for m in reference_models())
    opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    criterion = nn.BCELoss()
    done, warmup, start = 0, 5, 0.0
    while done < iterations + warmup:
        for (real,) in loader:
            if done == warmup:
                _sync(device)
                start = time.perf_counter()
            real = real.to(device)
            z = torch.randn(batch, 100, 1, 1, device=device)
            fake = generator(z)
            opt_d.zero_grad()
            loss_d = (criterion(discriminator(real).view(-1), torch.ones(batch, device=device))
                      + criterion(discriminator(fake.detach()).view(-1), torch.zeros(batch, device=device)))
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            loss_g = criterion(discriminator(fake).view(-1), torch.ones(batch, device=device))
            loss_g.backward()
            opt_g.step()
            loss_d.item(), loss_g.item()  # the usual per-step logging sync
            done += 1
            if done == iterations + warmup:
                break
    _sync(device)
    return iterations / (time.perf_counter() - start)


def project_loop(images: np.ndarray, batch: int, iterations: int, device: torch.device) -> tuple[float, bool]:
    trainer = Trainer(TrainConfig(arch="arch1", batch_size=batch, iterations=iterations + 10), images, device)
    captured = trainer.try_capture()
    for _ in range(5):
        trainer.run_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.run_step()
    trainer.read_stats(iterations)  # the one sync a logging window costs
    return iterations / (time.perf_counter() - start), captured


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=None, help="default: 1000 on CUDA, 20 on CPU")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--images", type=int, default=1360, help="random 64×64 images (Flowers-17's count)")
    args = parser.parse_args()
    device = pick_device(args.device)
    iterations = args.iterations or (1000 if device.type == "cuda" else 20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {iterations} timed iterations each")
    images = np.random.default_rng(0).integers(0, 256, (args.images, 3, 64, 64), dtype=np.uint8)
    for batch in args.batch_sizes:
        reference = reference_loop(images, batch, iterations, device)
        project, captured = project_loop(images, batch, iterations, device)
        label = "arch1, CUDA graph" if captured else "arch1"
        print(f"batch {batch:>3}: reference {reference:8.1f} it/s | project ({label}) {project:8.1f} it/s | "
              f"ratio {project / reference:.2f}x")


if __name__ == "__main__":
    main()
