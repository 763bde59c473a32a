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
import json
import math
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

from flower_pipeline.errors import PipelineError
from flower_pipeline.models import (
    ARCHITECTURES,
    NOISES,
    Discriminator,
    FlowerGenerator,
    architecture,
    build_models,
    run_generator,
    sample_latent,
    to_uint8,
    to_unit_range,
)
from flower_pipeline.plots import curves_png, grid_png
from flower_pipeline.settings import add_flags, check_bounds, given_flags, setting
from flower_pipeline.storage import atomic_write, atomic_write_bytes, atomic_write_json, load_tensors
from flower_pipeline.tensor_cache import TensorCache

OPTIMIZERS = ("adam", "rmsprop", "sgd")
PRECISIONS = ("fp32", "bf16")
FULL_ITERATIONS = 20_000  # the source's training length: the default, and what study profiles scale from


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training: the source's experiments are changes of these."""

    arch: str = setting("arch1", "Architecture: " + "; ".join(f"{name} ({a.title})" for name, a in
                                                           ARCHITECTURES.items()) + ".", tuple(ARCHITECTURES))
    iterations: int = setting(FULL_ITERATIONS, "Training steps (the source's 'epochs' are batches).",
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
    features: int = setting(64, "Network width.", bounds=(4, 1024))
    seed: int = setting(0, "Same settings and seed give the same result on the same device.", bounds=(0, 2**31 - 1))
    log_every: int = setting(100, "Steps between progress lines and logged metrics.", bounds=(1, 10_000_000))
    sample_every: int = setting(1000, "Steps between fixed-noise sample grids.", bounds=(1, 10_000_000))
    checkpoint_seconds: float = setting(60.0, "Seconds between checkpoints, taken at log steps (0: at every one).",
                                        bounds=(0, 86_400))
    cuda_graphs: bool = setting(True, "Replay the training step as one CUDA graph on CUDA.")
    precision: str = setting("fp32", "bf16 autocasts matrix work on CUDA (weights stay fp32).", PRECISIONS)
    channels_last: bool = setting(True, "NHWC tensors on CUDA: cuDNN then skips its layout copies (+12% at batch 16).")
    deterministic: bool = setting(False, "The same numbers whatever the machine's thread count: one CPU thread, "
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
        if min(self.log_every, self.sample_every) < 1 or not self.checkpoint_seconds >= 0:
            raise PipelineError("log and sample intervals must be at least 1, checkpoint seconds at least 0")
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def networks(self, channels: int, image_size: int) -> tuple[nn.Module, Discriminator]:
        """The generator and discriminator this (resolved) config describes, freshly initialised."""
        return build_models(
            self.arch, channels=channels, image_size=image_size, latent_dim=self.latent_dim,
            features=self.features, dropout=self.dropout or 0.0,
            minibatch_kernels=self.minibatch_kernels if self.minibatch_discrimination else 0,
            minibatch_kernel_dim=self.minibatch_kernel_dim, minibatch_weight=self.minibatch_weight)

    def instance_noise_std(self, iteration: int) -> float:
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


class Trainer:
    """The models, optimizers and device-side state of one training run."""

    def __init__(self, config: TrainConfig, images: np.ndarray, device: torch.device):
        self.config = config = config.resolved()
        self.device = device
        if device.type == "cuda":  # pick the fastest conv kernels once; TF32 for the linear layers
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
        torch.manual_seed(config.seed)
        _, channels, size, _ = images.shape
        self.data = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8, on the device once
        self.generator, self.discriminator = (m.to(device) for m in config.networks(channels, size))
        cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if config.channels_last and cuda else torch.contiguous_format
        self.generator.to(memory_format=self.memory_format)
        self.discriminator.to(memory_format=self.memory_format)
        # No autocast cache: cached casts would outlive a CUDA graph's capture.
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=config.precision == "bf16" and cuda,
                                       cache_enabled=False)
        self.opt_g = self._optimizer(self.generator)
        self.opt_d = self._optimizer(self.discriminator)
        fixed = torch.Generator(device="cpu").manual_seed(config.seed + 1)
        # The same 64 latent vectors for every sample grid, so the grids show the same samples improving.
        self.fixed_z = sample_latent(64, config.latent_dim, config.latent_noise, "cpu", fixed).to(device)
        batch = config.batch_size
        self.real_target = torch.full((batch,), config.real_label, device=device)
        self.fake_target = torch.full((batch,), config.fake_label, device=device)
        self.g_target = torch.ones(batch, device=device)
        self.noise_std = torch.zeros((), device=device)  # set before each step: no recapture needed
        self.stats = torch.zeros(4, device=device)  # loss_d, loss_g, D(x), D(G(z)) sums
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        self.iteration = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Fused kernels where PyTorch has them (one kernel for all parameters, CPU and CUDA alike);
        capturable on CUDA so the step can live inside a CUDA graph."""
        cfg, cuda = self.config, self.device.type == "cuda"
        if cfg.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True,
                                    capturable=cuda)
        if cfg.optimizer == "rmsprop":  # no fused RMSprop in PyTorch
            return torch.optim.RMSprop(model.parameters(), cfg.lr, capturable=cuda, foreach=True)
        return torch.optim.SGD(model.parameters(), cfg.lr, momentum=0.9, fused=True)

    def _step(self) -> None:
        """One D update and one G update, entirely on the device."""
        cfg, batch = self.config, self.config.batch_size
        index = torch.randint(0, self.data.shape[0], (batch,), device=self.device)
        real = to_unit_range(self.data[index]).contiguous(memory_format=self.memory_format)
        with self.autocast:
            fake = self.generator(sample_latent(batch, cfg.latent_dim, cfg.latent_noise, self.device))
            d_real = self.discriminator(real + self.noise_std * torch.randn_like(real))
            d_fake = self.discriminator(fake.detach() + self.noise_std * torch.randn_like(fake))
        loss_d = (F.binary_cross_entropy_with_logits(d_real.float(), self.real_target)
                  + F.binary_cross_entropy_with_logits(d_fake.float(), self.fake_target))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        with self.autocast:
            d_gen = self.discriminator(fake + self.noise_std * torch.randn_like(fake))
        loss_g = F.binary_cross_entropy_with_logits(d_gen.float(), self.g_target)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        with torch.no_grad():
            self.stats += torch.stack([loss_d, loss_g, torch.sigmoid(d_real.float()).mean(),
                                       torch.sigmoid(d_fake.float()).mean()])
            bad = ~torch.isfinite(loss_d + loss_g) & (self.first_bad < 0)
            self.first_bad.copy_(torch.where(bad, self.step_index, self.first_bad))
            self.step_index += 1

    def run_step(self) -> None:
        self.noise_std.fill_(self.config.instance_noise_std(self.iteration))
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
            with torch.cuda.graph(graph):
                self._step()
            self.graph = graph
            return True
        except RuntimeError as err:  # e.g. an op without graph support: keep training eagerly
            print(f"CUDA graph capture failed, training eagerly: {err}".splitlines()[0], file=sys.stderr)
            self.graph = None
            return False

    def read_stats(self, steps: int) -> tuple[dict[str, float], int]:
        """Averages since the last read (one host sync) and the first non-finite iteration (-1: none)."""
        values = (self.stats / max(steps, 1)).tolist()
        first_bad = int(self.first_bad)
        self.stats.zero_()
        return dict(zip(("loss_d", "loss_g", "d_real", "d_fake"), values, strict=True)), first_bad

    def samples(self) -> np.ndarray:
        """The generator's images of the fixed grid noise, as N×C×H×W uint8."""
        return to_uint8(run_generator(self.generator, self.fixed_z, batch_size=self.config.batch_size))

    def state(self, history: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "iteration": self.iteration, "config": asdict(self.config), "history": history,
            "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "first_bad": int(self.first_bad), "step_index": int(self.step_index),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.first_bad.fill_(state["first_bad"])
        self.step_index.fill_(state["step_index"])
        self.iteration = state["iteration"]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng_cuda"])


LogFn = Callable[[dict[str, float]], None]
SampleFn = Callable[[int, Path], None]


def train(config: TrainConfig, cache: TensorCache, out_dir: Path, *, device: str = DEFAULT_DEVICE,
          **hooks: Any) -> TrainResult:
    """Train on the cache's training split; outputs go to out_dir (checkpoint, samples, curves, generator).

    `snapshots` are iterations at which the generator is also kept (generator_<iteration>.pt), so one run
    shows what fewer iterations would have given (the source's 15,000 against 20,000). With `deterministic`
    the thread count cannot change a number. Setting `stop` ends the training before its next step.
    """
    with training_lock(out_dir), deterministic(pick_device(device)) if config.deterministic \
            else contextlib.nullcontext():
        return _train(config, cache, out_dir, device=device, **hooks)


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
    config: TrainConfig,
    cache: TensorCache,
    out_dir: Path,
    *,
    device: str = DEFAULT_DEVICE,
    resume: bool = True,
    on_log: LogFn | None = None,
    on_sample: SampleFn | None = None,
    snapshots: tuple[int, ...] = (),
    on_resume: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> TrainResult:
    config = config.resolved()
    torch_device = pick_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "samples").mkdir(exist_ok=True)
    images = cache.train_images()
    if config.batch_size > len(images):
        raise PipelineError(f"batch size {config.batch_size} is larger than the {len(images)} training images of "
                            f"{cache.variant}; use at most {len(images)}")
    trainer = Trainer(config, images, torch_device)
    checkpoint = out_dir / "checkpoint.pt"
    history: list[dict[str, float]] = []
    pending = 0  # steps accumulated in trainer.stats since the last read (checkpoints are taken at reads)
    if resume and checkpoint.is_file():
        state = load_tensors(checkpoint, torch_device)
        if state["config"] != asdict(config):
            raise PipelineError(f"{checkpoint} was written with another config; use a new output folder "
                                "or delete the checkpoint to start over")
        trainer.load_state(state)
        history = state["history"]
        if on_resume:
            on_resume(trainer.iteration)

    started = window_start = last_checkpoint = time.perf_counter()
    window_iter = resumed_from = trainer.iteration
    if trainer.iteration == 0:
        _save_grid(trainer, out_dir, on_sample)
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
            if first_bad >= 0:
                raise PipelineError(f"training diverged: a loss became NaN or inf at iteration {first_bad + 1}")
            now = time.perf_counter()
            rate = (it - window_iter) / max(now - window_start, 1e-9)
            record = {"iteration": it, **averages, "instance_noise": config.instance_noise_std(it),
                      "it_per_s": rate, "eta_s": (config.iterations - it) / max(rate, 1e-9)}
            history.append(record)
            pending, window_start, window_iter = 0, now, it
            # By time, not steps: a GPU runs hundreds of steps a second, a CPU a few. Before on_log, whose
            # failure (a tracking server down) then loses nothing.
            if it < config.iterations and now - last_checkpoint >= config.checkpoint_seconds:
                state = trainer.state(history)
                atomic_write(checkpoint, lambda f, state=state: torch.save(state, f))
                last_checkpoint = time.perf_counter()
            if on_log:
                on_log(record)
        if it % config.sample_every == 0 or it == config.iterations:
            _save_grid(trainer, out_dir, on_sample)
        if it in snapshots and it < config.iterations:
            _save_generator(trainer, out_dir / f"generator_{it:06d}.pt", cache)

    seconds = time.perf_counter() - started
    files = _write_outputs(trainer, out_dir, history, cache)
    checkpoint.unlink(missing_ok=True)  # the run is complete: generator.pt and final_state.pt replace it
    return TrainResult(out_dir, trainer.iteration, seconds, history, str(torch_device), captured, files,
                       resumed_from)


def _save_grid(trainer: Trainer, out_dir: Path, on_sample: SampleFn | None) -> None:
    path = atomic_write_bytes(out_dir / "samples" / f"iter_{trainer.iteration:06d}.png",
                              grid_png(trainer.samples(), columns=8))
    if on_sample:
        on_sample(trainer.iteration, path)


def _save_generator(trainer: Trainer, path: Path, cache: TensorCache) -> None:
    cfg = trainer.config
    atomic_write(path, lambda f: torch.save({
        "arch": cfg.arch, "config": asdict(cfg), "state_dict": trainer.generator.state_dict(),
        "channels": int(trainer.data.shape[1]), "image_size": int(trainer.data.shape[2]),
        "cache_hash": cache.content_hash, "variant": cache.variant, "iteration": trainer.iteration,
    }, f))


def _write_outputs(trainer: Trainer, out_dir: Path, history: list[dict[str, float]],
                   cache: TensorCache) -> dict[str, Path]:
    cfg = trainer.config
    files = {
        "generator": out_dir / "generator.pt",
        "final_state": out_dir / "final_state.pt",
        "final_grid": out_dir / "final_grid.png",
        "history": out_dir / "history.json",
    }
    _save_generator(trainer, files["generator"], cache)
    atomic_write(files["final_state"], lambda f: torch.save(trainer.state(history), f))
    atomic_write_bytes(files["final_grid"], grid_png(trainer.samples(), columns=8))
    atomic_write_json(files["history"], history)
    curves = curves_png(history, title=f"{cfg.arch} on {cache.variant}")
    if curves is not None:
        files["curves"] = atomic_write_bytes(out_dir / "curves.png", curves)
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
    name = "generator.pt" if iteration is None else f"generator_{iteration:06d}.pt"
    if not (out_dir / name).is_file() or not (out_dir / "final_state.pt").is_file():
        raise PipelineError(f"{out_dir} holds no finished training (no {name} and final_state.pt)")
    generator, config, saved = load_generator_file(out_dir / name, device)
    _, discriminator = config.networks(saved["channels"], saved["image_size"])
    discriminator.load_state_dict(load_tensors(out_dir / "final_state.pt", device)["discriminator"])
    return TrainedModels(generator, discriminator.to(device).eval(), config, saved["variant"], saved["cache_hash"])


def load_generator_file(path: Path, device: str | torch.device = "cpu") -> tuple[FlowerGenerator, TrainConfig, dict]:
    """A generator file (what `_save_generator` writes: weights and plain values, read as tensors only), built
    with the installed package's networks: (generator in eval mode, its config, the file's contents)."""
    saved = load_tensors(path, device)
    try:
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in saved["config"].items() if k in known})
        net, _ = config.networks(saved["channels"], saved["image_size"])
        net.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise PipelineError(f"{path} is not a generator file of this pipeline ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160]})") from None
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
                       on_resume=lambda it: print(f"resumed from iteration {it}", flush=True))
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
