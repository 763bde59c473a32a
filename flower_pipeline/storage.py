"""Atomic file writes (a temporary file beside the target, then a rename), records as JSON, PNG encoding, and
torch files read as tensors only."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import tempfile
import types
import typing
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from flower_pipeline.errors import PipelineError


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
        if typing.get_origin(kind) is tuple and item is not None:  # `tuple[Record, ...]`
            return tuple(field(typing.get_args(kind)[0], one) for one in item)
        return decode_record(kind, item) if dataclasses.is_dataclass(kind) and item is not None else item

    return cls(**{k: field(hints[k], v) for k, v in value.items()})


MAX_WEIGHTS_BYTES = 2 << 30  # no file the pipeline writes comes near it: a larger one is not ours


def load_tensors(path: Path, map_location: Any = "cpu") -> Any:
    """A torch file read as tensors and plain values only (`weights_only`): a pickle that would build other
    objects or run code is refused in one line, never run."""
    import pickle

    import torch

    try:
        if not path.is_file():
            raise PipelineError(f"{path} does not exist or is not a file")
        if path.stat().st_size > MAX_WEIGHTS_BYTES:
            raise PipelineError(f"{path} is larger than {MAX_WEIGHTS_BYTES >> 30} GiB; it is not a weights file")
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise PipelineError(f"{path} is not a tensors-only file: it holds objects whose loading could run code, "
                            "so it is refused") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise PipelineError(f"{path} is not a readable weights file ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0][:160] if str(err).strip() else 'empty'})") from None


FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch's switch: every load reads tensors only


@contextlib.contextmanager
def tensors_only_loads() -> Iterator[None]:
    """For a library that calls `torch.load(weights_only=False)` itself (torch-fidelity's Inception): torch's
    own switch makes every load in the block read tensors only."""
    saved = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = saved

