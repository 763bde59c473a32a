"""The two DCGAN architectures compared by the source experiment, in plain PyTorch.

Both take the image side (32, 64 or 128: any power of two from 16) and the
channel count (3 colour, 1 black-and-white), use batch norm, ReLU in the
generator and LeakyReLU(0.2) in the discriminator, a tanh output, N(0, 0.02)
initialisation, and a discriminator that returns logits (D(x) = sigmoid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from flower_pipeline.errors import PipelineError

NOISES = ("gaussian", "uniform")
# How a trained generator's batch norm normalizes when it makes images: "batch" uses each batch's own
# statistics, as in training; "eval" uses the running averages. Batch statistics won on real Flowers-17
# (docs/design.md, "The generator's batch norm"), so grids, evaluation and registered models use them.
BN_MODES = ("batch", "eval")
SAMPLE_BN_MODE = "batch"


def _steps(image_size: int) -> int:
    """Number of ×2 stages between 4×4 and image_size×image_size."""
    steps = math.log2(image_size / 4)
    if image_size < 16 or steps != int(steps):
        raise PipelineError(f"image size must be a power of two of at least 16, got {image_size}")
    return int(steps)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv and linear weights ~ N(0, 0.02), batch norm ~ N(1, 0.02)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator1(nn.Module):
    """Architecture 1: strided transposed convolutions, one layer deeper than architecture 2.

    For a 64×64 image, width w = `features` (64):

    | layer                          | output      |
    |--------------------------------|-------------|
    | z                              | latent×1×1  |
    | ConvT 4×4 s1 → BN → ReLU       | 8w×4×4      |
    | ConvT 4×4 s2 → BN → ReLU  (×3) | w×32×32     |
    | ConvT 3×3 s1 → BN → ReLU       | w×32×32     |  ← the extra layer
    | ConvT 4×4 s2 → tanh            | C×64×64     |
    """

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, features: int = 64):
        super().__init__()
        steps = _steps(image_size)
        width = features * 2 ** (steps - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, width, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(steps - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
                   nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class Generator2(nn.Module):
    """Architecture 2: nearest-neighbour upsampling followed by convolution.

    For a 64×64 image, width w = `features` (64):

    | layer                                   | output      |
    |-----------------------------------------|-------------|
    | z → Linear → BN → ReLU                  | 8w×4×4      |
    | Upsample ×2 → Conv 3×3 → BN → ReLU (×3) | w×32×32     |
    | Upsample ×2 → Conv 3×3 → tanh           | C×64×64     |
    """

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, features: int = 64):
        super().__init__()
        steps = _steps(image_size)
        width = features * 2 ** (steps - 1)
        self.project = nn.Sequential(nn.Linear(latent_dim, width * 16, bias=False))
        layers: list[nn.Module] = [nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(steps - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width // 2, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z.view(z.shape[0], -1)).view(z.shape[0], -1, 4, 4))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) as floats in [-1, 1], what the networks take and make."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Network images in [-1, 1] as uint8 N×C×H×W on the host."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def sample_latent(n: int, latent_dim: int, noise: str, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Latent vectors: standard Gaussian, or uniform on [-1, 1]."""
    if noise == "uniform":
        return torch.rand(n, latent_dim, device=device, generator=generator) * 2 - 1
    return torch.randn(n, latent_dim, device=device, generator=generator)


@torch.no_grad()
def run_generator(net: nn.Module, z: torch.Tensor, bn_mode: str = SAMPLE_BN_MODE, batch_size: int = 16) -> torch.Tensor:
    """Images in [-1, 1] for latent vectors z, with batch norm in `bn_mode` (see BN_MODES).

    "batch" runs z in batches of the training batch size (the last one filled up
    with vectors from the start of z, whose images are dropped), and leaves the
    running averages as they were.
    """
    if bn_mode not in BN_MODES:
        raise PipelineError(f"batch norm mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    was_training = net.training
    if bn_mode == "eval":
        net.eval()
        images = torch.cat([net(chunk) for chunk in z.split(256)])
        net.train(was_training)
        return images
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}
    net.train()
    try:
        images = []
        for chunk in z.split(batch_size):
            if len(chunk) < batch_size <= len(z):
                chunk = torch.cat([chunk, z[: batch_size - len(chunk)]])
            images.append(net(chunk))
        return torch.cat(images)[: len(z)]
    finally:
        net.load_state_dict(saved, strict=False)
        net.train(was_training)


class FlowerGenerator(nn.Module):
    """A trained generator with what it takes to make images: its latent size, noise and batch norm mode.

    `forward(z)` maps latent vectors to images in [-1, 1] (what MLflow's pyfunc
    serves); `generate(n, seed=s)` returns n uint8 N×C×H×W images, the same for
    the same seed whatever the device, because the noise is drawn on the CPU.
    """

    def __init__(self, net: nn.Module, *, latent_dim: int, latent_noise: str, channels: int, image_size: int,
                 batch_size: int, bn_mode: str = SAMPLE_BN_MODE, info: dict[str, str] | None = None):
        super().__init__()
        self.net = net
        self.latent_dim, self.latent_noise = latent_dim, latent_noise
        self.channels, self.image_size = channels, image_size
        self.batch_size, self.bn_mode = batch_size, bn_mode  # batch statistics over batches of the training size
        self.info = dict(info or {})  # variant, architecture, registry name: for people reading a loaded model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return run_generator(self.net, z, self.bn_mode, self.batch_size)

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0) -> np.ndarray:
        if n < 1:
            raise PipelineError(f"the number of images must be at least 1, got {n}")
        device = next(self.parameters()).device
        z = sample_latent(n, self.latent_dim, self.latent_noise, "cpu", torch.Generator().manual_seed(seed))
        return to_uint8(self(z.to(device)))


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016: lets D see how alike the samples of a batch are.

    Features f(x) ∈ R^A are multiplied by a learned T ∈ R^(A×B×C) into B rows of
    length C; each row is compared with the same row of every other sample by
    exp(−L1), summed over the batch, and the B results, times `weight`, are
    concatenated to f(x). A collapsed generator makes these sums large.
    """

    def __init__(self, in_features: int, kernels: int = 100, kernel_dim: int = 5, weight: float = 1.0):
        super().__init__()
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * 0.1)
        self.kernels, self.kernel_dim, self.weight = kernels, kernel_dim, weight

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        m = (f @ self.T).view(-1, self.kernels, self.kernel_dim)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(dim=3)  # N×N×B
        o = torch.exp(-l1).sum(dim=1) - 1.0  # minus each sample's match with itself
        return torch.cat([f, self.weight * o], dim=1)


class Discriminator(nn.Module):
    """Strided-convolution discriminator returning one logit per image.

    For a 64×64 image, width w = `features` (64):

    | layer                                        | output   |
    |----------------------------------------------|----------|
    | Conv 4×4 s2 → LeakyReLU (→ Dropout)          | w×32×32  |
    | Conv 4×4 s2 → BN → LeakyReLU (→ Dropout) (×3)| 8w×4×4   |
    | flatten                                      | 128w     |
    | MinibatchDiscrimination (architecture 1)     | 128w + B |
    | Linear                                       | 1 logit  |
    """

    def __init__(self, channels: int = 3, image_size: int = 64, features: int = 64, dropout: float = 0.0,
                 minibatch_kernels: int = 0, minibatch_kernel_dim: int = 5, minibatch_weight: float = 1.0):
        super().__init__()
        steps = _steps(image_size)

        def drop() -> list[nn.Module]:
            return [nn.Dropout(dropout)] if dropout > 0 else []

        layers: list[nn.Module] = [nn.Conv2d(channels, features, 4, 2, 1), nn.LeakyReLU(0.2, True), *drop()]
        width = features
        for _ in range(steps - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True), *drop()]
            width *= 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = width * 16
        self.minibatch = (MinibatchDiscrimination(flat, minibatch_kernels, minibatch_kernel_dim, minibatch_weight)
                          if minibatch_kernels > 0 else nn.Identity())
        self.classify = nn.Linear(flat + max(minibatch_kernels, 0), 1)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.minibatch(self.features(x))).view(-1)


@dataclass(frozen=True)
class Architecture:
    """One architecture: its generator, and the training defaults that make it what the source described.
    `defaults` fill the TrainConfig settings left unset (None)."""

    title: str
    generator: type[nn.Module]
    defaults: dict[str, Any]


# The architecture table: a new architecture is a generator class above and a row here.
ARCHITECTURES: dict[str, Architecture] = {
    "arch1": Architecture("strided transposed convolutions, minibatch discrimination, one-sided smoothing",
                          Generator1, {"real_label": 0.9, "fake_label": 0.0, "minibatch_discrimination": True,
                                       "dropout": 0.0}),
    "arch2": Architecture("upsampling + convolution, dropout", Generator2,
                          {"real_label": 1.0, "fake_label": 0.0, "minibatch_discrimination": False, "dropout": 0.3}),
}


def architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise PipelineError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_models(arch: str, *, channels: int, image_size: int, latent_dim: int = 100, features: int = 64,
                 dropout: float = 0.0, minibatch_kernels: int = 0, minibatch_kernel_dim: int = 5,
                 minibatch_weight: float = 1.0) -> tuple[nn.Module, Discriminator]:
    generator = architecture(arch).generator(latent_dim, channels, image_size, features)
    discriminator = Discriminator(channels, image_size, features, dropout,
                                  minibatch_kernels, minibatch_kernel_dim, minibatch_weight)
    return generator, discriminator
