"""Fetching archives: resumable HTTP(S) downloads and local files, always verified.

A download streams into `<name>.part`, resumes it with an HTTP Range request
after a dropped connection, verifies the checksum and only then renames it to
its final name, so a file under the final name is always complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flower_pipeline.errors import PipelineError

ProgressFn = Callable[[int, int | None], None]
CHUNK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256" or "md5"
    hexdigest: str

    @classmethod
    def parse(cls, sha256: str | None = None, md5: str | None = None) -> Checksum | None:
        if sha256 and md5:
            raise PipelineError("give either --sha256 or --md5, not both")
        algorithm, value, length = ("sha256", sha256, 64) if sha256 else ("md5", md5, 32)
        if not value:
            return None
        value = value.strip().lower()
        if len(value) != length or any(c not in "0123456789abcdef" for c in value):
            raise PipelineError(f"{algorithm} checksum must be {length} hex digits, got {value!r}")
        return cls(algorithm, value)


@dataclass(frozen=True)
class FetchedFile:
    path: Path
    sha256: str
    size: int
    downloaded: bool  # False when a verified local or already-present file was used


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def local_path(source: str) -> Path:
    """A local source as a path: a plain path, or a file:// URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(source).expanduser()


def file_digests(path: Path) -> dict[str, str]:
    """sha256 and md5 of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _verify(path: Path, expected: Checksum | None, what: str) -> str:
    digests = file_digests(path)
    if expected and digests[expected.algorithm] != expected.hexdigest:
        raise PipelineError(
            f"{expected.algorithm} mismatch for {what}: expected {expected.hexdigest}, "
            f"got {digests[expected.algorithm]}"
        )
    return digests["sha256"]


def fetch(
    source: str,
    dest_dir: Path,
    *,
    checksum: Checksum | None = None,
    filename: str | None = None,
    progress: ProgressFn | None = None,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
) -> FetchedFile:
    """Return a verified local copy of `source` (a URL or a local path).

    Local files are verified and used where they are, never copied. URLs are
    downloaded into `dest_dir`; a verified file already there is reused.
    """
    if not is_url(source):
        path = local_path(source)
        # A device, a pipe, or a kernel file under /proc or /sys (which calls itself regular): never an archive.
        if path.exists() and (not path.is_file() or path.resolve().parts[1:2] in (("proc",), ("sys",), ("dev",))):
            raise PipelineError(f"{path} is not a regular file or folder")
        if not path.is_file():
            raise PipelineError(f"source file not found: {path}")
        sha256 = _verify(path, checksum, str(path))
        return FetchedFile(path.resolve(), sha256, path.stat().st_size, downloaded=False)

    name = filename or Path(urllib.parse.urlparse(source).path).name or "download"
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / name
    if final.is_file():
        try:
            sha256 = _verify(final, checksum, str(final))
            return FetchedFile(final, sha256, final.stat().st_size, downloaded=False)
        except PipelineError:
            final.unlink()  # stale or corrupt copy: download again

    part = final.with_name(final.name + ".part")
    _download_with_retries(source, part, progress, retries, backoff_s, timeout_s)
    try:
        sha256 = _verify(part, checksum, source)
    except PipelineError as err:
        part.unlink(missing_ok=True)
        raise PipelineError(f"{err}; the download was deleted") from None
    os.replace(part, final)
    return FetchedFile(final, sha256, final.stat().st_size, downloaded=True)


def _download_with_retries(
    url: str, part: Path, progress: ProgressFn | None, retries: int, backoff_s: float, timeout_s: float
) -> None:
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _download_once(url, part, progress, timeout_s)
            return
        except urllib.error.HTTPError as err:
            last_error = f"HTTP {err.code} {err.reason}"
            if 400 <= err.code < 500 and err.code not in (408, 429):
                break  # the server will not change its mind
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            last_error = f"{type(err).__name__}: {reason}"
    raise PipelineError(
        f"could not download {url} ({last_error}); with no network, pass --source with a "
        "mirror URL or a local copy of the file (and its --sha256 or --md5)"
    )


def _download_once(url: str, part: Path, progress: ProgressFn | None, timeout_s: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "flower-pipeline"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the part file is complete
            return
        raise
    with response:
        if response.status == 206:
            mode = "ab"
            total = _content_range_total(response.headers.get("Content-Range"))
        else:
            mode, have = "wb", 0  # server ignored the range: start over
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        done = have
        with open(part, mode) as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    if total is not None and done < total:
        raise http.client.IncompleteRead(b"", total - done)


def _content_range_total(header: str | None) -> int | None:
    # "bytes 100-199/200" -> 200
    if header and "/" in header:
        total = header.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    return None
