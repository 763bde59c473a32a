"""Atomic file writes (a temporary file beside the target, then a rename), records as JSON, PNG encoding."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import tempfile
import types
import typing
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write` on a temp file in path's folder, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an H×W×3 RGB or H×W×1 gray uint8 image as PNG (zlib only: no OpenCV needed)."""
    image = np.ascontiguousarray(image, np.uint8)
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    color_type = {1: 0, 3: 2}[channels]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def encode_record(value: Any) -> Any:
    """A record (frozen dataclass of paths, numbers, nested records) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode_record(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: encode_record(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_record(v) for v in value]
    return value


def decode_record(cls: type, value: dict[str, Any]) -> Any:
    """The record of type `cls` from `encode_record`'s data; nested records (also optional ones) included."""
    hints = typing.get_type_hints(cls)

    def field(kind: Any, item: Any) -> Any:
        if isinstance(kind, types.UnionType) and item is not None:  # `Record | None`
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        return decode_record(kind, item) if dataclasses.is_dataclass(kind) and item is not None else item

    return cls(**{k: field(hints[k], v) for k, v in value.items()})
