"""Evaluation of a trained generator, with torch and numpy (torch-fidelity for FID/KID).

Six views of one generator, each a plain function on uint8 N×C×H×W images:

- the source's measure: mean D(x) on held-out and training images and mean
  D(G(z)) on generated ones (0.5 each is the ideal), with their spread,
  scored as D was trained (batch statistics, batches of the training size);
- FID and KID from the 2015-12-05 Inception-v3 pool features (torch-fidelity),
  or reported unavailable with the reason;
- the project's own offline measure (flower_pipeline.features): fd_flowers,
  kd_flowers, precision and recall in the variant's feature network's space;
- mode collapse: colour histograms of generated vs real images as a distance,
  and the share of the real images' colour clusters that the samples cover;
- memorization: each sample's distance to its nearest training image, against
  the same distance for held-out real images;
- pictures: a sample grid, the training timeline and the closest sample/training pairs.

`evaluate` runs them all on a finished training folder and writes the
results beside it; `quality_gate` says whether a version may become champion.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from flower_pipeline.colours import (
    ColourClusters,
    colour_clusters,
    colour_family_shares,
    colour_histograms,
    colour_swatch_png,
    jensen_shannon,
)
from flower_pipeline.download import fetch
from flower_pipeline.effnet import Effnet, duplicate_ratio, effnet_measures, repeated_mode
from flower_pipeline.environment import INCEPTION_ENV
from flower_pipeline.errors import PipelineError
from flower_pipeline.feature_network import flowers_measures
from flower_pipeline.layout import RunFiles
from flower_pipeline.metrics import EFFNET_MEASURES, FLOWERS_MEASURES, GATED, INCEPTION_MEASURES
from flower_pipeline.models import GLOBAL_RNG, Discriminator, to_unit_range
from flower_pipeline.plots import grid_png
from flower_pipeline.settings import check_bounds, setting
from flower_pipeline.storage import atomic_write_bytes, atomic_write_json, png_bytes, tensors_only_loads
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import load_trained

INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub's rule: a weights file's name carries its sha256's first digits
INCEPTION_FILE = f"weights-inception-2015-12-05-{INCEPTION_SHA256_PREFIX}.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"

FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 N×C×H×W → float64 N×D


@dataclass(frozen=True)
class EvalSettings:
    samples: int = setting(1000, "Generated images scored and compared with the real ones.", bounds=(2, 100_000))
    seed: int = setting(0, "Seed of the generated images and of the scoring batches.", bounds=(0, 2**31 - 1))
    inception_weights: str = setting(
        "auto", "auto (torch hub cache, else one download), off, or a local copy of "
        f"{INCEPTION_FILE}; without it FID and KID are reported unavailable ($FLOWER_PIPELINE_INCEPTION_WEIGHTS).")
    kid_subset_size: int = setting(1000, "KID subset size; lowered to the smaller set's size where needed.",
                                   bounds=(2, 100_000))
    kid_subsets: int = setting(100, "KID subsets averaged.", bounds=(1, 10_000))
    near_copy_ratio: float = setting(0.5, "A sample is a near-copy below this share of the held-out median "
                                          "distance to the training set.", bounds=(0, 10))
    min_cluster_share: float = setting(0.02, "Real colour clusters holding less than this share are ignored.",
                                       bounds=(0, 1))
    cover_fraction: float = setting(0.25, "A colour cluster is covered when the samples hold this share of its "
                                          "real share.", bounds=(0, 1))
    neighbours: int = setting(3, "k of the k-nearest-neighbour manifolds of precision and recall.", bounds=(1, 100))
    precision: str = setting("auto", "The feature networks (flowers, EfficientNet, Inception) in bf16 autocast or "
                                     "fp32; auto: as training's (bf16 on a CPU with bf16 units); the measures' "
                                     "statistics stay fp64.", ("auto", "fp32", "bf16"))
    mode_clusters: int = setting(16, "k-means clusters of the photos' EfficientNet features in which repeated "
                                     "modes are looked for.", bounds=(2, 256))
    max_fid: float | None = setting(150.0, "Quality gate: highest FID a champion may have (when measured).",
                                    bounds=(0, 1e6))
    max_fd_flowers: float | None = setting(None, "Quality gate: highest fd_flowers a champion may have (when "
                                                 "measured; its scale is the variant's own feature network's).",
                                           bounds=(0, 1e9))
    min_recall: float | None = setting(0.1, "Quality gate: least recall (share of real images the samples "
                                            "cover in the flowers feature space) a champion must have.",
                                       bounds=(0, 1))
    min_colour_coverage: float = setting(0.5, "Quality gate: least share of real colour clusters covered.",
                                         bounds=(0, 1))
    max_near_copy_share: float = setting(0.5, "Quality gate: most samples that may be near-copies.", bounds=(0, 1))
    max_mode_share_ratio: float | None = setting(None, "Quality gate: most a feature cluster's share of the samples "
                                                       "may exceed its share of the photos, e.g. 2 (off by "
                                                       "default).", bounds=(1, 1e6))

    def __post_init__(self) -> None:
        check_bounds(self)


# --- the source's measure: discriminator scores ---------------------------------------------------------------


@torch.no_grad()
def discriminator_scores(discriminator: Discriminator, images: np.ndarray, batch_size: int,
                         device: torch.device | str = "cpu", seed: int = 0) -> np.ndarray:
    """D(x) = sigmoid(logit) for each image, scored as D was trained.

    In training D sees batches of `batch_size` images drawn at random, all real
    or all generated, in training mode: batch norm normalizes with the batch's
    own statistics, and minibatch discrimination compares the batch's images.
    Eval mode would use batch norm's running averages, a mix of real and fake
    batches that D never saw as such (it scored real photos near 0). So the
    images are shuffled into batches of the training size (the last one filled
    up with other images, whose scores are dropped) and scored by a copy of D in
    training mode: D's saved state stays as it was.
    """
    scorer = copy.deepcopy(discriminator).to(device).train()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    filler = rng.choice(len(images), (-len(order)) % batch_size, replace=len(images) < batch_size)
    batches = np.concatenate([order, filler]).reshape(-1, batch_size)
    scores = np.empty(len(images))
    masks = torch.Generator(device=device).manual_seed(seed)  # dropout masks (architecture 2), as in training
    shapes = scorer.dropout_shapes(images.shape[-1])
    for row, batch in enumerate(batches):
        x = torch.from_numpy(np.ascontiguousarray(images[batch])).to(device)
        noise = [torch.rand((len(batch), *shape), generator=masks, device=device) for shape in shapes]
        batch_scores = torch.sigmoid(scorer(to_unit_range(x), noise).float()).double().cpu().numpy()
        keep = min(batch_size, len(order) - row * batch_size)  # the filler's scores are dropped
        scores[batch[:keep]] = batch_scores[:keep]
    return scores


def score_summary(name: str, scores: np.ndarray) -> dict[str, float]:
    return {f"{name}_mean": float(scores.mean()), f"{name}_std": float(scores.std())}


# --- FID and KID ------------------------------------------------------------------------------------------------


def _is_inception_file(path: Path) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(INCEPTION_SHA256_PREFIX)


def _not_inception(path: Path) -> str:
    return f"{path} is not {INCEPTION_FILE} (its sha256 does not start with {INCEPTION_SHA256_PREFIX})"


def resolve_inception_weights(setting: str, cache_dir: Path, url: str = INCEPTION_URL) -> tuple[Path | None, str]:
    """The Inception weights file to use, or None and the reason FID/KID are unavailable.

    `setting` is "auto" (the cached file, else one download into `cache_dir`),
    "off", or a path to a local copy of the file.
    """
    if setting == "off":
        return None, "turned off (inception_weights: off)"
    if setting != "auto":
        path = Path(setting).expanduser()
        if not path.is_file():
            return None, f"inception_weights file {path} does not exist"
        return (path, "") if _is_inception_file(path) else (None, _not_inception(path))
    cached = cache_dir / INCEPTION_FILE
    if cached.is_file():
        return (cached, "") if _is_inception_file(cached) else (None, f"{_not_inception(cached)}; delete it to "
                                                                      "download it again")
    try:
        fetched = fetch(url, cache_dir, filename=INCEPTION_FILE, retries=1, timeout_s=60).path
    except PipelineError as err:
        cause = str(err).split(";")[0]  # the fetch error without its dataset-mirror advice
        return None, (f"no Inception weights in {cache_dir} and {cause}; set inception_weights to a local copy "
                      f"of {INCEPTION_FILE}")
    if not _is_inception_file(fetched):
        fetched.unlink()
        return None, f"the downloaded {INCEPTION_FILE} has the wrong checksum"
    return fetched, ""


def inception_for(settings: EvalSettings, device: torch.device) -> tuple[FeatureFn | None, str]:
    """Inception features per the `inception_weights` setting ($FLOWER_PIPELINE_INCEPTION_WEIGHTS stands for
    "auto"), or None and the reason FID and KID are unavailable."""
    setting = os.environ.get(INCEPTION_ENV, "auto") if settings.inception_weights == "auto" \
        else settings.inception_weights
    weights, reason = resolve_inception_weights(setting, Path(torch.hub.get_dir()) / "checkpoints")
    return (inception_features(weights, device), "") if weights else (None, reason)


def inception_features(weights: Path, device: torch.device | str = "cpu", batch_size: int = 64) -> FeatureFn:
    """torch-fidelity's Inception-v3 (2015-12-05) 2048-d pool features, as published FIDs use."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        with tensors_only_loads(), GLOBAL_RNG:  # torch-fidelity unpickles with weights_only=False
            model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(weights)).to(device)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:  # truncated, foreign or not weights
        raise PipelineError(f"{weights} is not a usable Inception weights file ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]}); replace it with {INCEPTION_FILE} or set "
                            "inception_weights to off") from None

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
            if batch.shape[1] == 1:  # black-and-white: Inception expects three channels
                batch = batch.expand(-1, 3, -1, -1)
            out.append(model(batch)[0].double().cpu())
        return torch.cat(out).numpy()

    return features


def fid_kid(real_features: np.ndarray, fake_features: np.ndarray, settings: EvalSettings) -> dict[str, float]:
    """torch-fidelity's FID and KID on precomputed features (KID subsets fitted to small sets)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    real, fake = torch.from_numpy(real_features).double(), torch.from_numpy(fake_features).double()
    fid = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), verbose=False)
    subset = min(settings.kid_subset_size, len(real), len(fake))
    kid = kid_features_to_metric(real, fake, kid_subset_size=subset, kid_subsets=settings.kid_subsets,
                                 rng_seed=settings.seed, verbose=False)
    return {"fid": fid[KEY_METRIC_FID], "kid_mean": kid[KEY_METRIC_KID_MEAN], "kid_std": kid[KEY_METRIC_KID_STD],
            "kid_subset_size": float(subset)}


# --- mode collapse: colours -----------------------------------------------------------------------------------


def colour_report(real: np.ndarray, fake: np.ndarray,
                  settings: EvalSettings) -> tuple[dict[str, float], ColourClusters]:
    """How far the samples' colours are from the real ones, and how many real colour clusters they cover.

    The real images are clustered (k-means, k=8) by the mean colour of their
    centre, where the flower is; each sample joins its nearest cluster. A
    generator collapsed to yellow and purple flowers fills two clusters and
    leaves the rest empty: low coverage. The distance compares the colour
    histograms of all pixels. The clusters come back too, for the picture.
    """
    clusters = colour_clusters(real, fake, seed=settings.seed)
    kept = clusters.real_share >= settings.min_cluster_share
    covered = clusters.fake_share[kept] >= settings.cover_fraction * clusters.real_share[kept]
    return {
        "colour_distance": jensen_shannon(colour_histograms(real).mean(axis=0), colour_histograms(fake).mean(axis=0)),
        "colour_coverage": float(covered.mean()) if kept.any() else 1.0,
        "colour_clusters": float(kept.sum()),
        "generated_colour_clusters": float((clusters.fake_share[kept] >= settings.min_cluster_share).sum()),
    }, clusters


def high_frequency_ratio(real: np.ndarray, fake: np.ndarray) -> float:
    """Sharpness and pixelation in one number: the samples' share of spectral energy above half the Nyquist
    frequency, over the real images'. 1 is like the photos; below 1 blurrier, above 1 noisier or pixelated
    (checkerboards)."""
    def share(images: np.ndarray) -> float:
        grey = _grey(images)
        grey -= grey.mean(axis=(1, 2), keepdims=True)
        power = np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(1, 2))) ** 2
        size = grey.shape[-1]
        yy, xx = np.mgrid[:size, :size] - size // 2
        high = np.hypot(yy, xx) > size / 4
        return float(power[:, high].sum() / max(power.sum(), 1e-12))

    return share(fake) / max(share(real), 1e-12)


def _gradient_magnitudes(images: np.ndarray) -> np.ndarray:
    grey = _grey(images) / 255
    return np.hypot(np.diff(grey, axis=2)[:, :-1, :], np.diff(grey, axis=1)[:, :, :-1]).ravel()


def edge_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """How far the samples' edges are from the photos': the Wasserstein-1 distance between the two distributions
    of gradient magnitude (grey, forward differences), over the photos' mean gradient. 0 is like the photos;
    blur (too few strong edges), added noise and checkerboards (too many) all raise it, so a noisier generator
    never reads as a sharper one (known answers: docs/design.md, "Sharpness")."""
    from scipy.stats import wasserstein_distance

    photos = _gradient_magnitudes(real)
    return float(wasserstein_distance(_gradient_magnitudes(fake), photos) / max(photos.mean(), 1e-12))


def _grey(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64).mean(axis=1)


def checkerboard_share(images: np.ndarray) -> float:
    """The share of spectral energy on the Nyquist lines (a period of two pixels, either axis): where the
    checkerboard of strided transposed convolutions lives."""
    grey = _grey(images)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2
    half = grey.shape[-1] // 2
    nyquist = power[:, half, :].sum() + power[:, :, half].sum() - power[:, half, half].sum()
    return float(nyquist / max(power.sum(), 1e-12))


def blockiness(images: np.ndarray) -> float:
    """How much more the pixels change across the edges of 2- and 4-pixel blocks than inside them (1: no blocks;
    pixelated images are far above). The larger of the two block sizes' ratios; one grey level is added to both
    sides, so flat blocks give a large finite number."""
    grey = _grey(images)
    steps = np.abs(np.diff(grey, axis=2)).mean(axis=(0, 1)) + np.abs(np.diff(grey, axis=1)).mean(axis=(0, 2))
    ratios = []
    for block in (2, 4):
        across = (np.arange(len(steps)) % block) == block - 1  # the step from a block's last pixel to the next's
        ratios.append(float((steps[across].mean() + 1) / (steps[~across].mean() + 1)))
    return max(ratios)


def artefact_ratios(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """Checkerboard and blockiness of the samples over the photos' own (1: like the photos)."""
    return {"checkerboard_ratio": checkerboard_share(fake) / max(checkerboard_share(real), 1e-12),
            "blockiness_ratio": blockiness(fake) / blockiness(real)}


# --- memorization -------------------------------------------------------------------------------------------------


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Each query's distance to its nearest reference (RMS per dimension) and that reference's index."""
    ref = torch.from_numpy(np.ascontiguousarray(references.reshape(len(references), -1), np.float32))
    distances, indices = [], []
    for i in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[i : i + chunk].reshape(-1, ref.shape[1]), np.float32))
        d, j = torch.cdist(q, ref).min(dim=1)
        distances.append(d / math.sqrt(ref.shape[1]))
        indices.append(j)
    return torch.cat(distances).double().numpy(), torch.cat(indices).numpy()


def memorization_report(train: np.ndarray, holdout: np.ndarray, samples: np.ndarray, settings: EvalSettings,
                        space: str) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Near-copy share and distance ratio in one space (pixels in [0, 1], or features).

    Held-out real images show how close an unseen photo usually is to the
    training set; a sample much closer than that is likely a copy.
    Returns the metrics and, per sample, its nearest training image and distance.
    """
    sample_d, sample_nn = nearest(samples, train)
    holdout_d, _ = nearest(holdout, train)
    threshold = settings.near_copy_ratio * float(np.median(holdout_d))
    metrics = {
        f"near_copy_share_{space}": float((sample_d < threshold).mean()),
        f"nearest_train_distance_{space}": float(np.median(sample_d)),
        f"holdout_nearest_train_distance_{space}": float(np.median(holdout_d)),
        f"memorization_ratio_{space}": float(np.median(sample_d) / max(np.median(holdout_d), 1e-12)),
    }
    return metrics, sample_nn, sample_d


def nearest_pairs_png(samples: np.ndarray, train: np.ndarray, nearest_index: np.ndarray, distance: np.ndarray,
                      pairs: int = 8) -> bytes:
    """The samples closest to a training image (top row) above those training images (bottom row)."""
    order = np.argsort(distance)[:pairs]
    return grid_png(np.concatenate([samples[order], train[nearest_index[order]]]), columns=len(order))


def mode_png(mode_samples: np.ndarray, mode_photos: np.ndarray, columns: int = 8) -> bytes:
    """The samples in their most over-represented cluster (two rows) above photos of that cluster (one row)."""
    rows = []
    for images, count in ((mode_samples, 2 * columns), (mode_photos, columns)):
        shown = images[:count]
        blank = np.zeros((-len(shown) % columns or columns * (not len(shown)), *images.shape[1:]), images.dtype)
        rows.append(np.concatenate([shown, blank]))  # whole rows, so samples and photos never share one
    return grid_png(np.concatenate(rows), columns=columns)


# --- the training timeline -----------------------------------------------------------------------------------------


def timeline_png(sample_dir: Path, rows: int = 6, per_row: int = 8) -> bytes | None:
    """The first fixed-noise samples of up to `rows` grids from training, oldest on top, labelled by iteration."""
    grids = sorted(sample_dir.glob("iter_*.png"))
    if not grids:
        return None
    picks = [grids[i] for i in sorted({round(i * (len(grids) - 1) / max(rows - 1, 1)) for i in range(rows)})]
    strips = []
    for path in picks:
        grid = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR_RGB)
        pad = 2
        cell = (grid.shape[1] - pad) // 8 - pad  # grids are 8 columns wide with a 2-pixel border
        strip = grid[: cell + 2 * pad, : per_row * (cell + pad) + pad].copy()
        label = np.full((strip.shape[0], 90, 3), 255, np.uint8)
        iteration = int(re.search(r"(\d+)", path.stem).group(1))
        cv2.putText(label, f"{iteration:,}", (4, strip.shape[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (40, 40, 40), 1, cv2.LINE_AA)
        strips.append(np.concatenate([label, strip], axis=1))
    return png_bytes(np.concatenate(strips))


# --- the whole evaluation ------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    metrics: dict[str, float]
    unavailable: dict[str, str]  # metric → why it is not reported
    files: dict[str, Path] = field(default_factory=dict)


def evaluate(training_dir: Path, cache: TensorCache, settings: EvalSettings, *, device: torch.device | str = "cpu",
             inception: FeatureFn | None = None, no_inception_reason: str = "no feature extractor",
             flowers: FeatureFn | None = None, no_flowers_reason: str = "no feature network",
             effnet: Effnet | None = None, no_effnet_reason: str = "no EfficientNet",
             effnet_reference: Path | None = None, iteration: int | None = None) -> EvalResult:
    """Evaluate the training in `training_dir` against its cache; outputs go to training_dir/evaluation.

    `inception` gives Inception features (FID, KID); `flowers` the variant's own feature network's
    (fd_flowers, kd_flowers, precision, recall); `effnet` the standard space's (fd_effnet and the rest), with
    the real images' features kept at `effnet_reference`. Each missing one is reported with its reason.
    `iteration` evaluates a generator snapshot kept during training instead of the final generator.
    """
    if settings.samples < 2:
        raise PipelineError(f"evaluation needs at least 2 samples, got {settings.samples}")
    trained = load_trained(training_dir, device, iteration)
    train_images, holdout_images = cache.train_images(), cache.holdout_images()
    if len(holdout_images) < 2:
        raise PipelineError(f"{cache.path} holds out {len(holdout_images)} images; evaluation needs at least 2 "
                            "(prepare the dataset with a larger --holdout)")
    samples = trained.generator.generate(settings.samples, seed=settings.seed)
    batch = trained.config.batch_size

    metrics: dict[str, float] = {}
    for name, images in (("d_real_holdout", holdout_images), ("d_real_train", train_images), ("d_fake", samples)):
        scores = discriminator_scores(trained.discriminator, images, batch, device, settings.seed)
        metrics.update(score_summary(name, scores))
    metrics["d_real_gap"] = metrics["d_real_train_mean"] - metrics["d_real_holdout_mean"]
    real = np.asarray(cache.images)
    colours, clusters = colour_report(real, samples, settings)
    metrics.update(colours)
    metrics["high_frequency_ratio"] = high_frequency_ratio(real, samples)
    metrics["edge_distance"] = edge_distance(real, samples)
    metrics.update(artefact_ratios(real, samples))
    for family, share in colour_family_shares(samples).items():
        metrics[f"share_{family}"] = share
    for family, share in colour_family_shares(real).items():
        metrics[f"real_share_{family}"] = share
    memo, nearest_index, nearest_distance = memorization_report(
        *(np.float32(1 / 255) * a for a in (train_images, holdout_images, samples)), settings, "pixels")
    metrics.update(memo)

    unavailable: dict[str, str] = {}
    try:
        if flowers is None:
            raise PipelineError(no_flowers_reason)
        real_flowers = flowers(real)
        metrics.update(flowers_measures(real_flowers, flowers(samples), settings.neighbours, settings.kid_subsets,
                                        settings.seed))
    except PipelineError as err:  # no labels, or too few images for the feature size: said, not a crash
        unavailable.update(dict.fromkeys(FLOWERS_MEASURES, str(err)))
    try:
        if effnet is None:
            raise PipelineError(no_effnet_reason)
        reference = effnet.reference(real, effnet_reference) if effnet_reference else effnet.features(real)
        generated = effnet.features(samples)
        metrics.update(effnet_measures(reference, generated, settings.neighbours, settings.kid_subsets,
                                       settings.seed))
        mode, mode_samples, mode_photos = repeated_mode(reference.stage5, generated.stage5, settings.mode_clusters,
                                                        settings.min_cluster_share, settings.seed)
        metrics.update(mode)
        metrics.update(duplicate_ratio(reference.stage5, generated.stage5, seed=settings.seed))
    except PipelineError as err:
        unavailable.update(dict.fromkeys(EFFNET_MEASURES, str(err)))
    if inception is None:
        unavailable.update(dict.fromkeys(INCEPTION_MEASURES, no_inception_reason))
    else:
        real_train, real_holdout, fake = inception(train_images), inception(holdout_images), inception(samples)
        metrics.update(fid_kid(np.concatenate([real_train, real_holdout]), fake, settings))
        metrics.update(memorization_report(real_train, real_holdout, fake, settings, "inception")[0])

    run = RunFiles(training_dir)
    out = run.evaluation(iteration)
    files = {
        "samples": atomic_write_bytes(out.samples, grid_png(samples[:64], columns=8)),
        "nearest_pairs": atomic_write_bytes(out.nearest_pairs,
                                            nearest_pairs_png(samples, train_images, nearest_index, nearest_distance)),
        "colours": atomic_write_bytes(out.colours, colour_swatch_png(clusters)),
    }
    if "mode_share" in metrics:
        files["mode"] = atomic_write_bytes(out.mode, mode_png(samples[mode_samples], real[mode_photos]))
    timeline = timeline_png(run.samples)
    if timeline is not None:
        files["timeline"] = atomic_write_bytes(out.timeline, timeline)
    files["metrics"] = atomic_write_json(out.metrics, {"metrics": metrics, "unavailable": unavailable})
    return EvalResult(metrics, unavailable, files)


# --- what may become the champion ----------------------------------------------------------------------------------

SCORE_KEYS = ("d_real_holdout_mean", "d_real_train_mean", "d_fake_mean")


def scores_in_range(metrics: dict[str, float]) -> tuple[bool, str]:
    """Discriminator scores must be finite and strictly between 0 and 1."""
    bad = {k: metrics[k] for k in SCORE_KEYS if not (math.isfinite(metrics[k]) and 0.0 < metrics[k] < 1.0)}
    if bad:
        return False, f"scores outside (0, 1): {bad}"
    return True, ", ".join(f"{k} {metrics[k]:.3f}" for k in SCORE_KEYS)


def quality_gate(metrics: dict[str, float], settings: EvalSettings) -> tuple[bool, str]:
    """Whether a version may become champion, and why: each gated metric (metrics.GATED) within its limit, where
    both are present, and D scores in (0, 1)."""
    failures, passes = [], []
    for metric in GATED:
        value, limit = metrics.get(metric.name), getattr(settings, metric.gate)
        if value is None or limit is None:
            continue
        ok = value <= limit if metric.gate_op == "<=" else value >= limit
        shown_op = metric.gate_op if ok else {"<=": ">", ">=": "<"}[metric.gate_op]
        (passes if ok else failures).append(f"{metric.name} {value:.3g} {shown_op} {limit:g}")
    ok, scores = scores_in_range(metrics)
    if not ok:
        failures.append(scores)
    if failures:
        return False, "failed: " + "; ".join(failures)
    return True, "passed: " + "; ".join(passes)
