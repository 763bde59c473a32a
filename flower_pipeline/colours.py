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
        d2 = squared_to_nearest(points, np.array(centres))[1]
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


def squared_to_nearest(points: np.ndarray, centres: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each point's nearest centre and squared distance to it, a chunk of points at a time (100,000 samples of
    112-d features against 16 centres would otherwise be a 1.4 GB temporary)."""
    d2 = np.concatenate([((points[i : i + chunk, None] - centres[None]) ** 2).sum(-1)
                         for i in range(0, len(points), chunk)])
    return d2.argmin(axis=1), d2.min(axis=1)


def nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return squared_to_nearest(points, centres)[0]


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


# Named flower colours, for the source's claims ("yellow and purple flowers", "white ones too"). Each pixel of an
# image's centre half gets a family from its hue (OpenCV's 0–179 scale), or white when it is pale and bright;
# shadows and greys get none. The image's family is the most common among its non-green pixels, so the green
# background no longer pulls white flowers to pink or green; an image whose centre is mostly green counts as green.
# Checked per species on the real Flowers-17 photos (tests/system/test_real_flowers17.py): snowdrops, daisies and
# windflowers come out white, daffodils, dandelions and buttercups yellow, crocuses purple, bluebells blue.
HUE_FAMILIES = ((0, "red"), (8, "orange"), (19, "yellow"), (34, "green"), (86, "blue"), (128, "purple"),
                (150, "pink"), (170, "red"))  # (first hue, family) in hue order
FAMILIES = ("yellow", "purple", "white", "red", "pink", "orange", "blue", "green")
WHITE_MAX_SATURATION, WHITE_MIN_VALUE, DARK_VALUE = 50, 140, 50
MIN_FLOWER_SHARE = 0.15  # below this share of coloured non-green pixels, the centre shows no flower


def colour_families(images: np.ndarray) -> np.ndarray:
    """Each colour image's family (an index into FAMILIES), from the pixels of its centre half."""
    import cv2

    n, _, side, _ = images.shape
    centre = images[:, :, side // 4: side - side // 4, side // 4: side - side // 4]
    pixels = np.ascontiguousarray(centre.transpose(0, 2, 3, 1)).reshape(-1, centre.shape[3], 3)
    hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV).reshape(n, -1, 3).astype(np.int16)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    starts = np.array([start for start, _ in HUE_FAMILIES])
    family = np.array([FAMILIES.index(name) for _, name in HUE_FAMILIES])[np.searchsorted(starts, hue, "right") - 1]
    pale = saturation < WHITE_MAX_SATURATION
    family[pale & (value >= WHITE_MIN_VALUE)] = FAMILIES.index("white")
    family[(value < DARK_VALUE) | (pale & (value < WHITE_MIN_VALUE))] = -1  # shadows and greys: no colour
    green = FAMILIES.index("green")
    chosen = np.full(n, green)
    for i, row in enumerate(family):
        flower = row[(row >= 0) & (row != green)]
        if len(flower) >= MIN_FLOWER_SHARE * len(row):
            chosen[i] = np.bincount(flower, minlength=len(FAMILIES)).argmax()
    return chosen


def colour_family_shares(images: np.ndarray) -> dict[str, float]:
    """The share of images in each named colour family (colour images only)."""
    if images.shape[1] != 3:
        return {}
    counts = np.bincount(colour_families(images), minlength=len(FAMILIES)) / len(images)
    return {name: float(share) for name, share in zip(FAMILIES, counts, strict=True)}


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
