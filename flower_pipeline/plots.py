"""Pictures for people: image grids and training curves as PNG bytes."""

from __future__ import annotations

import io
import math
from typing import Any

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


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(plt: Any, fig: Any, title: str) -> bytes:
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def curves_png(history: list[dict[str, float]], title: str = "") -> bytes | None:
    """Loss and D-score curves as PNG bytes; None where matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return None

    steps = [h["iteration"] for h in history]
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    losses.plot(steps, [h["loss_d"] for h in history], label="loss D")
    losses.plot(steps, [h["loss_g"] for h in history], label="loss G")
    losses.set_xlabel("iteration")
    losses.legend()
    scores.plot(steps, [h["d_real"] for h in history], label="D(x)")
    scores.plot(steps, [h["d_fake"] for h in history], label="D(G(z))")
    if "augment_p" in history[0]:
        scores.plot(steps, [h["augment_p"] for h in history], label="ADA p", linestyle="--")
    scores.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    scores.set_ylim(0, 1)
    scores.set_xlabel("iteration")
    scores.legend()
    return _png(plt, fig, title)


def snapshot_curve_png(scores: list[tuple[int, dict[str, float]]], chosen: int, ranked_by: str | None,
                       title: str = "") -> bytes | None:
    """Each measure of the scored snapshots over iterations, one panel per measure, the snapshot `ranked_by`
    chose marked in each; None where matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return None

    names = list(dict.fromkeys(name for _, metrics in scores for name in metrics))
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.4), dpi=100, squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        points = [(it, metrics[name]) for it, metrics in scores if name in metrics]
        axis.plot([it for it, _ in points], [v for _, v in points], marker="o", markersize=3, label=name)
        axis.plot([it for it, _ in points if it == chosen], [v for it, v in points if it == chosen], marker="*",
                  markersize=14, color="crimson", linestyle="",
                  label=f"chosen by {ranked_by or 'none: the last'}: iteration {chosen}")
        axis.set_xlabel("iteration")
        axis.set_ylabel(f"{name} (lower is better)" + (", ranks them" if name == ranked_by else ""))
        axis.legend()
    return _png(plt, fig, title)
