"""Fetching archives: resumable HTTP(S) downloads and local files, always verified.

A download streams into `<name>.part`, resumes it with an HTTP Range request
after a dropped connection, verifies the checksum and only then renames it to
its final name, so a file under the final name is always complete. It is
bounded (`DownloadLimits`): an overall deadline, a stall rule and a size cap.
Without a checksum, the verified file's size, sha256, ETag and Last-Modified
are stored beside it (`<name>.download.json`), and the file is reused only
while it still matches them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flower_pipeline.errors import PipelineError, redact
from flower_pipeline.settings import setting
from flower_pipeline.storage import atomic_write_json

ProgressFn = Callable[[int, int | None], None]
CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadLimits:
    """Bounds on one download, retries included. Each error names the limit it hit and how to change it."""

    deadline_s: float = setting(3600.0, "Seconds a whole download (retries included) may take.")
    stall_s: float = setting(60.0, "A download that gets under stall_bytes in this many seconds (or no answer) "
                                   "is abandoned.")
    stall_bytes: int = setting(64 << 10, "Bytes that must arrive in every stall_s window.")
    max_bytes: int = setting(2 << 30, "Largest download; a catalogued file's known size bound is used instead.")

    def hint(self, setting: str) -> str:
        return f"raise it with --download-{setting.replace('_', '-')} (raw_archive's {setting} in the launchpad)"


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
    """A local source as a path: a plain path, or a file:// URL (ftp:// and the like are named unsupported)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme not in ("", "file") and "://" in source:
        raise PipelineError(f"{parsed.scheme}:// sources are not supported: use http(s)://, file:// or a local path")
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
    limits: DownloadLimits | None = None,
) -> FetchedFile:
    """Return a verified local copy of `source` (a URL or a local path).

    Local files are verified and used where they are, never copied. URLs are
    downloaded into `dest_dir`; a verified file already there is reused (with no
    checksum: only while it matches the record kept beside it).
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

    refuse_credentials(source)
    name = filename or Path(urllib.parse.urlparse(source).path).name or "download"
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / name
    record = record_path(final)
    if final.is_file():
        try:
            sha256 = _verify(final, checksum, str(final))
            if checksum is None:  # nothing to check against but what was recorded when it was downloaded
                kept = json.loads(record.read_text()) if record.is_file() else {}
                if kept.get("sha256") != sha256 or kept.get("size") != final.stat().st_size:
                    raise PipelineError("no matching download record")
            return FetchedFile(final, sha256, final.stat().st_size, downloaded=False)
        except (PipelineError, ValueError):
            forget(final)  # stale, corrupt or unrecorded copy: download again

    part = final.with_name(final.name + ".part")
    try:
        headers = _download_with_retries(source, part, progress, retries, backoff_s, timeout_s,
                                         limits or DownloadLimits())
    except Exception:  # a cap, a deadline, a refusal: no partial file is left to fill the disk
        part.unlink(missing_ok=True)
        raise
    try:
        sha256 = _verify(part, checksum, redact(source))
    except PipelineError as err:
        part.unlink(missing_ok=True)
        raise PipelineError(f"{err}; the download was deleted") from None
    os.replace(part, final)
    atomic_write_json(record, {"source": redact(source), "size": final.stat().st_size, "sha256": sha256,
                               "etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified")})
    return FetchedFile(final, sha256, final.stat().st_size, downloaded=True)


def record_path(downloaded: Path) -> Path:
    return downloaded.with_name(downloaded.name + ".download.json")


def forget(downloaded: Path) -> None:
    """Delete a downloaded file and its record, so the next run asks the server again."""
    downloaded.unlink(missing_ok=True)
    record_path(downloaded).unlink(missing_ok=True)


def _download_with_retries(
    url: str, part: Path, progress: ProgressFn | None, retries: int, backoff_s: float, timeout_s: float,
    limits: DownloadLimits,
) -> dict[str, str]:
    deadline = time.monotonic() + limits.deadline_s
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(backoff_s * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
        try:
            return _download_once(url, part, progress, timeout_s, limits, deadline)
        except urllib.error.HTTPError as err:
            last_error = f"HTTP {err.code} {err.reason}"
            if 400 <= err.code < 500 and err.code not in (408, 429):
                break  # the server will not change its mind
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            if isinstance(reason, TimeoutError):  # silence for a whole stall window: asking again will not help
                raise PipelineError(f"{redact(url)} did not answer for {limits.stall_s:g} s; "
                                    f"{limits.hint('stall_s')}") from None
            last_error = f"{type(err).__name__}: {reason}"
    if time.monotonic() >= deadline:
        raise PipelineError(f"downloading {redact(url)} passed its deadline of {limits.deadline_s:g} s "
                            f"({last_error or 'no answer'}); {limits.hint('deadline_s')}")
    raise PipelineError(
        f"could not download {redact(url)} ({last_error}); with no network, pass --source with a "
        "mirror URL or a local copy of the file (and its --sha256 or --md5)"
    )


class _HttpOnly(urllib.request.HTTPRedirectHandler):
    """Redirects may lead to http(s) only (never ftp: or file:), and a loop is one plain error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlparse(newurl).scheme not in ("http", "https"):
            raise PipelineError(f"{redact(req.full_url)} redirects to {redact(newurl)}: only http(s) redirects "
                                "are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as err:
            if "redirect" in str(err.msg).lower():
                raise PipelineError(f"{redact(req.full_url)} redirects in a loop (or more than "
                                    f"{self.max_redirections} times)") from None
            raise

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302  # type: ignore[assignment]


_OPENER = urllib.request.build_opener(_HttpOnly)


def refuse_credentials(url: str) -> None:
    """Credentials in a URL would be shown and stored with the run's config: they belong in a netrc file."""
    parsed = urllib.parse.urlparse(url)
    if parsed.username is not None or parsed.password is not None:
        raise PipelineError(f"{redact(url)} carries credentials; put them in ~/.netrc (or the file $NETRC names) "
                            f"as 'machine {parsed.hostname} login USER password PASSWORD' and use the URL without "
                            "them")


def _netrc_authorization(url: str) -> str | None:
    """A Basic Authorization header from ~/.netrc (or $NETRC) for the URL's host, if it has an entry."""
    import base64
    import netrc

    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(urllib.parse.urlparse(url).hostname or "")
    except (FileNotFoundError, netrc.NetrcParseError):
        return None
    if entry is None:
        return None
    login, _, password = entry
    return "Basic " + base64.b64encode(f"{login}:{password or ''}".encode()).decode()


def _download_once(url: str, part: Path, progress: ProgressFn | None, timeout_s: float, limits: DownloadLimits,
                   deadline: float) -> dict[str, str]:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "flower-pipeline"})
    if authorization := _netrc_authorization(url):
        request.add_unredirected_header("Authorization", authorization)  # never sent on to a redirect's host
    if have:
        request.add_header("Range", f"bytes={have}-")
    wait = max(0.1, min(timeout_s, limits.stall_s, deadline - time.monotonic()))
    try:
        response = _OPENER.open(request, timeout=wait)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the part file is complete
            return dict(err.headers or {})
        raise
    with response:
        if response.status == 206:
            mode = "ab"
            total = _content_range_total(response.headers.get("Content-Range"))
        else:
            mode, have = "wb", 0  # server ignored the range: start over
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None and total > limits.max_bytes:
            raise PipelineError(f"{redact(url)} announces {total:,} bytes, over the {limits.max_bytes:,}-byte cap; "
                                f"{limits.hint('max_bytes')}")
        done, window_start, window_done = have, time.monotonic(), have
        with open(part, mode) as f:
            while chunk := response.read1(CHUNK):  # what has arrived: a trickle cannot hide in one long read
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
                now = time.monotonic()
                if done > limits.max_bytes:
                    raise PipelineError(f"{redact(url)} sent more than the {limits.max_bytes:,}-byte cap; "
                                        f"{limits.hint('max_bytes')}")
                if now >= deadline:
                    raise PipelineError(f"downloading {redact(url)} passed its deadline of {limits.deadline_s:g} s "
                                        f"at {done:,} bytes; {limits.hint('deadline_s')}")
                if now - window_start >= limits.stall_s:
                    if done - window_done < limits.stall_bytes:
                        raise PipelineError(f"{redact(url)} stalled: {done - window_done:,} bytes in "
                                            f"{now - window_start:.0f} s (under {limits.stall_bytes:,} in "
                                            f"{limits.stall_s:g} s); {limits.hint('stall_s')}")
                    window_start, window_done = now, done
    if total is not None and done < total:
        raise http.client.IncompleteRead(b"", total - done)
    return dict(response.headers)


def _content_range_total(header: str | None) -> int | None:
    # "bytes 100-199/200" -> 200
    if header and "/" in header:
        total = header.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    return None
