"""The two DCGAN architectures compared by the source experiment, in plain PyTorch.

Both take the image side (32, 64 or 128: any power of two from 16) and the
channel count (3 colour, 1 black-and-white), use batch norm, ReLU in the
generator and LeakyReLU(0.2) in the discriminator, a tanh output, N(0, 0.02)
initialisation, and a discriminator that returns logits (D(x) = sigmoid).

Every network also comes `members` wide: K runs side by side as one network, for the fused trainer. Each
layer's channels are K member-major blocks, convolutions are grouped (groups=K), batch norm keeps each
member's statistics (its channels are its own), and minibatch discrimination compares images within a member
only. With members=1 a network is exactly the plain one (same layers, same state-dict keys), so the
architecture is written once; `stack_members` and `member_weights` move weights between the two forms.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flower_pipeline.errors import PipelineError

# torch's one global generator, which every network's construction draws from: networks built in threads side
# by side (a study's groups on a CPU) take turns, so a seeded initialisation draws exactly as it would alone.
GLOBAL_RNG = threading.RLock()

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

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, features: int = 64,
                 members: int = 1):
        super().__init__()
        steps, k = _steps(image_size), members
        width = features * 2 ** (steps - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(k * latent_dim, k * width, 4, 1, 0, bias=False, groups=k),
                                   nn.BatchNorm2d(k * width), nn.ReLU(True)]
        for _ in range(steps - 1):
            layers += [nn.ConvTranspose2d(k * width, k * (width // 2), 4, 2, 1, bias=False, groups=k),
                       nn.BatchNorm2d(k * (width // 2)), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(k * width, k * width, 3, 1, 1, bias=False, groups=k),
                   nn.BatchNorm2d(k * width), nn.ReLU(True),
                   nn.ConvTranspose2d(k * width, k * channels, 4, 2, 1, groups=k), nn.Tanh()]
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

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, features: int = 64,
                 members: int = 1):
        super().__init__()
        steps, k = _steps(image_size), members
        width = features * 2 ** (steps - 1)
        self.project = nn.Sequential(MemberLinear(latent_dim, width * 16, bias=False, members=k))
        layers: list[nn.Module] = [nn.BatchNorm2d(k * width), nn.ReLU(True)]
        for _ in range(steps - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(k * width, k * (width // 2), 3, 1, 1, bias=False, groups=k),
                       nn.BatchNorm2d(k * (width // 2)), nn.ReLU(True)]
            width //= 2
        layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv2d(k * width, k * channels, 3, 1, 1, groups=k), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z.reshape(z.shape[0], -1)).view(z.shape[0], -1, 4, 4))


class MemberLinear(nn.Linear):
    """K linear layers side by side on K member-major blocks of features: (N, K·in) → (N, K·out). With one
    member it is nn.Linear itself (the same weight and bias shapes, the same call)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, members: int = 1):
        super().__init__(in_features, members * out_features, bias)
        self.members, self.member_out = members, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.members == 1:
            return F.linear(x, self.weight, self.bias)
        k, n = self.members, x.shape[0]
        out = torch.bmm(x.view(n, k, self.in_features).transpose(0, 1).contiguous(),
                        self.weight.view(k, self.member_out, self.in_features).transpose(1, 2))  # K×N×out
        out = out.transpose(0, 1).reshape(n, k * self.member_out)
        return out if self.bias is None else out + self.bias


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

    With K members, f is (N, K·A) and each member's rows are compared with its own only.
    """

    def __init__(self, in_features: int, kernels: int = 100, kernel_dim: int = 5,
                 weight: float | Sequence[float] = 1.0, members: int = 1):
        super().__init__()
        self.T = nn.Parameter(torch.randn(members * in_features, kernels * kernel_dim) * 0.1)
        self.in_features, self.kernels, self.kernel_dim, self.members = in_features, kernels, kernel_dim, members
        weights = _per_member(weight, members, "minibatch weight")
        self.register_buffer("weight", torch.tensor(weights).view(1, members, 1), persistent=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        n, k = f.shape[0], self.members
        if k == 1:
            m = (f @ self.T).view(n, 1, self.kernels, self.kernel_dim)
        else:  # each member's features times its own T: a batched product over members
            by_member = f.view(n, k, self.in_features).transpose(0, 1).contiguous()  # K×N×A
            m = torch.bmm(by_member, self.T.view(k, self.in_features, -1)).transpose(0, 1).reshape(
                n, k, self.kernels, self.kernel_dim)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(dim=4)  # N×N×K×B: within a member only
        o = torch.exp(-l1).sum(dim=1) - 1.0  # minus each sample's match with itself
        return torch.cat([f.view(n, k, self.in_features), self.weight * o], dim=2).view(n, -1)


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

    def __init__(self, channels: int = 3, image_size: int = 64, features: int = 64,
                 dropout: float | Sequence[float] = 0.0, minibatch_kernels: int = 0, minibatch_kernel_dim: int = 5,
                 minibatch_weight: float | Sequence[float] = 1.0, members: int = 1):
        super().__init__()
        steps, k = _steps(image_size), members
        rates = _per_member(dropout, members, "dropout")

        def drop(width: int) -> list[nn.Module]:
            return [MemberDropout(rates, width)] if max(rates) > 0 else []

        layers: list[nn.Module] = [nn.Conv2d(k * channels, k * features, 4, 2, 1, groups=k),
                                   nn.LeakyReLU(0.2, True), *drop(features)]
        width = features
        for _ in range(steps - 1):
            layers += [nn.Conv2d(k * width, k * width * 2, 4, 2, 1, bias=False, groups=k),
                       nn.BatchNorm2d(k * width * 2), nn.LeakyReLU(0.2, True), *drop(width * 2)]
            width *= 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = width * 16
        self.minibatch = (MinibatchDiscrimination(flat, minibatch_kernels, minibatch_kernel_dim, minibatch_weight,
                                                  members) if minibatch_kernels > 0 else nn.Identity())
        self.classify = MemberLinear(flat + max(minibatch_kernels, 0), 1, members=members)
        self.members = members
        self.apply(init_weights)

    def dropout_shapes(self, image_size: int) -> list[tuple[int, int, int]]:
        """Each dropout layer's input for one member and one image: (channels, height, width)."""
        shapes, side = [], image_size
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                side //= 2
            elif isinstance(layer, MemberDropout):
                shapes.append((layer.width, side, side))
        return shapes

    def dropout_sizes(self, image_size: int) -> list[int]:
        return [c * h * w for c, h, w in self.dropout_shapes(image_size)]

    def forward(self, x: torch.Tensor, dropout_noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits: (N,) with one member, (N, K) with K. `dropout_noise` holds uniform [0, 1) numbers shaped
        like each dropout layer's input, drawn by the caller from each run's own generator (training); without
        it dropout draws from torch's global generator."""
        noise = iter(dropout_noise or ())
        for layer in self.features:
            x = layer(x, next(noise, None)) if isinstance(layer, MemberDropout) else layer(x)
        logits = self.classify(self.minibatch(x))
        return logits.view(-1) if self.members == 1 else logits


class MemberDropout(nn.Dropout):
    """Dropout with a rate per member over K member-major channel blocks; from uniform noise the caller gives,
    so each run's masks come from its own generator. A member with rate 0 is passed through unchanged."""

    def __init__(self, rates: Sequence[float], width: int):
        super().__init__(max(rates))
        keep = torch.tensor([1.0 - r for r in rates]).repeat_interleave(width)
        self.register_buffer("keep", keep.view(1, -1, 1, 1), persistent=False)
        self.rates, self.width = tuple(rates), width

    def forward(self, x: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return x
        if uniform is None:
            uniform = torch.rand_like(x)
        return x * ((uniform < self.keep) / self.keep)

    def extra_repr(self) -> str:
        return f"rates={self.rates}, width={self.width}"


def _per_member(value: float | Sequence[float], members: int, what: str) -> tuple[float, ...]:
    values = (float(value),) * members if isinstance(value, int | float) else tuple(map(float, value))
    if len(values) != members:
        raise PipelineError(f"{what}: {len(values)} values for {members} members")
    return values


def stack_members(wide: nn.Module, solos: Sequence[nn.Module]) -> nn.Module:
    """Load K solo networks' weights into their members-wide network (member k's channels are block k). The
    solo state dicts list the same tensors in the same order; keys may differ (a solo network without dropout
    numbers its layers without the dropout layers)."""
    wide_keys = list(wide.state_dict())
    stacked = [torch.cat(tensors) if tensors[0].dim() else tensors[0]
               for tensors in zip(*(s.state_dict().values() for s in solos), strict=True)]
    wide.load_state_dict(dict(zip(wide_keys, stacked, strict=True)))
    return wide


def member_weights(wide_state: dict[str, torch.Tensor], solo_keys: Sequence[str], members: int,
                 k: int) -> dict[str, torch.Tensor]:
    """Member k's tensors of a members-wide state dict, under a solo network's keys (a scalar, batch norm's
    step count, is shared)."""
    return {key: value.chunk(members)[k].clone() if value.dim() else value.clone()
            for key, value in zip(solo_keys, wide_state.values(), strict=True)}



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
                 dropout: float | Sequence[float] = 0.0, minibatch_kernels: int = 0, minibatch_kernel_dim: int = 5,
                 minibatch_weight: float | Sequence[float] = 1.0, members: int = 1) -> tuple[nn.Module, Discriminator]:
    """Both networks, `members` wide (per-member dropout and minibatch weight as sequences)."""
    with GLOBAL_RNG:  # their random initialisation
        generator = architecture(arch).generator(latent_dim, channels, image_size, features, members)
        discriminator = Discriminator(channels, image_size, features, dropout, minibatch_kernels, minibatch_kernel_dim,
                                      minibatch_weight, members)
    return generator, discriminator
