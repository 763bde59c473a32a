"""Atomic file writes (a temporary file beside the target, then a rename), records as JSON, PNG encoding, and
torch files read as tensors only."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import struct
import tempfile
import types
import typing
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import numpy as np

from flower_pipeline.errors import PipelineError


def umask() -> int:
    """The process's umask, read without setting it (setting it, even back, races with other threads' files)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022  # no /proc (not Linux): the usual umask


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write` on a temp file in path's folder, then rename it to `path` (with the umask's mode, not the
    temp file's 0600: a report or a record is as readable as the user's other files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
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


# A record field holding a path the pipeline made: it must resolve inside the data root when read back. (A
# dataset's own source, the archive or folder a user named at `prepare`, is a plain str: it may be anywhere.)
DataPath = Annotated[str, "a path inside the data root"]
MAX_RECORD_BYTES = 1 << 20  # a stage record is paths, hashes and counts: kilobytes


def read_bounded(path: Path | str, what: str, max_bytes: int) -> bytes:
    """A small file read whole, or a one-line error naming it: a regular file (never a FIFO or a device, which
    would block or never end; opened without waiting for a writer) of at most `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PipelineError(f"{what} {path} is not a regular file")
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise PipelineError(f"cannot read the {what} {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        size = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes >> 10} KiB"
        raise PipelineError(f"{what} {path} is larger than {size}; refused")
    return data


def read_json(path: Path, what: str, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """A small JSON file read whole (`read_bounded`), or a one-line error naming it."""
    data = read_bounded(path, what, max_bytes)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise PipelineError(f"{what} {path} is not valid JSON (truncated or damaged: "
                            f"{str(err).splitlines()[0][:120]})") from None


def decode_record(cls: type, value: Any, root: Path | None = None) -> Any:
    """The record of type `cls` from `encode_record`'s data, every field checked against its declared type:
    nested records (also optional ones and tuples of them), plain values and containers of them. Unknown or
    missing fields, and values of another type, raise ValueError naming the field. With `root`, every `DataPath`
    must resolve (symlinks followed) inside it."""
    inside = root.resolve() if root is not None else None

    def check(kind: Any, item: Any, where: str) -> Any:
        if typing.get_origin(kind) is Annotated:
            checked = check(typing.get_args(kind)[0], item, where)
            if inside is not None and not Path(checked).resolve().is_relative_to(inside):
                raise ValueError(f"{where} {str(checked)[:200]!r} is outside the data folder {inside}")
            return checked
        if kind is Any or kind is object:
            return item
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin in (types.UnionType, typing.Union):
            if item is None and type(None) in args:
                return None
            (kind,) = [a for a in args if a is not type(None)]  # the project's unions are `X | None`
            return check(kind, item, where)
        if dataclasses.is_dataclass(kind):
            return decode(kind, item, where)
        if origin is tuple:
            _expect(item, list, where)
            return tuple(check(args[0], one, f"{where}[{i}]") for i, one in enumerate(item))
        if origin is list:
            _expect(item, list, where)
            return [check(args[0], one, f"{where}[{i}]") for i, one in enumerate(item)]
        if origin is dict:
            _expect(item, dict, where)
            return {k: check(args[1], v, f"{where}[{k!r}]") for k, v in item.items()}
        if kind is float:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError(f"{where} is {type(item).__name__}, not a number")
            return item
        _expect(item, kind, where)
        return item

    def decode(kind: type, item: Any, where: str) -> Any:
        _expect(item, dict, where)
        hints = typing.get_type_hints(kind, include_extras=True)
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(item) - names)
        if unknown:
            raise ValueError(f"{where} has an unknown field {unknown[0][:100]!r}")
        try:
            return kind(**{k: check(hints[k], v, f"{where}.{k}") for k, v in item.items()})
        except TypeError as err:  # a required field missing
            raise ValueError(f"{where}: {err}") from None

    return decode(cls, value, cls.__name__)


def _expect(item: Any, kind: type, where: str) -> None:
    if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
        raise ValueError(f"{where} is {type(item).__name__}, not {kind.__name__}")


MAX_WEIGHTS_BYTES = 2 << 30  # no file the pipeline writes comes near it: a larger one is not ours
MAX_PICKLE_BYTES = 16 << 20  # a weights file's structure (names, shapes, plain settings): kilobytes


def _check_torch_zip(path: Path) -> None:
    """Memory bounded by what the file holds, not by what it claims: torch's zip format, every record stored
    as it is (torch.save compresses none, so nothing inflates past the file's size), the pickled structure
    small."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise PipelineError(f"{path} is not a weights file of this pipeline (not torch's zip format)") from None
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED:
            raise PipelineError(f"{path} holds a compressed record ({member.filename[-60:]}), which torch never "
                                "writes; it is refused unread")
        if member.filename.endswith(".pkl") and member.file_size > MAX_PICKLE_BYTES:
            raise PipelineError(f"{path}: its structure is {member.file_size >> 20} MiB, more than the "
                                f"{MAX_PICKLE_BYTES >> 20} MiB of any weights file of ours; it is refused unread")


def load_tensors(path: Path, map_location: Any = "cpu") -> Any:
    """A torch file read as tensors and plain values only (`weights_only`): a pickle that would build other
    objects or run code is refused in one line, never run; so is a file whose records would inflate past
    MAX_WEIGHTS_BYTES or whose structure is larger than any of ours."""
    import pickle

    import torch

    try:
        if not path.is_file():
            raise PipelineError(f"{path} does not exist or is not a file")
        if path.stat().st_size > MAX_WEIGHTS_BYTES:
            raise PipelineError(f"{path} is larger than {MAX_WEIGHTS_BYTES >> 30} GiB; it is not a weights file")
        _check_torch_zip(path)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise PipelineError(f"{path} is not a tensors-only file: it holds objects whose loading could run code, "
                            "so it is refused") from None
    except MemoryError:
        raise PipelineError(f"{path} needs more memory than a weights file of ours; it is refused") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise PipelineError(f"{path} is not a readable weights file ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0][:160] if str(err).strip() else 'empty'})") from None


def load_weights(model: Any, state: Any, path: Path) -> Any:
    """`state` loaded into `model` after checking it is what the model expects: the same names, shapes and
    dtypes, and every float finite. A file with NaN, infinite, int or reshaped weights is refused in one line."""
    import torch

    expected = model.state_dict()
    if not isinstance(state, dict):
        raise PipelineError(f"{path} holds no weights of this pipeline's networks")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise PipelineError(f"{path} does not fit the network: {'missing' if missing else 'unexpected'} "
                            f"weights {str(name)[:80]!r}")
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor) or got.dtype != want.dtype or got.shape != want.shape:
            found = f"{got.dtype} {tuple(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
            raise PipelineError(f"{path} does not fit the network: {name} is {found}, not {want.dtype} "
                                f"{tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise PipelineError(f"{path} holds NaN or infinite weights ({name}); it is refused")
    model.load_state_dict(state)
    return model


def plain_number(saved: dict[str, Any], key: str, low: int, high: int, path: Path) -> int:
    """An int a weights file states about its network (its image size, channels, widths), held to the range the
    settings allow before any network is built from it: a file's own numbers never size the memory."""
    value = saved.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PipelineError(f"{path}: {key} is {str(value)[:40]}, outside {low}-{high}; it is not a weights file "
                            "of this pipeline")
    return value


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

