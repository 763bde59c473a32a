"""Image decoding and resizing with OpenCV, on every core.

JPEGs are decoded at reduced resolution (libjpeg's DCT scaling) when the target
is small, which is most of the speed; other formats are decoded whole and
normalised: 16-bit to 8-bit, alpha composited over white, grayscale expanded.
Anything unusable is skipped with a reason rather than failing the batch.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from flower_pipeline.errors import PipelineError

CROPS = ("center", "pad", "stretch")
MODES = ("color", "gray")


@dataclass(frozen=True)
class ResizeSpec:
    size: int = 64
    mode: str = "color"  # "color" (RGB) or "gray"
    crop: str = "center"  # "center" square crop, "pad" letterbox, "stretch"
    max_pixels: int = 50_000_000  # refuse headers claiming more than this
    max_aspect: float = 4.0
    min_side: int = 8
    # JPEGs may be decoded at 1/2, 1/4 or 1/8 scale while the decoded side keeps at
    # least this share of the target: 0.9 lets a 500-pixel photo decode at 62 pixels
    # for a 64-pixel target (twice as fast as full decoding). 1.0 never upscales.
    decode_slack: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PipelineError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.crop not in CROPS:
            raise PipelineError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if not 8 <= self.size <= 1024:
            raise PipelineError(f"size must be between 8 and 1024, got {self.size}")

    @property
    def channels(self) -> int:
        return 3 if self.mode == "color" else 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SkipImage(Exception):
    """This image cannot be used; the message says why."""


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, GIF or BMP header, without decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:2] == b"\xff\xd8":
        return _jpeg_dimensions(data)
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xDA)):  # standalone markers
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _reduction(width: int, height: int, spec: ResizeSpec) -> int:
    """Largest JPEG DCT scale-down (1, 2, 4, 8) that keeps enough pixels for the target."""
    needed_side = max(width, height) if spec.crop == "pad" else min(width, height)
    for factor in (8, 4, 2):
        if needed_side // factor >= spec.size * spec.decode_slack:
            return factor
    return 1


_REDUCED = {
    ("color", 1): cv2.IMREAD_COLOR, ("color", 2): cv2.IMREAD_REDUCED_COLOR_2,
    ("color", 4): cv2.IMREAD_REDUCED_COLOR_4, ("color", 8): cv2.IMREAD_REDUCED_COLOR_8,
    ("gray", 1): cv2.IMREAD_GRAYSCALE, ("gray", 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    ("gray", 4): cv2.IMREAD_REDUCED_GRAYSCALE_4, ("gray", 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def decode(data: bytes, spec: ResizeSpec) -> np.ndarray:
    """Decode to H×W×3 BGR or H×W gray uint8, reduced where the target allows."""
    if not data:
        raise SkipImage("empty file")
    dims = image_dimensions(data)
    if dims is not None:
        width, height = dims
        if width * height > spec.max_pixels:
            raise SkipImage(f"header claims {width}x{height} pixels, over the {spec.max_pixels:,}-pixel limit")
        _check_shape(width, height, spec)
    buffer = np.frombuffer(data, np.uint8)
    if data[:2] == b"\xff\xd8" and dims is not None:  # JPEG: no alpha, scaled decode
        image = cv2.imdecode(buffer, _REDUCED[spec.mode, _reduction(*dims, spec)])
    else:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if image is not None:
            image = _to_8bit_bgr_or_gray(image, spec.mode)
    if image is None or image.size == 0:
        raise SkipImage("not a decodable image (corrupt, truncated or unsupported)")
    _check_shape(image.shape[1], image.shape[0], spec)
    return image


def _check_shape(width: int, height: int, spec: ResizeSpec) -> None:
    if min(width, height) < spec.min_side:
        raise SkipImage(f"too small ({width}x{height}; at least {spec.min_side} pixels a side)")
    if max(width, height) > spec.max_aspect * min(width, height):
        raise SkipImage(f"extreme aspect ratio ({width}x{height}; at most {spec.max_aspect}:1)")


def _to_8bit_bgr_or_gray(image: np.ndarray, mode: str) -> np.ndarray:
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:  # composite over white, the usual background
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if mode == "gray":
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def fit(image: np.ndarray, spec: ResizeSpec) -> np.ndarray:
    """Crop or pad to a square and resize to spec.size; returns H×W×C RGB or H×W×1 gray."""
    height, width = image.shape[:2]
    if spec.crop == "center":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
    elif spec.crop == "pad":
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        image = cv2.copyMakeBorder(image, top, side - height - top, left, side - width - left,
                                   cv2.BORDER_CONSTANT, value=0)
    shrinking = image.shape[0] >= spec.size and image.shape[1] >= spec.size
    image = cv2.resize(image, (spec.size, spec.size),
                       interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    if image.ndim == 2:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_and_fit(path: Path, spec: ResizeSpec) -> np.ndarray:
    return fit(decode(path.read_bytes(), spec), spec)


@dataclass
class ResizeResult:
    images: np.ndarray  # N×H×W×C uint8
    kept: list[int]  # indices into the input paths
    skipped: dict[str, str]  # path name -> reason


def resize_all(
    paths: Sequence[Path],
    spec: ResizeSpec,
    *,
    names: Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ResizeResult:
    """Decode and resize every path on a thread pool (OpenCV releases the GIL)."""
    names = list(names) if names is not None else [p.name for p in paths]
    out = np.empty((len(paths), spec.size, spec.size, spec.channels), np.uint8)
    ok = np.zeros(len(paths), bool)
    skipped: dict[str, str] = {}

    def work(index: int) -> None:
        try:
            out[index] = load_and_fit(paths[index], spec)
            ok[index] = True
        except SkipImage as reason:
            skipped[names[index]] = str(reason)
        except (OSError, cv2.error) as err:
            skipped[names[index]] = f"unreadable: {err}".splitlines()[0]

    threads = workers or os.cpu_count() or 1
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallel across images, not inside each small resize
    try:
        with ThreadPoolExecutor(threads) as pool:
            for done, _ in enumerate(pool.map(work, range(len(paths))), 1):
                if progress and (done % 64 == 0 or done == len(paths)):
                    progress(done, len(paths))
    finally:
        cv2.setNumThreads(previous)
    kept = np.flatnonzero(ok)
    return ResizeResult(out[kept], kept.tolist(), skipped)
