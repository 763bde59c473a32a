"""Safe extraction of tar and zip archives.

Only regular files are extracted, into a temporary folder that is renamed into
place once everything is written. Members that would escape the target
(absolute paths, `..`) make the whole archive refused; links and device nodes
are skipped and reported; sizes are bounded so an archive bomb stops early.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from flower_pipeline.errors import PipelineError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Image formats the pipeline does not read, reported by name instead of silently left out.
UNREAD_IMAGES = {".gif": "a GIF (often animated) is not read; convert it to PNG",
                 ".heic": "HEIC is not read; convert it to JPEG", ".avif": "AVIF is not read; convert it to PNG",
                 ".svg": "a vector image is not read; render it to PNG"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".xz", ".7z", ".rar")
MAX_NAME_PART, MAX_PATH = 255, 4096  # what file systems take
MARKER = ".extracted.json"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractLimits:
    max_total_bytes: int = 4 << 30
    max_member_bytes: int = 256 << 20
    max_members: int = 200_000


@dataclass
class ExtractResult:
    root: Path
    images: list[str]  # relative POSIX paths, sorted
    skipped: dict[str, str] = field(default_factory=dict)  # member name -> why
    total_bytes: int = 0
    reused: bool = False


@dataclass(frozen=True)
class _Member:
    name: str
    kind: str  # "file", "dir", "link", "device"
    size: int
    open: Callable[[], IO[bytes]]  # for files: a reader of the member's bytes


def list_images(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def extract_archive(
    archive: Path, target: Path, *, archive_sha256: str, limits: ExtractLimits | None = None
) -> ExtractResult:
    """Extract `archive` into `target`, or reuse `target` if it holds this archive already."""
    marker = target / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("archive_sha256") == archive_sha256:
            return ExtractResult(target, list_images(target), info.get("skipped", {}),
                                 info.get("total_bytes", 0), reused=True)

    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by an extraction that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        skipped, total = _extract_members(archive, staging, limits or ExtractLimits())
        images = list_images(staging)
        if not images:
            raise PipelineError(f"{archive.name} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        (staging / MARKER).write_text(json.dumps(
            {"archive_sha256": archive_sha256, "skipped": skipped, "total_bytes": total}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExtractResult(target, images, skipped, total)


def _extract_members(archive: Path, dest: Path, limits: ExtractLimits) -> tuple[dict[str, str], int]:
    try:
        return _copy_members(archive, dest, limits)
    except OSError as err:
        if err.errno == errno.ENOSPC:  # the writing side failed, not the archive
            raise PipelineError(f"disk full while extracting {archive.name} into {dest}") from None
        raise PipelineError(_describe_unreadable(archive, err)) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        # Raised while reading a member's bytes: the archive is cut short or corrupt.
        raise PipelineError(_describe_unreadable(archive, err)) from None


def _copy_members(archive: Path, dest: Path, limits: ExtractLimits) -> tuple[dict[str, str], int]:
    _check_declared_total(archive, limits)
    skipped: dict[str, str] = {}
    seen: set[PurePosixPath] = set()
    total = count = 0
    for member in _members(archive):
        count += 1
        if count > limits.max_members:
            raise PipelineError(f"{archive.name} has more than {limits.max_members} members; refusing it")
        relative = _safe_relative(member.name, archive.name)
        if member.kind == "dir" or relative is None:
            continue
        if member.kind != "file":
            skipped[member.name] = f"{member.kind} member not extracted"
            continue
        if relative in seen:
            skipped[member.name] = "a second member of this name; the first was kept"
            continue
        if len(str(relative).encode()) > MAX_PATH or any(len(p.encode()) > MAX_NAME_PART for p in relative.parts):
            skipped[member.name[:80] + "…"] = "name too long for a file system; not extracted"
            continue
        if relative.suffix.lower() in UNREAD_IMAGES:
            skipped[member.name] = UNREAD_IMAGES[relative.suffix.lower()]
            continue
        if relative.name.lower().endswith(ARCHIVE_SUFFIXES):
            skipped[member.name] = "an archive inside the archive; not extracted (extract it first)"
            continue
        seen.add(relative)
        if member.size > limits.max_member_bytes:
            raise PipelineError(
                f"{archive.name}: member {member.name} declares {member.size:,} bytes, over the "
                f"{limits.max_member_bytes:,}-byte limit; refusing it")
        out = dest / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        with member.open() as src, open(out, "wb") as dst:
            written = 0
            while chunk := src.read(COPY_CHUNK):
                written += len(chunk)
                total += len(chunk)
                # Checked on the bytes actually read: a header may understate them.
                if written > limits.max_member_bytes or total > limits.max_total_bytes:
                    raise PipelineError(
                        f"{archive.name} expands past its size limit "
                        f"({limits.max_total_bytes:,} bytes in all, {limits.max_member_bytes:,} a file); "
                        "refusing it")
                dst.write(chunk)
    return skipped, total


def _check_declared_total(archive: Path, limits: ExtractLimits) -> None:
    """A zip says how much it holds: refuse a bomb before writing a byte (the bytes read are checked too)."""
    if not zipfile.is_zipfile(archive):
        return
    with zipfile.ZipFile(archive) as zf:
        declared = sum(info.file_size for info in zf.infolist())
    if declared > limits.max_total_bytes:
        raise PipelineError(f"{archive.name} declares {declared:,} bytes in all, over the "
                            f"{limits.max_total_bytes:,}-byte limit; refusing it")


def _safe_relative(name: str, archive_name: str) -> PurePosixPath | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise PipelineError(f"{archive_name}: member {name!r} has an absolute path; refusing the archive")
    if ".." in path.parts:
        raise PipelineError(f"{archive_name}: member {name!r} points outside the archive; refusing it")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _members(archive: Path) -> Iterator[_Member]:
    size = archive.stat().st_size
    if size == 0:
        raise PipelineError(f"{archive.name} is empty (0 bytes)")
    if zipfile.is_zipfile(archive):
        yield from _zip_members(archive)
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:  # streams: a bomb is stopped before it is read through
                kind = ("file" if info.isreg() else "dir" if info.isdir() else
                        "link" if info.issym() or info.islnk() else "device")
                yield _Member(info.name, kind, info.size, lambda info=info: _tar_reader(tar, info))
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise PipelineError(_describe_unreadable(archive, err)) from None


def _tar_reader(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    reader = tar.extractfile(info)
    assert reader is not None  # regular members always have a reader
    return reader


def _zip_members(archive: Path) -> Iterator[_Member]:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records none
                kind = ("dir" if info.is_dir() else "link" if file_type == stat.S_IFLNK else
                        "device" if file_type not in (0, stat.S_IFREG) else "file")
                yield _Member(info.filename, kind, info.file_size, lambda info=info: zf.open(info))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise PipelineError(_describe_unreadable(archive, err)) from None


def _describe_unreadable(archive: Path, err: Exception) -> str:
    head = archive.read_bytes()[:64] if archive.exists() else b""
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return f"{archive.name} is an HTML/XML page, not an archive (a failed download saved as a file?)"
    if head[:2] == b"\x1f\x8b":
        return f"{archive.name} is a truncated or corrupt gzip archive ({str(err).splitlines()[0]})"
    return f"{archive.name} is not a readable tar or zip archive"
