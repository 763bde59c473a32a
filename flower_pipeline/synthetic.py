"""A small procedurally drawn "flowers" dataset, so the pipeline runs offline.

These are drawings, not photos: each class is a petal count and a palette, and
each image varies the hue, size, rotation, position and background. The archive
has Flowers-17's layout (`jpg/image_0001.jpg` …, classes in file order) and is
byte-for-byte reproducible from its seed.
"""

from __future__ import annotations

import gzip
import io
import math
import tarfile
from pathlib import Path

import cv2
import numpy as np

from flower_pipeline.storage import atomic_write

# (petals, petal hue, centre hue) per class, hues on OpenCV's 0-179 scale.
CLASSES = (
    (5, 0, 25), (6, 15, 100), (8, 28, 15), (12, 140, 28),
    (5, 100, 20), (7, 165, 30), (10, 28, 0), (16, 120, 25),
)
IMAGE_SIZE = 128


def draw_flower(rng: np.random.Generator, cls: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """One flower of class `cls` as a size×size BGR image."""
    petals, petal_hue, centre_hue = CLASSES[cls % len(CLASSES)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ground = np.stack([  # a leafy green-brown gradient background
        40 + 50 * yy + 20 * rng.random(), 90 + 60 * xx * rng.random(), 30 + 40 * (1 - yy)
    ], axis=-1)
    image = np.clip(ground + rng.normal(0, 6, ground.shape), 0, 255).astype(np.uint8)

    centre = (size / 2 + rng.normal(0, size / 14), size / 2 + rng.normal(0, size / 14))
    length = size * rng.uniform(0.28, 0.40)
    width = length * rng.uniform(0.28, 0.42)
    turn = rng.uniform(0, 360)
    hue = int((petal_hue + rng.integers(-6, 7)) % 180)
    petal_bgr = _hsv_to_bgr(hue, int(rng.integers(150, 256)), int(rng.integers(170, 256)))
    for k in range(petals):
        angle = turn + 360.0 * k / petals
        cx = centre[0] + 0.55 * length * math.cos(math.radians(angle))
        cy = centre[1] + 0.55 * length * math.sin(math.radians(angle))
        shade = tuple(int(c * rng.uniform(0.8, 1.0)) for c in petal_bgr)
        cv2.ellipse(image, (int(cx * 16), int(cy * 16)), (int(length * 8), int(width * 8)), angle,
                    0, 360, shade, -1, cv2.LINE_AA, shift=4)
    centre_bgr = _hsv_to_bgr(centre_hue, 220, int(rng.integers(120, 220)))
    cv2.circle(image, (int(centre[0] * 16), int(centre[1] * 16)), int(width * 0.9 * 16),
               centre_bgr, -1, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(image, (3, 3), 0)


def _hsv_to_bgr(h: int, s: int, v: int) -> tuple[int, int, int]:
    pixel = cv2.cvtColor(np.uint8([[[h, s, v]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(pixel[0]), int(pixel[1]), int(pixel[2])


def write_synthetic_archive(
    path: Path, *, num_classes: int = 8, per_class: int = 40, seed: int = 0
) -> Path:
    """Write the dataset as a .tgz at `path` (atomically) and return the path."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    # mtime=0 and fixed member metadata make the archive reproducible byte for byte.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        names = []
        for index in range(num_classes * per_class):
            image = draw_flower(rng, index // per_class)
            ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok
            name = f"image_{index + 1:04d}.jpg"
            names.append(name)
            _add(tar, f"jpg/{name}", jpg.tobytes())
        _add(tar, "jpg/files.txt", ("\n".join(names) + "\n").encode())
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
