"""Colours: histograms, k-means clusters of the flowers' centre colours, named colour families, a swatch.

Plain NumPy on uint8 N×C×H×W images. The evaluation's collapse measures and the
feature network's known-answer sets both use these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flower_pipeline.storage import png_bytes


def colour_histograms(images: np.ndarray) -> np.ndarray:
    """Per image, the share of pixels in each colour bin: 4 levels per channel (64 bins), or 16 grey levels."""
    n, channels = images.shape[:2]
    if channels == 3:
        q = images // 64
        index, bins = (q[:, 0].astype(np.int64) * 16 + q[:, 1] * 4 + q[:, 2]), 64
    else:
        index, bins = (images[:, 0] // 16).astype(np.int64), 16
    offsets = np.arange(n, dtype=np.int64)[:, None, None] * bins
    counts = np.bincount((index + offsets).ravel(), minlength=n * bins).reshape(n, bins)
    return counts / counts.sum(axis=1, keepdims=True)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in bits: 0 for equal distributions, 1 for disjoint ones."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return (kl(p) + kl(q)) / 2


def centre_colours(images: np.ndarray) -> np.ndarray:
    """Each image's mean colour in its central half, where the flower is: N×C floats in [0, 255]."""
    size = images.shape[-1]
    centre = images[:, :, size // 4 : size - size // 4, size // 4 : size - size // 4]
    return centre.reshape(len(images), images.shape[1], -1).mean(axis=2)


def kmeans(points: np.ndarray, k: int, seed: int = 0, steps: int = 50) -> np.ndarray:
    """Cluster centres by k-means with k-means++ seeding (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = ((points[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(axis=1)
        if d2.sum() == 0:
            break
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum())])
    centres_array = np.array(centres, np.float64)
    for _ in range(steps):
        assign = nearest_centre(points, centres_array)
        moved = np.array([points[assign == c].mean(axis=0) if (assign == c).any() else centres_array[c]
                          for c in range(len(centres_array))])
        if np.allclose(moved, centres_array):
            break
        centres_array = moved
    return centres_array


def nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(axis=1)


@dataclass(frozen=True)
class ColourClusters:
    centres: np.ndarray  # k×C mean colours
    real_share: np.ndarray  # k
    fake_share: np.ndarray  # k


def colour_clusters(real: np.ndarray, fake: np.ndarray, k: int = 8, seed: int = 0) -> ColourClusters:
    """Cluster the real images by the colour of their centre; share of real and generated images per cluster."""
    real_colours, fake_colours = centre_colours(real), centre_colours(fake)
    centres = kmeans(real_colours, min(k, len(real_colours)), seed)
    count = len(centres)
    return ColourClusters(
        centres,
        np.bincount(nearest_centre(real_colours, centres), minlength=count) / len(real),
        np.bincount(nearest_centre(fake_colours, centres), minlength=count) / len(fake))


# Named flower colours, for the source's claims ("yellow and purple flowers", "white ones too"): each image's
# centre colour goes to the nearest of these (the background green takes centres that show no flower).
COLOUR_FAMILIES = {"yellow": (225, 195, 40), "purple": (130, 70, 160), "white": (230, 228, 220),
                   "red": (190, 40, 40), "pink": (220, 140, 170), "orange": (230, 120, 30),
                   "blue": (80, 100, 190), "green": (70, 110, 50)}


def colour_family_shares(images: np.ndarray) -> dict[str, float]:
    """The share of images whose centre colour is nearest each named colour (colour images only)."""
    if images.shape[1] != 3:
        return {}
    names, palette = list(COLOUR_FAMILIES), np.array(list(COLOUR_FAMILIES.values()), np.float64)
    family = nearest_centre(centre_colours(images), palette)
    counts = np.bincount(family, minlength=len(names)) / len(images)
    return {name: float(share) for name, share in zip(names, counts, strict=True)}


def colour_swatch_png(clusters: ColourClusters, width: int = 512, height: int = 40) -> bytes:
    """Two bars, real above generated, split among the real colour clusters in proportion to their shares."""
    colours = np.clip(clusters.centres, 0, 255).astype(np.uint8)
    if colours.shape[1] == 1:
        colours = np.repeat(colours, 3, axis=1)
    order = np.argsort(-clusters.real_share)
    rows = []
    for shares in (clusters.real_share, clusters.fake_share):
        bar = np.full((height, width, 3), 255, np.uint8)
        left = 0
        for c in order:
            span = round(float(shares[c]) * width)
            bar[:, left : left + span] = colours[c]
            left += span
        rows.append(bar)
    gap = np.full((6, width, 3), 255, np.uint8)
    return png_bytes(np.concatenate([rows[0], gap, rows[1]]))
