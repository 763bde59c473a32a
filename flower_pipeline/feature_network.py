"""The project's own image-quality measure: a flower classifier per variant, and distances in its feature space.

FID needs Inception weights that offline machines cannot download. This module
trains a small CNN to tell the variant's classes apart (17 species for
Flowers-17) on the variant's own training images, with augmentation, and uses
its penultimate layer as the feature space for:

- `fd_flowers`: the Fréchet distance between Gaussian fits of real and
  generated features (FID's formula in another space, as FD with DINOv2 is);
- `kd_flowers`: the kernel distance with KID's unbiased estimator;
- `precision` and `recall` (Kynkäänniemi et al., 2019): the share of samples
  inside the real images' k-nearest-neighbour manifold (fidelity), and the
  share of real images inside the samples' manifold (diversity).

The numbers compare runs of this project on the same variant and the same
feature network; they are not FIDs and do not compare with published ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flower_pipeline.errors import PipelineError
from flower_pipeline.models import GLOBAL_RNG, to_unit_range
from flower_pipeline.settings import check_bounds, setting
from flower_pipeline.storage import DataPath, atomic_write, load_tensors, load_weights, plain_number
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import deterministic

MAX_CLASSES = 10_000  # classes a feature network may tell apart (Flowers-102: 102)


@dataclass(frozen=True)
class FeatureSettings:
    epochs: int = setting(24, "Training epochs of the feature network.", bounds=(1, 1000))
    batch_size: int = setting(64, "Images per step.", bounds=(2, 4096))
    lr: float = setting(3e-3, "Peak learning rate (one-cycle schedule, AdamW).", bounds=(1e-6, 1.0))
    width: int = setting(16, "Channels of the first block; each of the four blocks doubles it.", bounds=(2, 128))
    dim: int = setting(128, "Size of the feature vector the measures use.", bounds=(4, 1024))
    seed: int = setting(0, "Same settings, cache and seed give the same network on the same device.",
                        bounds=(0, 2**31 - 1))

    def __post_init__(self) -> None:
        check_bounds(self)


class FeatureNet(nn.Module):
    """Four conv blocks (conv-BN-ReLU ×2, then pooling), global average pooling, a `dim`-feature layer, a classifier.

    Any image side from 16 up works: the pooling is global.
    """

    def __init__(self, channels: int, classes: int, width: int = 32, dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        inputs = channels
        for block in range(4):
            out = width * 2**block
            layers += [nn.Conv2d(inputs, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if block < 3:
                layers.append(nn.MaxPool2d(2))
            inputs = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(inputs, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(dim, classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips, crops (zoom up to 1/0.7, then back to size) and brightness/contrast/saturation jitter.

    Hue is left alone: a flower's colour tells its species.
    """
    n, channels = batch.shape[:2]
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
    scale = 0.7 + 0.3 * torch.rand(n, generator=generator)
    shift = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale, scale, shift
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness = 0.2 * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    contrast = 1 + 0.2 * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    mean = batch.mean(dim=(1, 2, 3), keepdim=True)
    batch = (batch - mean) * contrast + mean + brightness
    if channels == 3:
        saturation = 1 + 0.2 * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
        grey = batch.mean(dim=1, keepdim=True)
        batch = (batch - grey) * saturation + grey
    return batch.clamp(-1, 1)


@dataclass(frozen=True)
class FeatureNetworkRef:
    """A variant's feature network, as the assets hand it on."""

    variant: str
    network_id: str  # cache content × settings: measures compare only under the same id
    path: DataPath | None  # model.pt, or None where the variant cannot have one
    unavailable: str | None  # why not
    accuracy: float | None  # on the held-out images
    train_accuracy: float | None
    classes: int
    seconds: float
    reused: bool


@dataclass(frozen=True)
class FeatureNetResult:
    path: Path  # model.pt
    accuracy: float  # on the held-out images
    train_accuracy: float
    seconds: float
    classes: int
    reused: bool


def feature_network_unavailable(cache: TensorCache, settings: FeatureSettings) -> str | None:
    """Why no feature network can be trained on this cache, or None."""
    classes = len(np.unique(cache.labels))
    if classes < 2:
        return (f"{cache.variant} has {classes} class: the feature network learns to tell classes apart, so it "
                "needs labels (put each class's images in its own folder)")
    if cache.holdout.sum() < 2:
        return f"{cache.variant} holds out {int(cache.holdout.sum())} images; the feature network needs at least 2"
    return None


def train_feature_network(cache: TensorCache, settings: FeatureSettings, out_dir: Path, *,
                          device: torch.device | str = "cpu",
                          log: Callable[[str], None] | None = None) -> FeatureNetResult:
    """Train (or reuse, when out_dir already holds it) the variant's feature network on its training split."""
    path = out_dir / "model.pt"
    if path.exists():
        reused = _reusable(path, cache, settings)
        if isinstance(reused, FeatureNetResult):
            return reused
        if log:
            log(f"the feature network at {path} is not reused ({reused}); training it again")
    reason = feature_network_unavailable(cache, settings)
    if reason:
        raise PipelineError(reason)
    with deterministic(device):
        return _train(cache, settings, path, device, log)


def _reusable(path: Path, cache: TensorCache, settings: FeatureSettings) -> FeatureNetResult | str:
    """The finished network at `path` if it is whole and is the one these settings train on this cache (sizes,
    channels, classes, finite weights), else why not."""
    try:
        load_feature_network(path)  # sizes in range, weights whole and finite
        saved = load_tensors(path)
    except PipelineError as err:
        return str(err).removeprefix(f"{path}").strip(" :") or "unreadable"
    wanted = {"channels": cache.images.shape[1], "classes": int(cache.labels.max()) + 1, "width": settings.width,
              "dim": settings.dim, "cache_hash": cache.content_hash}
    wrong = [key for key, value in wanted.items() if saved.get(key) != value]
    numbers = [saved.get(key) for key in ("accuracy", "train_accuracy", "seconds")]
    if wrong or not all(isinstance(n, float) and math.isfinite(n) for n in numbers):
        return f"its {wrong[0] if wrong else 'accuracy'} is not this variant's"
    return FeatureNetResult(path, *numbers[:2], numbers[2], wanted["classes"], True)


def _train(cache: TensorCache, settings: FeatureSettings, path: Path, device: torch.device | str,
           log: Callable[[str], None] | None) -> FeatureNetResult:
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = torch.Generator().manual_seed(settings.seed)
    images = to_unit_range(torch.from_numpy(cache.train_images()))
    labels = torch.from_numpy(cache.labels[~cache.holdout])
    classes = int(cache.labels.max()) + 1
    model = FeatureNet(images.shape[1], classes, settings.width, settings.dim).to(device)
    steps_per_epoch = max(1, len(images) // settings.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), settings.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr,
                                                   total_steps=settings.epochs * steps_per_epoch)
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(images), generator=rng)
        correct = 0
        for step in range(steps_per_epoch):
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            batch = augment(images[index], rng).to(device)
            logits = model(batch)
            loss = F.cross_entropy(logits, labels[index].to(device), label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1).cpu() == labels[index]).sum())
        if log and (epoch + 1) % 10 == 0:
            log(f"feature network epoch {epoch + 1}/{settings.epochs}: train accuracy "
                f"{correct / (steps_per_epoch * settings.batch_size):.2f}")
    accuracy = classify_accuracy(model, cache.holdout_images(), cache.labels[cache.holdout], device)
    train_accuracy = classify_accuracy(model, cache.train_images(), cache.labels[~cache.holdout], device)
    seconds = time.perf_counter() - started
    atomic_write(path, lambda f: torch.save({
        "state_dict": model.cpu().state_dict(), "channels": int(images.shape[1]), "classes": classes,
        "width": settings.width, "dim": settings.dim, "accuracy": accuracy, "train_accuracy": train_accuracy,
        "seconds": seconds, "cache_hash": cache.content_hash}, f))
    return FeatureNetResult(path, accuracy, train_accuracy, seconds, classes, False)


@torch.no_grad()
def classify_accuracy(model: FeatureNet, images: np.ndarray, labels: np.ndarray,
                      device: torch.device | str = "cpu") -> float:
    model.eval()
    predictions = torch.cat([model(to_unit_range(torch.from_numpy(np.array(images[i : i + 256])))
                                   .to(device)).argmax(1).cpu() for i in range(0, len(images), 256)])
    return float((predictions.numpy() == labels).mean())


def load_feature_network(path: Path, device: torch.device | str = "cpu") -> FeatureNet:
    """A feature network file, its sizes held to the settings' ranges before the network is built and its
    weights checked (names, shapes, finite) before they are used."""
    saved = load_tensors(path)
    if not isinstance(saved, dict):
        raise PipelineError(f"{path} is not a feature network file of this pipeline")
    width_low, width_high = _bounds("width")
    dim_low, dim_high = _bounds("dim")
    with GLOBAL_RNG:  # its random initialisation, replaced by the saved weights
        model = FeatureNet(plain_number(saved, "channels", 1, 3, path),
                           plain_number(saved, "classes", 2, MAX_CLASSES, path),
                           plain_number(saved, "width", width_low, width_high, path),
                           plain_number(saved, "dim", dim_low, dim_high, path))
    load_weights(model, saved.get("state_dict"), path)
    return model.to(device).eval()


def _bounds(name: str) -> tuple[int, int]:
    low, high = next(f.metadata["bounds"] for f in fields(FeatureSettings) if f.name == name)
    return int(low), int(high)


@torch.no_grad()
def flower_features(model: FeatureNet, images: np.ndarray, device: torch.device | str = "cpu",
                    batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features of uint8 N×C×H×W images, float64 N×dim (the same whatever the thread count)."""
    model.eval()
    with deterministic(device):
        out = [model.features(to_unit_range(torch.from_numpy(np.array(images[i : i + batch_size])))
                              .to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def manifold_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's distance to its k-th nearest neighbour in the same set (itself excluded)."""
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. (2019): precision = share of samples inside some real point's k-NN ball,
    recall = share of real points inside some sample's k-NN ball. Compare sets of similar sizes: a smaller
    set has wider balls."""
    r, f = torch.from_numpy(real).float(), torch.from_numpy(fake).float()
    if min(len(r), len(f)) <= k:
        raise PipelineError(f"precision and recall need more than k={k} images on each side, got {len(r)} real "
                            f"and {len(f)} generated")
    real_radii, fake_radii = manifold_radii(r, k), manifold_radii(f, k)
    between = torch.cdist(f, r)  # samples × real
    precision = (between <= real_radii[None, :]).any(dim=1).float().mean()
    recall = (between <= fake_radii[:, None]).any(dim=0).float().mean()
    return float(precision), float(recall)


def frechet_distance(real: np.ndarray, fake: np.ndarray, space: str) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (FID's formula, any feature space).
    Refused, in one line, unless each side has more images than the features have dimensions."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    dim = real.shape[1]
    if min(len(real), len(fake)) <= dim:
        raise PipelineError(f"the Fréchet distance in the {space} feature space needs more than {dim} images on "
                            f"each side (the feature size), got {len(real)} real and {len(fake)} generated")
    r, f = torch.from_numpy(real).double(), torch.from_numpy(fake).double()
    fd = fid_statistics_to_metric(fid_features_to_statistics(r), fid_features_to_statistics(f), verbose=False)
    return max(float(fd[KEY_METRIC_FID]), 0.0)


def kernel_distance(real: np.ndarray, fake: np.ndarray, subsets: int, seed: int) -> float:
    """KID's unbiased estimator (subsets fitted to the smaller set): about 0 for two samples of one distribution."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    r, f = torch.from_numpy(real).double(), torch.from_numpy(fake).double()
    kd = kid_features_to_metric(r, f, kid_subset_size=min(1000, len(real), len(fake)), kid_subsets=subsets,
                                rng_seed=seed, verbose=False)
    return float(kd[KEY_METRIC_KID_MEAN])


def flowers_measures(real: np.ndarray, fake: np.ndarray, k: int = 3, kid_subsets: int = 100,
                     seed: int = 0) -> dict[str, float]:
    """fd_flowers, kd_flowers, precision, recall: all in the variant's feature network's space."""
    precision, recall = precision_recall(real, fake, k)
    return {"fd_flowers": frechet_distance(real, fake, "flowers"),
            "kd_flowers": kernel_distance(real, fake, kid_subsets, seed), "precision": precision, "recall": recall}


TRAINING_METHOD = 2  # 2: trained deterministically (one CPU thread); a network trained before is trained again


def settings_hash(settings: FeatureSettings) -> str:
    payload = {**asdict(settings), "method": TRAINING_METHOD}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def network_id(cache: TensorCache, settings: FeatureSettings) -> str:
    """A feature network's identity: the cache it learned from and its settings. Only measures taken with the
    same network compare."""
    return f"{cache.content_hash[:16]}-{settings_hash(settings)}"



def known_answer_sets(train: np.ndarray, holdout: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Image sets whose distance from the training images is known in advance, each the size of `holdout`:

    - `held-out photos`: real images the network never saw (the lowest distance of all);
    - `blur σ=…`: the same photos blurred ever more (the distance must rise with σ);
    - `two colours only`: a generator collapsed as the source saw, making over and over the 20 training
      photos closest to the two colour clusters nearest yellow and purple (precision stays high, recall falls);
    - `noise`: uniform noise images (precision near 0);
    - `pixelated 4 px`: the photos as 4×4-pixel blocks; `shuffled 8 px tiles`: the photos cut into 8×8 tiles
      in a random order (no flower shape left); `checkerboard`: the photos under a ±12 period-2 pattern, as
      strided transposed convolutions draw it. The eye rejects all three; a measure that does not is blind there.
    """
    import cv2

    from flower_pipeline.colours import centre_colours, kmeans, nearest_centre

    rng = np.random.default_rng(seed)
    n = len(holdout)
    sets = {"held-out photos": holdout}
    for sigma in (1.0, 2.0, 3.0):
        sets[f"blur σ={sigma:g}"] = np.stack([
            cv2.GaussianBlur(image.transpose(1, 2, 0), (0, 0), sigma).reshape(image.shape[1], image.shape[2], -1)
            .transpose(2, 0, 1) for image in holdout])
    colours = centre_colours(train)
    centres = kmeans(colours, 8, seed)
    cluster = nearest_centre(colours, centres)
    if train.shape[1] == 3:  # yellow: red and green high, blue low; purple: red and blue above green
        yellow = int(np.argmax(centres[:, 0] + centres[:, 1] - 2 * centres[:, 2]))
        purple = int(np.argmax(centres[:, 0] + centres[:, 2] - 2 * centres[:, 1]))
    else:  # black-and-white: the brightest and the darkest flowers
        yellow, purple = int(np.argmax(centres[:, 0])), int(np.argmin(centres[:, 0]))
    distance = ((colours - centres[cluster]) ** 2).sum(axis=1)
    modes = [np.flatnonzero(cluster == c)[np.argsort(distance[cluster == c])[:10]] for c in (yellow, purple)]
    sets["two colours only"] = train[rng.choice(np.concatenate(modes), n)]
    sets["noise"] = rng.integers(0, 256, holdout.shape, dtype=np.uint8)
    sets["pixelated 4 px"] = holdout[:, :, ::4, ::4].repeat(4, axis=2).repeat(4, axis=3)
    sets["shuffled 8 px tiles"] = shuffled_tiles(holdout, 8, rng)
    side = holdout.shape[-1]
    pattern = (np.indices((side, side)).sum(axis=0) % 2 * 2 - 1) * 12
    sets["checkerboard"] = np.clip(holdout.astype(np.int16) + pattern, 0, 255).astype(np.uint8)
    return sets


def shuffled_tiles(images: np.ndarray, tile: int, rng: np.random.Generator) -> np.ndarray:
    """Each image cut into tile×tile squares put back in a random order."""
    n, channels, side, _ = images.shape
    k = side // tile
    tiles = images.reshape(n, channels, k, tile, k, tile).transpose(0, 2, 4, 1, 3, 5).reshape(n, k * k, channels,
                                                                                                tile, tile)
    shuffled = np.stack([t[rng.permutation(k * k)] for t in tiles])
    return shuffled.reshape(n, k, k, channels, tile, tile).transpose(0, 3, 1, 4, 2, 5).reshape(images.shape)


def repeat_and_damage_sets(train: np.ndarray, holdout: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The known answers of the repeated-mode and sharpness measures, each the size of `holdout`: distinct photos
    damaged in every way (which a repeated-mode measure must not see as repeats, and a sharpness measure must
    see as unlike the photos) and photos repeated (which it must). Beside `known_answer_sets`' blur, noise,
    pixelation, tiles and checkerboard:

    - `blur σ=0.7`, `pixelated 2 px`, `added noise σ=20`, `hue +90°`: mild damage, each image still distinct;
    - `5 photos repeated`, `1 photo repeated`, `1 photo in a fifth`: repeats of training photos.
    """
    import cv2

    rng = np.random.default_rng(seed)
    n, sets = len(holdout), known_answer_sets(train, holdout, seed)
    sets["blur σ=0.7"] = np.stack([
        cv2.GaussianBlur(image.transpose(1, 2, 0), (0, 0), 0.7).reshape(image.shape[1], image.shape[2], -1)
        .transpose(2, 0, 1) for image in holdout])
    sets["pixelated 2 px"] = holdout[:, :, ::2, ::2].repeat(2, axis=2).repeat(2, axis=3)
    sets["added noise σ=20"] = np.clip(holdout + rng.normal(0, 20, holdout.shape), 0, 255).astype(np.uint8)
    if holdout.shape[1] == 3:  # OpenCV's hue runs 0-180: +45 is a quarter turn
        hsv = np.stack([cv2.cvtColor(image.transpose(1, 2, 0), cv2.COLOR_RGB2HSV) for image in holdout])
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 45) % 180
        sets["hue +90°"] = np.stack([cv2.cvtColor(image, cv2.COLOR_HSV2RGB).transpose(2, 0, 1) for image in hsv])
    sets["5 photos repeated"] = np.repeat(train[rng.choice(len(train), 5, replace=False)], n // 5 + 1, 0)[:n]
    sets["1 photo repeated"] = np.repeat(train[:1], n, 0)
    fifth = holdout.copy()
    fifth[: n // 5] = train[rng.integers(len(train))]
    sets["1 photo in a fifth"] = fifth
    return sets


DISTINCT_DAMAGED = ("blur σ=0.7", "blur σ=1", "blur σ=2", "blur σ=3", "pixelated 2 px", "pixelated 4 px",
                    "added noise σ=20", "noise", "hue +90°", "checkerboard", "shuffled 8 px tiles")
REPEATED = ("5 photos repeated", "1 photo repeated", "1 photo in a fifth")
