"""Pictures for people: image grids and training curves as PNG bytes."""

from __future__ import annotations

import math

import numpy as np

from flower_pipeline.storage import png_bytes


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile N×C×H×W uint8 images into one H'×W'×C image with a light border."""
    images = np.asarray(images)
    n, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 235, np.uint8)
    for i in range(n):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[top : top + height, left : left + width] = images[i].transpose(1, 2, 0)
    return grid


def grid_png(images: np.ndarray, columns: int | None = None) -> bytes:
    return png_bytes(image_grid(images, columns))
