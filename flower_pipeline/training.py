"""Training: one DCGAN (architecture 1 or 2) on a tensor cache, with torch and numpy alone.

The images live on the device as uint8 and batches are drawn there. A step
(D update, then G update) makes no host sync: losses and D scores accumulate
in a device tensor read every `log_every` steps, along with the first
iteration whose loss was not finite. On CUDA the whole step is captured once
as a CUDA graph and replayed (falling back to eager if capture fails).
Checkpoints are atomic, and a resumed run reaches the same final state as an
uninterrupted one.

    python -m flower_pipeline.training --cache data/flowers17/cache/<hash> --arch arch1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flower_pipeline.augment import DRAWS, ada_adjust, diff_augment, parse_policies, policy_mask
from flower_pipeline.errors import PipelineError
from flower_pipeline.layout import RunFiles
from flower_pipeline.models import (
    ARCHITECTURES,
    GLOBAL_RNG,
    NOISES,
    Discriminator,
    FlowerGenerator,
    architecture,
    build_models,
    member_weights,
    run_generator,
    sample_latent,
    stack_members,
    to_uint8,
    to_unit_range,
)
from flower_pipeline.plots import curves_png, grid_png
from flower_pipeline.settings import add_flags, check_bounds, given_flags, setting
from flower_pipeline.storage import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    load_weights,
    plain_number,
)
from flower_pipeline.tensor_cache import TensorCache

OPTIMIZERS = ("adam", "rmsprop", "sgd")
PRECISIONS = ("auto", "fp32", "bf16")
FULL_ITERATIONS = 20_000  # the source's training length: the default, and what study profiles scale from
SCORED_BY_DEFAULT = 10  # `flower-pipeline train` scores a snapshot every tenth of its iterations
MAX_SCORED_SNAPSHOTS = 200  # each is a file, a LoggedModel and a scoring: more says nothing a curve of 200 does not
# Settings added after runs were keyed, left out of a run's identity at this value: earlier runs keep their keys.
UNKEYED_AT = {"eval_every": 0}
LECAM_DECAY = 0.99  # the LeCam paper's running-mean decay


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training: the source's experiments are changes of these."""

    arch: str = setting("arch1", "Architecture: " + "; ".join(f"{name} ({a.title})" for name, a in
                                                           ARCHITECTURES.items()) + ".", tuple(ARCHITECTURES))
    iterations: int = setting(FULL_ITERATIONS, "Training steps (the source's 'epochs' are batches). The default "
                                               "20,000 take about 45 s on an H200 but about 2.5 hours on a 2-core "
                                               "CPU at 64 px (docs/benchmarks.md): try 300 there first.",
                              bounds=(1, 10_000_000))
    batch_size: int = setting(16, "Images per step; the source found 16 best.", bounds=(2, 4096))
    optimizer: str = setting("adam", "Optimizer of both networks.", OPTIMIZERS)
    lr: float = setting(2e-4, "Learning rate of both networks.", bounds=(1e-8, 10))
    beta1: float = setting(0.5, "Adam's beta1 (RMSprop and SGD ignore it).", bounds=(0, 1))
    beta2: float = setting(0.999, "Adam's beta2.", bounds=(0, 1))
    real_label: float | None = setting(None, "Target for real images: arch1 0.9 (one-sided smoothing), arch2 1.0.",
                                       bounds=(0, 1))
    fake_label: float | None = setting(None, "Target for generated images: 0.0 by default; 0.2 with 0.8.",
                                       bounds=(0, 1))
    minibatch_discrimination: bool | None = setting(None, "Minibatch discrimination in D: on for arch1 only.")
    minibatch_weight: float = setting(1.0, "Scale of the minibatch features: 2.0 doubles them.", bounds=(0, 100))
    minibatch_kernels: int = setting(100, "Minibatch discrimination kernels.", bounds=(1, 1024))
    minibatch_kernel_dim: int = setting(5, "Size of each minibatch discrimination kernel.", bounds=(1, 256))
    dropout: float | None = setting(None, "Dropout in D: arch2 0.3, arch1 0.", bounds=(0, 0.95))
    latent_dim: int = setting(100, "Size of the latent noise vector.", bounds=(1, 4096))
    latent_noise: str = setting("gaussian", "Latent noise: Gaussian, or uniform on [-1, 1].", NOISES)
    instance_noise: float = setting(0.1, "Initial std of Gaussian noise on D's inputs, 'sharpening' (0: off).",
                                    bounds=(0, 10))
    instance_noise_decay: float = setting(0.5, "Share of training over which that noise decays linearly to 0.",
                                          bounds=(0, 1))
    augment: str = setting("", "DiffAugment policies on everything D sees, comma-separated: color, translation, "
                               "cutout (empty: off, the source's runs).")
    augment_p: float = setting(1.0, "Probability that each augment policy is applied to an image (with ADA: its "
                                    "start).", bounds=(0, 1))
    augment_target: float = setting(0.0, "ADA: adapt augment_p so that D's overfitting signal E[sign(D's logit on "
                                         "real images)] stays at this target (the paper's 0.6; 0: p fixed).",
                                    bounds=(0, 1))
    augment_speed: float = setting(500.0, "ADA: thousands of images over which p can go from 0 to 1 (the paper's "
                                          "500).", bounds=(0.001, 1_000_000))
    g_ema: float = setting(0.0, "Decay of an EMA of G's weights, e.g. 0.999 (0: off), warmed up as min(decay, "
                                "(1 + t) / (10 + t)) at step t; when on, the EMA generator is the one sampled, "
                                "evaluated and registered.", bounds=(0, 0.99999))
    lecam: float = setting(0.0, "Weight of the LeCam regulariser on D's logits (0: off; the paper uses 0.01-0.3).",
                           bounds=(0, 100))
    features: int = setting(64, "Network width.", bounds=(4, 1024))
    seed: int = setting(0, "Same settings and seed give the same result on the same device.", bounds=(0, 2**31 - 1))
    log_every: int = setting(100, "Steps between progress lines and logged metrics.", bounds=(1, 10_000_000))
    sample_every: int = setting(1000, "Steps between fixed-noise sample grids.", bounds=(1, 10_000_000))
    eval_every: int = setting(0, "Steps between scored snapshots (0: off): each generator is kept and scored on "
                                 "a few hundred samples, and the best (by the registry's ranking) is evaluated "
                                 "in full and registered instead of the last (`flower-pipeline train`: a tenth of "
                                 "the iterations).", bounds=(0, 10_000_000))
    checkpoint_seconds: float = setting(60.0, "Seconds between checkpoints, taken at log steps (0: at every one).",
                                        bounds=(0, 86_400))
    cuda_graphs: bool = setting(True, "Replay the training step as one CUDA graph on CUDA.")
    precision: str = setting("auto", "bf16 autocasts matrix work (weights, losses and optimizer state stay fp32); "
                                     "auto: bf16 on a CPU with bf16 matrix units (AMX, AVX512-BF16), else fp32.",
                             PRECISIONS)
    channels_last: bool = setting(True, "NHWC tensors on CUDA and in bf16 on a CPU, where cuDNN and oneDNN skip "
                                        "their layout copies (+12% at batch 16 on CUDA).")
    deterministic: bool = setting(False, "The same numbers whatever the thread count, on the same kernels and fused "
                                         "group (another CPU acts as another seed): one CPU thread, "
                                         "cuDNN's deterministic kernels (slower on an idle many-core CPU).")

    def __post_init__(self) -> None:
        check_bounds(self)

    def resolved(self) -> TrainConfig:
        """This config with the architecture's defaults filled in, validated."""
        defaults = architecture(self.arch).defaults
        if self.optimizer not in OPTIMIZERS:
            raise PipelineError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise PipelineError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.latent_noise not in NOISES:
            raise PipelineError(f"latent noise must be one of {', '.join(NOISES)}, got {self.latent_noise!r}")
        if self.iterations < 1 or self.batch_size < 2:
            raise PipelineError("iterations must be at least 1 and batch size at least 2")
        if not parse_policies(self.augment) and self.augment_target:
            raise PipelineError("augment_target adapts the probability of augment's policies: set augment too")
        if min(self.log_every, self.sample_every) < 1 or not self.checkpoint_seconds >= 0:
            raise PipelineError("log and sample intervals must be at least 1, checkpoint seconds at least 0")
        if len(self.scored_snapshots()) > MAX_SCORED_SNAPSHOTS:
            raise PipelineError(f"eval_every {self.eval_every} scores {len(self.scored_snapshots())} snapshots of "
                                f"{self.iterations} iterations; at most {MAX_SCORED_SNAPSHOTS}: raise eval_every")
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def identity(self) -> dict[str, Any]:
        """The settings as a run's key, folder and checkpoint read them (UNKEYED_AT left out at its value)."""
        return {k: v for k, v in asdict(self).items() if k not in UNKEYED_AT or UNKEYED_AT[k] != v}

    def scored_snapshots(self) -> tuple[int, ...]:
        """The iterations before the last whose generator is kept and scored (eval_every)."""
        return tuple(range(self.eval_every, self.iterations, self.eval_every)) if self.eval_every else ()

    def on(self, device: torch.device | str) -> TrainConfig:
        """Resolved for a device: `precision: auto` becomes the precision it trains in there, so a run's key,
        folder and params name it (a bf16 run is never reused as an fp32 one)."""
        return replace(self.resolved(), precision=precision_for(self.precision, device))

    def networks(self, channels: int, image_size: int,
                 members: list[TrainConfig] | None = None) -> tuple[nn.Module, Discriminator]:
        """The generator and discriminator this (resolved) config describes, freshly initialised; with
        `members`, the members-wide pair of those fused runs (their dropout and minibatch weights each)."""
        members = members or [self]
        return build_models(
            self.arch, channels=channels, image_size=image_size, latent_dim=self.latent_dim,
            features=self.features, dropout=[m.dropout or 0.0 for m in members],
            minibatch_kernels=self.minibatch_kernels if self.minibatch_discrimination else 0,
            minibatch_kernel_dim=self.minibatch_kernel_dim, minibatch_weight=[m.minibatch_weight for m in members],
            members=len(members))

    def instance_noise_std(self, iteration: int) -> float:
        """For the log: the trainer computes the same on the device, per member."""
        decay_steps = max(1.0, self.instance_noise_decay * self.iterations)
        return self.instance_noise * max(0.0, 1.0 - iteration / decay_steps)


@dataclass
class TrainResult:
    out_dir: Path
    iterations: int
    seconds: float
    history: list[dict[str, float]]
    device: str
    cuda_graph: bool
    files: dict[str, Path] = field(default_factory=dict)
    resumed_from: int = 0  # the checkpoint's iteration when an interrupted run was resumed

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


DEFAULT_DEVICE = "auto"  # CUDA when present


def pick_device(device: str = DEFAULT_DEVICE) -> torch.device:
    if device == DEFAULT_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


@contextlib.contextmanager
def deterministic(device: torch.device | str) -> Iterator[None]:
    """The same numbers whatever the machine's thread count: on a CPU one intra-op thread (a reduction split
    over threads adds in another order), on CUDA cuDNN's deterministic kernels."""
    if torch.device(device).type == "cuda":
        saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# The variables that pick another CPU's kernels for torch, oneDNN and MKL (docs/design.md, "What a run is").
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) that still allow its bf16 instructions: AVX512-BF16, then AMX.
BF16_ISAS = {"AVX512_CORE_BF16": "AVX512-BF16", "AVX10_1_512": "AVX512-BF16", "AVX512_CORE_AMX": "AMX",
             "AVX512_CORE_AMX_FP16": "AMX", "AVX10_1_512_AMX": "AMX", "AVX10_1_512_AMX_FP16": "AMX",
             "AVX10_2_512": "AVX512-BF16", "AVX10_2_512_AMX_2": "AMX", "DEFAULT": "AMX", "ALL": "AMX"}


def cpu_bf16_units() -> str:
    """The bf16 matrix units this CPU lends torch ("AMX", "AVX512-BF16"), or "" when it has none or the kernel
    variables cap them (AVX2 kernels emulate bf16, slower than fp32)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return ""  # ATEN_CPU_CAPABILITY=avx2, or no AVX-512 at all
    cap = BF16_ISAS.get(os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper())
    if cap is None:
        return ""  # oneDNN capped below its bf16 instructions
    if cap == "AMX" and torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else ""


def precision_for(precision: str, device: torch.device | str) -> str:
    """The precision a run trains or measures in: `auto` is bf16 on a CPU with bf16 units, fp32 elsewhere
    (on CUDA bf16 gained nothing at batch 16: docs/benchmarks.md); fp32 and bf16 are kept as asked."""
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_bf16_units() else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast of the matrix work when `precision` (concrete) is bf16; no cache, which would outlive a
    CUDA graph's capture."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


def provenance(device: torch.device | str, group: tuple[str, ...] = (), precision: str = "fp32") -> dict[str, str]:
    """What besides the settings and the seed shapes a run's numbers: the device and its kernels, the versions,
    and the runs it trained beside. GAN training is chaotic: another reduction order (other kernels, another
    fused group) acts as another seed, so `deterministic` promises the same numbers only on the same kernels
    with the same group."""
    device = torch.device(device)
    found = {"device": device.type, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "cpu_bf16_units": cpu_bf16_units() or "none", "precision": precision, "torch": torch.__version__,
             "fused_group": " ".join(group) if len(group) > 1 else "solo",
             **{name.lower(): os.environ[name] for name in KERNEL_ENV if os.environ.get(name)}}
    if device.type == "cuda":
        found |= {"gpu": torch.cuda.get_device_name(device), "cudnn": str(torch.backends.cudnn.version())}
    return found


# What may differ between runs trained side by side as one model (the fused trainer); every other setting
# shapes the shared network or the shared loop (architecture, batch, optimizer type, iterations, …), so runs
# that differ in it go to different buckets.
FUSABLE = ("seed", "lr", "real_label", "fake_label", "instance_noise", "instance_noise_decay", "minibatch_weight",
           "dropout", "latent_noise", "augment", "augment_p", "augment_target", "augment_speed", "g_ema", "lecam",
           "eval_every")


def fusion_bucket(config: TrainConfig) -> str:
    """The settings K fused runs share (everything but FUSABLE), as a stable text: equal buckets fuse."""
    shared = {k: v for k, v in asdict(config.resolved()).items() if k not in FUSABLE}
    return json.dumps(shared, sort_keys=True)


def _check_fusable(configs: list[TrainConfig]) -> None:
    first = asdict(configs[0])
    for config in configs[1:]:
        other = asdict(config)
        differing = [k for k in first if k not in FUSABLE and first[k] != other[k]]
        if differing:
            raise PipelineError(f"runs differing in {differing[0]} ({first[differing[0]]!r} against "
                                f"{other[differing[0]]!r}) cannot be trained as one model; only "
                                f"{', '.join(FUSABLE)} may differ")


class RunRandomness:
    """One run's own random numbers, drawn on the device from its own generators in a fixed order each step:
    which images, latent vectors, instance noise, then (from a second generator) dropout and (a third)
    augmentation. A run's numbers so never depend on the runs it is trained beside, and a fused member draws
    what its solo run draws."""

    def __init__(self, config: TrainConfig, device: torch.device):
        self.config = config
        self.noise = torch.Generator(device=device).manual_seed(config.seed)
        self.dropout = torch.Generator(device=device).manual_seed(config.seed + 2**32)  # disjoint from any seed
        self.augment = torch.Generator(device=device).manual_seed(config.seed + 2**33)

    def draw(self, images: int, shape: tuple[int, ...], dropout: list[int],
             augment: bool) -> tuple[torch.Tensor, ...]:
        """(image indices B, latent B×latent, instance noise 3×B×C×H×W, dropout uniforms 3×sum(dropout),
        augmentation uniforms 3×B×DRAWS): three of each for D on real, D on fake, and G's update."""
        cfg, batch, device = self.config, shape[0], self.noise.device
        index = torch.randint(0, images, (batch,), device=device, generator=self.noise)
        z = sample_latent(batch, cfg.latent_dim, cfg.latent_noise, device, self.noise)
        noise = torch.randn((3, *shape), device=device, generator=self.noise)
        uniform = torch.rand((3, sum(dropout)), device=device, generator=self.dropout) if dropout else index[:0]
        augmenting = torch.rand((3, batch, DRAWS), device=device, generator=self.augment) if augment else index[:0]
        return index, z, noise, uniform, augmenting

    def state(self) -> list[torch.Tensor]:
        return [self.noise.get_state(), self.dropout.get_state(), self.augment.get_state()]

    def load_state(self, state: list[torch.Tensor]) -> None:
        for generator, saved in zip((self.noise, self.dropout, self.augment), state, strict=True):
            generator.set_state(saved)


class Trainer:
    """The models, optimizers and device-side state of K runs trained as one members-wide model (K = 1: one run).

    Members share the architecture, batch, image size, optimizer type and loop (`fusion_bucket`); the FUSABLE
    settings are per member: seeds and random numbers (`RunRandomness`), learning rate, label targets, instance
    noise and its decay, minibatch weight, dropout and latent noise kind. Each member's losses are its own (a
    sum over members backpropagates to each member's weights alone), so a member trains as its solo run does.
    """

    def __init__(self, configs: TrainConfig | list[TrainConfig], images: np.ndarray, device: torch.device):
        configs = [c.resolved() for c in (configs if isinstance(configs, list) else [configs])]
        _check_fusable(configs)
        self.configs, self.config, self.members = configs, configs[0], len(configs)
        config, k = self.config, self.members
        self.device = device
        if device.type == "cuda":  # pick the fastest conv kernels once; TF32 for the linear layers
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
        _, channels, size, _ = images.shape
        self.channels, self.image_size = channels, size
        self.data = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8, on the device once
        solos = []
        with GLOBAL_RNG:  # seeded: nothing else draws from torch's generator meanwhile
            for member in configs:  # each member initialised exactly as its solo run: from its own seed
                torch.manual_seed(member.seed)
                solos.append(member.networks(channels, size))
            if k == 1:
                self.generator, self.discriminator = solos[0]
            else:
                wide_g, wide_d = config.networks(channels, size, members=configs)
                self.generator = stack_members(wide_g, [g for g, _ in solos])
                self.discriminator = stack_members(wide_d, [d for _, d in solos])
        self._solo_templates = solos  # each member's own layer names (a member without dropout has fewer layers)
        self.generator.to(device)
        self.discriminator.to(device)
        self.precision = precision_for(config.precision, device)
        nhwc = config.channels_last and (device.type == "cuda" or self.precision == "bf16")
        self.memory_format = torch.channels_last if nhwc else torch.contiguous_format
        self.generator.to(memory_format=self.memory_format)
        self.discriminator.to(memory_format=self.memory_format)
        self.autocast = autocast(device, self.precision)
        lrs = [c.lr for c in configs]
        # Adam's, RMSprop's and SGD's updates are linear in the learning rate: with per-member rates the step
        # runs at rate 1 and each member's change is scaled by its own rate.
        self.member_lr = None if len(set(lrs)) == 1 else torch.tensor(lrs, device=device)
        self.opt_g = self._optimizer(self.generator, 1.0 if self.member_lr is not None else lrs[0])
        self.opt_d = self._optimizer(self.discriminator, 1.0 if self.member_lr is not None else lrs[0])
        self.randomness = [RunRandomness(c, device) for c in configs]
        # The same 64 latent vectors for every sample grid, so the grids show the same samples improving.
        self.fixed_z = [sample_latent(64, c.latent_dim, c.latent_noise, "cpu",
                                      torch.Generator(device="cpu").manual_seed(c.seed + 1)).to(device)
                        for c in configs]
        batch = config.batch_size
        self.real_target = torch.tensor([c.real_label for c in configs], device=device).expand(batch, k)
        self.fake_target = torch.tensor([c.fake_label for c in configs], device=device).expand(batch, k)
        self.g_target = torch.ones(batch, k, device=device)
        # Instance noise std = start × max(0, 1 − step / decay steps), per member, computed on the device.
        self.noise_start = torch.tensor([c.instance_noise for c in configs], device=device)
        self.noise_steps = torch.tensor([max(1.0, c.instance_noise_decay * c.iterations) for c in configs],
                                        device=device)
        self.dropout_sizes = [batch * n for n in self.discriminator.dropout_sizes(size)]
        # DiffAugment, per member: which policies, and how often (a member without any passes its images on).
        self.augmenting = any(c.augment for c in configs)
        self.augment_enabled = policy_mask([parse_policies(c.augment) for c in configs], device)
        self.augment_p = torch.tensor([c.augment_p for c in configs], device=device)
        # ADA: a step moves each member's p by batch / (augment_speed × 1000) towards its target (0: p fixed).
        self.adapting = any(c.augment_target > 0 for c in configs)
        self.ada_target = torch.tensor([c.augment_target for c in configs], device=device)
        self.ada_step = torch.tensor([batch / (c.augment_speed * 1000) if c.augment_target > 0 else 0.0
                                      for c in configs], device=device)
        # LeCam: D's logits are pulled towards running means of the other side's (decay LECAM_DECAY).
        self.lecam = torch.tensor([c.lecam for c in configs], device=device)
        self.lecam_on = any(c.lecam for c in configs)
        self.lecam_means = torch.zeros(2, k, device=device)  # per member: mean logit on real, on generated
        # G's EMA: member k's copy follows its weights with its own decay (decay 0: the weights themselves).
        self.generator_ema: nn.Module | None = None
        if any(c.g_ema > 0 for c in configs):
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            decay = torch.tensor([c.g_ema for c in configs], device=device)
            self.ema_decays = [decay.repeat_interleave(p.shape[0] // k).view(-1, *(1,) * (p.dim() - 1))
                               for p in self.generator.parameters()]
        self.stat_names = ("loss_d", "loss_g", "d_real", "d_fake", *(("augment_p",) if self.adapting else ()))
        self.stats = torch.zeros(k, len(self.stat_names), device=device)  # per member: their sums
        self.first_bad = torch.full((k,), -1, dtype=torch.long, device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        self.iteration = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def _optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """Fused kernels where PyTorch has them (one kernel for all parameters, CPU and CUDA alike);
        capturable on CUDA so the step can live inside a CUDA graph."""
        cfg, cuda = self.config, self.device.type == "cuda"
        if cfg.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr, betas=(cfg.beta1, cfg.beta2), fused=True,
                                    capturable=cuda)
        if cfg.optimizer == "rmsprop":  # no fused RMSprop in PyTorch
            return torch.optim.RMSprop(model.parameters(), lr, capturable=cuda, foreach=True)
        return torch.optim.SGD(model.parameters(), lr, momentum=0.9, fused=True)

    def _wide(self, per_member: torch.Tensor) -> torch.Tensor:
        """K×B×C×… per-member tensors as the model's B×(K·C)×… layout (member k's channels are block k)."""
        if self.members == 1:
            return per_member[0]
        return per_member.transpose(0, 1).reshape(per_member.shape[1], -1, *per_member.shape[3:])

    def _apply(self, optimizer: torch.optim.Optimizer) -> None:
        if self.member_lr is None:
            optimizer.step()
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        optimizer.step()
        with torch.no_grad():  # every parameter's first dimension is K member blocks
            for p, old in zip(params, before, strict=True):
                change = (p - old).reshape(self.members, -1) * self.member_lr.view(-1, 1)
                p.copy_((old.reshape(self.members, -1) + change).reshape(p.shape))

    def _step(self) -> None:
        """One D update and one G update of every member, entirely on the device. Regularizers, each marked
        where it acts: instance noise and DiffAugment/ADA change what D sees (both updates), LeCam is a term of
        D's loss, G's EMA follows G after its update, and ADA's p moves after the step."""
        ###########################
        # (0) This step's random numbers, each member's from its own generators; the real batch as D sees it
        ###########################
        batch, k = self.config.batch_size, self.members
        shape = (batch, self.channels, self.image_size, self.image_size)
        drawn = [r.draw(self.data.shape[0], shape, self.dropout_sizes, self.augmenting) for r in self.randomness]
        index, z, noise, uniform, augment = (torch.stack(parts) for parts in zip(*drawn, strict=True))
        real = to_unit_range(self.data[index])
        if self.augmenting:
            real = self._augment(real, augment[:, 0])
        real = self._wide(real).contiguous(memory_format=self.memory_format)
        std = self.noise_start * torch.clamp(1 - self.step_index / self.noise_steps, min=0)
        std = std.repeat_interleave(self.channels).view(1, -1, 1, 1)
        noises = [self._wide(noise[:, j]) * std for j in range(3)]
        dropout = [self._dropout_noise(uniform[:, j]) for j in range(3)] if self.dropout_sizes else [None] * 3
        ###########################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))   [instance noise, DiffAugment, LeCam]
        ###########################
        with self.autocast:
            fake = self.generator(z.transpose(0, 1).reshape(batch, -1))
            d_real = self._judge(real + noises[0], dropout[0]).view(batch, k)
            d_fake = self._judge(self._seen(fake.detach(), augment, 1) + noises[1], dropout[1]).view(batch, k)
        loss_d = (F.binary_cross_entropy_with_logits(d_real.float(), self.real_target, reduction="none").mean(0)
                  + F.binary_cross_entropy_with_logits(d_fake.float(), self.fake_target, reduction="none").mean(0))
        self.opt_d.zero_grad(set_to_none=True)
        # Each member's loss reaches its own weights only; LeCam (Tseng et al., 2021) bounds how far D's
        # logits run from the other side's running mean.
        (loss_d.sum() + self._lecam(d_real.float(), d_fake.float())).backward()
        self._apply(self.opt_d)

        ###########################
        # (2) Update G network: maximize log(D(G(z)))   [instance noise, DiffAugment; then G's EMA]
        ###########################
        with self.autocast:
            d_gen = self._judge(self._seen(fake, augment, 2) + noises[2], dropout[2]).view(batch, k)
        loss_g = F.binary_cross_entropy_with_logits(d_gen.float(), self.g_target, reduction="none").mean(0)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.sum().backward()
        self._apply(self.opt_g)
        if self.generator_ema is not None:
            with torch.no_grad():
                # Warmed up, so a short run's average is not mostly its random start (0.999^400 = 0.67).
                warm = (1 + self.step_index) / (10 + self.step_index)
                for average, weight, decay in zip(self.generator_ema.parameters(), self.generator.parameters(),
                                                  self.ema_decays, strict=True):
                    average.lerp_(weight, 1 - torch.minimum(decay, warm))
                for average, buffer in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
                    average.copy_(buffer)

        ###########################
        # (3) Statistics, ADA's p from D's logits on the reals it saw, the first non-finite step
        ###########################
        with torch.no_grad():
            self.stats += torch.stack([loss_d, loss_g, torch.sigmoid(d_real.float()).mean(0),
                                       torch.sigmoid(d_fake.float()).mean(0),
                                       *([self.augment_p] if self.adapting else [])], dim=1)
            if self.adapting:  # after this step's augmentations, from D's logits on the reals it saw
                self.augment_p.copy_(ada_adjust(self.augment_p, d_real.float(), self.ada_target, self.ada_step))
            bad = ~torch.isfinite(loss_d + loss_g) & (self.first_bad < 0)
            self.first_bad.copy_(torch.where(bad, self.step_index, self.first_bad))
            self.step_index += 1

    def _augment(self, images: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """K×B×C×H×W images, each member's augmented by its own policies from its own numbers."""
        return diff_augment(images, uniform, self.augment_enabled, self.augment_p)

    def _seen(self, fake: torch.Tensor, augment: torch.Tensor, use: int) -> torch.Tensor:
        """Generated images (the model's layout) as D sees them: augmented when augmenting, differentiably."""
        if not self.augmenting:
            return fake
        batch, k = self.config.batch_size, self.members
        per_member = fake.reshape(batch, k, self.channels, self.image_size, self.image_size).transpose(0, 1)
        return self._wide(self._augment(per_member, augment[:, use])).contiguous(memory_format=self.memory_format)

    def _lecam(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        """The LeCam penalty summed over members (0 when off), and its running means updated, on the device."""
        if not self.lecam_on:
            return d_real.new_zeros(())
        mean_real, mean_fake = self.lecam_means
        penalty = (F.relu(d_real - mean_fake).pow(2).mean(0) + F.relu(mean_real - d_fake).pow(2).mean(0))
        with torch.no_grad():
            self.lecam_means.lerp_(torch.stack([d_real.mean(0), d_fake.mean(0)]), 1 - LECAM_DECAY)
        return (self.lecam * penalty).sum()

    def _judge(self, images: torch.Tensor, dropout: list[torch.Tensor] | None) -> torch.Tensor:
        return self.discriminator(images) if dropout is None else self.discriminator(images, dropout)

    def _dropout_noise(self, uniform: torch.Tensor) -> list[torch.Tensor]:
        """Each dropout layer's uniform numbers in the model's layout, from K×(all layers' numbers)."""
        batch = self.config.batch_size
        parts = uniform.split(self.dropout_sizes, dim=1)
        return [self._wide(part.reshape(self.members, batch, *layer_shape))
                for part, layer_shape in zip(parts, self.discriminator.dropout_shapes(self.image_size), strict=True)]

    def run_step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()
        self.iteration += 1

    def try_capture(self, warmup: int = 3) -> bool:
        """Capture the step as a CUDA graph after a few eager warm-up steps (which count as training)."""
        if self.device.type != "cuda" or not self.config.cuda_graphs:
            return False
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    self.run_step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            for randomness in self.randomness:  # each run's own generators advance on every replay
                graph.register_generator_state(randomness.noise)
                graph.register_generator_state(randomness.dropout)
            with torch.cuda.graph(graph):
                self._step()
            self.graph = graph
            return True
        except RuntimeError as err:  # e.g. an op without graph support: keep training eagerly
            print(f"CUDA graph capture failed, training eagerly: {err}".splitlines()[0], file=sys.stderr)
            self.graph = None
            return False

    def read_stats(self, steps: int) -> tuple[list[dict[str, float]], list[int]]:
        """Each member's averages since the last read (one host sync) and its first non-finite iteration
        (-1: none)."""
        values = (self.stats / max(steps, 1)).tolist()
        first_bad = self.first_bad.tolist()
        self.stats.zero_()
        rows = [dict(zip(self.stat_names, row, strict=True)) for row in values]
        for row, config in zip(rows, self.configs, strict=True):
            if not config.augment_target:  # a solo run's record: p only where it adapts
                row.pop("augment_p", None)
        return rows, first_bad

    def output_generator(self, k: int) -> nn.Module:
        """Member k's generator as sampled, evaluated and registered: its EMA when it keeps one."""
        return self.member_networks(k, ema=self.configs[k].g_ema > 0)[0]

    def member_networks(self, k: int, ema: bool = False) -> tuple[nn.Module, nn.Module]:
        """Member k as a solo generator (or its EMA) and discriminator (the same modules when K = 1)."""
        generator = self.generator_ema if ema else self.generator
        if self.members == 1:
            return generator, self.discriminator
        nets = []
        for wide, solo in zip((generator, self.discriminator), self._solo_templates[k], strict=True):
            solo.load_state_dict(member_weights(wide.state_dict(), list(solo.state_dict()), self.members, k))
            nets.append(solo.to(self.device).train(wide.training))
        return nets[0], nets[1]

    def samples(self, k: int = 0) -> np.ndarray:
        """Member k's images of its fixed grid noise, as N×C×H×W uint8."""
        generator = self.output_generator(k)
        return to_uint8(run_generator(generator, self.fixed_z[k], batch_size=self.config.batch_size))

    def _member_optimizer(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        state = optimizer.state_dict()
        if self.members == 1:
            return state
        return {"state": {i: {name: value.chunk(self.members)[k].clone() if value.dim() else value.clone()
                              for name, value in slot.items()} for i, slot in state["state"].items()},
                "param_groups": [{**group, "lr": self.configs[k].lr} for group in state["param_groups"]]}

    def member_state(self, k: int, history: list[dict[str, float]]) -> dict[str, Any]:
        """Member k's training state in a solo run's form (what final_state.pt holds)."""
        # A copy: member k's solo modules are reloaded by the next member_networks call.
        ema = ({name: t.clone() for name, t in self.member_networks(k, ema=True)[0].state_dict().items()}
               if self.configs[k].g_ema > 0 else None)
        generator, discriminator = self.member_networks(k)
        return {
            "iteration": self.iteration, "config": asdict(self.configs[k]), "history": history,
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "opt_g": self._member_optimizer(self.opt_g, k), "opt_d": self._member_optimizer(self.opt_d, k),
            "first_bad": int(self.first_bad[k]), "step_index": int(self.step_index),
            "rng": self.randomness[k].state(), "lecam_means": self.lecam_means[:, k].clone(),
            "augment_p": self.augment_p[k].clone(),
            **({"generator_ema": ema} if ema is not None else {}),
        }

    def state(self, histories: list[list[dict[str, float]]]) -> dict[str, Any]:
        """Every member's state at once: the checkpoint a killed training (solo or fused) resumes from."""
        return {
            "iteration": self.iteration, "configs": [c.identity() for c in self.configs], "histories": histories,
            "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "first_bad": self.first_bad.clone(), "step_index": int(self.step_index),
            "rng": [r.state() for r in self.randomness], "lecam_means": self.lecam_means.clone(),
            "augment_p": self.augment_p.clone(),
            **({"generator_ema": self.generator_ema.state_dict()} if self.generator_ema is not None else {}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.generator_ema is not None:
            self.generator_ema.load_state_dict(state["generator_ema"])
        self.lecam_means.copy_(state["lecam_means"])
        self.augment_p.copy_(state["augment_p"])
        self.first_bad.copy_(state["first_bad"])
        self.step_index.fill_(state["step_index"])
        self.iteration = state["iteration"]
        for randomness, saved in zip(self.randomness, state["rng"], strict=True):
            randomness.load_state(saved)


LogFn = Callable[[dict[str, float]], None]
SampleFn = Callable[[int, Path], None]


def train(config: TrainConfig, cache: TensorCache, out_dir: Path, *, device: str = DEFAULT_DEVICE,
          on_log: LogFn | None = None, on_sample: SampleFn | None = None, snapshots: tuple[int, ...] = (),
          **hooks: Any) -> TrainResult:
    """Train on the cache's training split; outputs go to out_dir (checkpoint, samples, curves, generator).

    `snapshots` are iterations at which the generator is also kept (generator_<iteration>.pt), so one run
    shows what fewer iterations would have given (the source's 15,000 against 20,000). With `deterministic`
    the thread count cannot change a number. Setting `stop` ends the training before its next step.
    """
    return train_fused([config], cache, [out_dir], out_dir, device=device,
                       on_log=on_log and (lambda _, record: on_log(record)),
                       on_sample=on_sample and (lambda _, it, path: on_sample(it, path)),
                       snapshots=(snapshots,), **hooks)[0]


FusedLogFn = Callable[[int, dict[str, float]], None]  # (member, record)
FusedSampleFn = Callable[[int, int, Path], None]  # (member, iteration, grid)


def train_fused(configs: list[TrainConfig], cache: TensorCache, out_dirs: list[Path], group_dir: Path, *,
                device: str = DEFAULT_DEVICE, **hooks: Any) -> list[TrainResult]:
    """Train K runs of one bucket (`fusion_bucket`) side by side as one model. Member k's outputs go to
    out_dirs[k], in exactly a solo run's form; the group's checkpoint is group_dir/checkpoint.pt, and a killed
    group resumes every member from it. K = 1 with group_dir = out_dirs[0] is a solo training."""
    if len(set(out_dirs)) != len(out_dirs):
        raise PipelineError("every fused run needs an output folder of its own")
    with contextlib.ExitStack() as held:
        for folder in dict.fromkeys([group_dir, *out_dirs]):  # nobody else trains into any of them meanwhile
            held.enter_context(training_lock(folder))
        if any(c.deterministic for c in configs):
            held.enter_context(deterministic(pick_device(device)))
        return _train(configs, cache, out_dirs, group_dir, device=device, **hooks)


@contextlib.contextmanager
def training_lock(out_dir: Path) -> Iterator[None]:
    """One trainer per training folder: a retry never trains into a checkpoint that an orphan of its failed
    run still writes. The kernel drops the lock when its holder dies, however it dies."""
    import fcntl
    import os
    import socket

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".training.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise PipelineError(f"{out_dir} is being trained by {holder}; wait for it to end (or stop it)") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        yield


def _train(
    configs: list[TrainConfig],
    cache: TensorCache,
    out_dirs: list[Path],
    group_dir: Path,
    *,
    device: str = DEFAULT_DEVICE,
    resume: bool = True,
    on_log: FusedLogFn | None = None,
    on_sample: FusedSampleFn | None = None,
    snapshots: tuple[tuple[int, ...], ...] = (),
    on_resume: Callable[[int, list[list[dict[str, float]]]], None] | None = None,
    on_trained: Callable[[list[TrainResult]], None] | None = None,
    stop: threading.Event | None = None,
    labels: tuple[str, ...] = (),
) -> list[TrainResult]:
    torch_device = pick_device(device)
    configs = [c.on(torch_device) for c in configs]
    members = range(len(configs))
    # Kept generators: the ones asked for (a study's shorter trainings) and the scored snapshots (eval_every).
    snapshots = tuple(set(kept) | set(c.scored_snapshots()) for kept, c in
                      zip(snapshots or tuple(() for _ in members), configs, strict=True))
    for out_dir in out_dirs:
        RunFiles(out_dir).samples.mkdir(parents=True, exist_ok=True)
    images = cache.train_images()
    config = configs[0]
    if config.batch_size > len(images):
        raise PipelineError(f"batch size {config.batch_size} is larger than the {len(images)} training images of "
                            f"{cache.variant}; use at most {len(images)}")
    trainer = Trainer(configs, images, torch_device)
    checkpoint = RunFiles(group_dir).checkpoint
    histories: list[list[dict[str, float]]] = [[] for _ in members]
    pending = 0  # steps accumulated in trainer.stats since the last read (checkpoints are taken at reads)
    if resume and checkpoint.is_file():
        state = load_tensors(checkpoint, torch_device)
        if state.get("configs") != [c.identity() for c in configs]:
            raise PipelineError(f"{checkpoint} was written with other settings or by an earlier version; use a new "
                                "output folder or delete the checkpoint to start over")
        trainer.load_state(state)
        histories = state["histories"]
        if on_resume:
            on_resume(trainer.iteration, histories)

    started = window_start = last_checkpoint = time.perf_counter()
    window_iter = resumed_from = trainer.iteration
    if trainer.iteration == 0:
        for k in members:
            _save_grid(trainer, k, out_dirs[k], on_sample)
    captured = trainer.iteration < config.iterations and trainer.try_capture()
    pending += trainer.iteration - window_iter  # warm-up steps taken while capturing
    while trainer.iteration < config.iterations:
        if stop is not None and stop.is_set():  # a flag read, no host sync: the checkpoint stays for a retry
            raise PipelineError(f"training stopped at iteration {trainer.iteration}: its run has ended")
        trainer.run_step()
        pending += 1
        it = trainer.iteration
        if it % config.log_every == 0 or it == config.iterations:
            averages, first_bad = trainer.read_stats(pending)
            diverged = [k for k in members if first_bad[k] >= 0]
            if diverged:
                k = diverged[0]
                who = f"{labels[k]}: " if labels else ""
                raise PipelineError(f"{who}training diverged: a loss became NaN or inf at iteration "
                                    f"{first_bad[k] + 1}")
            now = time.perf_counter()
            rate = (it - window_iter) / max(now - window_start, 1e-9)
            pending, window_start, window_iter = 0, now, it
            records = [{"iteration": it, **averages[k], "instance_noise": configs[k].instance_noise_std(it),
                        "it_per_s": rate, "eta_s": (config.iterations - it) / max(rate, 1e-9)} for k in members]
            for history, record in zip(histories, records, strict=True):
                history.append(record)
            # By time, not steps: a GPU runs hundreds of steps a second, a CPU a few. Before on_log, whose
            # failure (a tracking server down) then loses nothing.
            if it < config.iterations and now - last_checkpoint >= config.checkpoint_seconds:
                state = trainer.state(histories)
                atomic_write(checkpoint, lambda f, state=state: torch.save(state, f))
                last_checkpoint = time.perf_counter()
            if on_log:
                for k in members:
                    on_log(k, records[k])
        if it % config.sample_every == 0 or it == config.iterations:
            for k in members:
                _save_grid(trainer, k, out_dirs[k], on_sample)
        for k in members:
            if it in snapshots[k] and it < config.iterations:
                _save_generator(trainer, k, RunFiles(out_dirs[k]).snapshot(it), cache)

    seconds = time.perf_counter() - started
    if trainer.iteration > resumed_from:  # the end state, kept until on_trained is through: a retry of a run
        state = trainer.state(histories)  # whose tracking failed (MLflow down) resumes here and trains nothing
        atomic_write(checkpoint, lambda f: torch.save(state, f))
    results = []
    for k in members:
        files = _write_outputs(trainer, k, out_dirs[k], histories[k], cache)
        results.append(TrainResult(out_dirs[k], trainer.iteration, seconds, histories[k], str(torch_device),
                                   captured, files, resumed_from))
    if on_trained:
        on_trained(results)
    checkpoint.unlink(missing_ok=True)  # complete: each member's generator.pt and final_state.pt replace it
    return results


def _save_grid(trainer: Trainer, k: int, out_dir: Path, on_sample: FusedSampleFn | None) -> None:
    path = atomic_write_bytes(RunFiles(out_dir).sample_grid(trainer.iteration),
                              grid_png(trainer.samples(k), columns=8))
    if on_sample:
        on_sample(k, trainer.iteration, path)


def _save_generator(trainer: Trainer, k: int, path: Path, cache: TensorCache) -> None:
    cfg, generator = trainer.configs[k], trainer.output_generator(k)
    atomic_write(path, lambda f: torch.save({
        "arch": cfg.arch, "config": asdict(cfg), "state_dict": generator.state_dict(),
        "channels": trainer.channels, "image_size": trainer.image_size,
        "cache_hash": cache.content_hash, "variant": cache.variant, "iteration": trainer.iteration,
    }, f))


def _write_outputs(trainer: Trainer, k: int, out_dir: Path, history: list[dict[str, float]],
                   cache: TensorCache) -> dict[str, Path]:
    cfg, run = trainer.configs[k], RunFiles(out_dir)
    files = {"generator": run.generator, "final_state": run.final_state, "final_grid": run.final_grid,
             "history": run.history}
    _save_generator(trainer, k, files["generator"], cache)
    atomic_write(files["final_state"], lambda f: torch.save(trainer.member_state(k, history), f))
    atomic_write_bytes(files["final_grid"], grid_png(trainer.samples(k), columns=8))
    atomic_write_json(files["history"], history)
    curves = curves_png(history, title=f"{cfg.arch} on {cache.variant}")
    if curves is not None:
        files["curves"] = atomic_write_bytes(run.curves, curves)
    return files


@dataclass
class TrainedModels:
    generator: FlowerGenerator
    discriminator: Discriminator
    config: TrainConfig
    variant: str
    cache_hash: str


def load_trained(out_dir: Path, device: str | torch.device = "cpu", iteration: int | None = None) -> TrainedModels:
    """Both networks of a finished training (generator.pt and final_state.pt), in eval mode.

    `iteration` takes the generator of a snapshot instead (the discriminator stays the final one).
    """
    run = RunFiles(out_dir)
    weights = run.generator if iteration is None else run.snapshot(iteration)
    if not weights.is_file() or not run.final_state.is_file():
        raise PipelineError(f"{out_dir} holds no finished training (no {weights.name} and {run.final_state.name})")
    generator, config, saved = load_generator_file(weights, device)
    _, discriminator = config.networks(saved["channels"], saved["image_size"])
    final = load_tensors(run.final_state, device)
    load_weights(discriminator, final.get("discriminator") if isinstance(final, dict) else None, run.final_state)
    return TrainedModels(generator, discriminator.to(device).eval(), config, saved["variant"], saved["cache_hash"])


def load_generator_file(path: Path, device: str | torch.device = "cpu") -> tuple[FlowerGenerator, TrainConfig, dict]:
    """A generator file (what `_save_generator` writes: weights and plain values, read as tensors only), built
    with the installed package's networks: (generator in eval mode, its config, the file's contents)."""
    saved = load_tensors(path, device)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise PipelineError(f"{path} is not a generator file of this pipeline (no settings in it)")
    # The file's own numbers are held to the settings' ranges before they build a network.
    channels = plain_number(saved, "channels", 1, 3, path)
    image_size = plain_number(saved, "image_size", 16, 512, path)
    try:
        if image_size & (image_size - 1) or channels == 2:
            raise PipelineError(f"{image_size} px × {channels} channels is no variant's shape")
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in saved["config"].items() if k in known})
        net, _ = config.networks(channels, image_size)
    except (KeyError, TypeError, AttributeError, RuntimeError, PipelineError) as err:
        raise PipelineError(f"{path} is not a generator file of this pipeline ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160]})") from None
    load_weights(net, saved.get("state_dict"), path)
    generator = FlowerGenerator(net, latent_dim=config.latent_dim, latent_noise=config.latent_noise,
                                channels=saved["channels"], image_size=saved["image_size"],
                                batch_size=config.batch_size, info={"variant": saved["variant"], "arch": config.arch})
    return generator.to(device).eval(), config, saved


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flower_pipeline.training", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="a tensor cache folder")
    parser.add_argument("--out", type=Path, help="output folder (default ./runs/<arch>-<cache hash>)")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    add_flags(parser, TrainConfig)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    config = TrainConfig(**given_flags(args, TrainConfig))

    def log(record: dict[str, float]) -> None:
        print(f"iter {record['iteration']:>6}/{config.iterations}  {record['it_per_s']:7.1f} it/s  "
              f"loss D {record['loss_d']:.3f} G {record['loss_g']:.3f}  "
              f"D(x) {record['d_real']:.3f} D(G(z)) {record['d_fake']:.3f}  ETA {math.ceil(record['eta_s'])} s",
              flush=True)

    try:
        cache = TensorCache.load(args.cache)
        out = args.out or Path("runs") / f"{config.arch}-{cache.content_hash[:12]}"
        result = train(config, cache, out, device=args.device, resume=not args.no_resume, on_log=log,
                       on_resume=lambda it, _: print(f"resumed from iteration {it}", flush=True))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    print(f"done: {result.iterations} iterations in {result.seconds:.1f} s on {result.device}"
          f"{' (CUDA graph)' if result.cuda_graph else ''}; outputs in {result.out_dir}")
    print(json.dumps({k: round(v, 4) for k, v in result.final.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
