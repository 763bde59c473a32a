import gzip
import io
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
from conftest import flowers_like, jpeg, make_tgz, make_zip

from flower_pipeline.errors import PipelineError
from flower_pipeline.extract import ExtractLimits, extract_archive


def _write(tmp_path: Path, data: bytes, name: str = "a.tgz") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _tar_with(tmp_path: Path, configure) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("jpg/image_0001.jpg"), io.BytesIO(b""))
        good = jpeg()
        info = tarfile.TarInfo("jpg/image_0002.jpg")
        info.size = len(good)
        tar.addfile(info, io.BytesIO(good))
        configure(tar)
    return _write(tmp_path, buffer.getvalue())


def _nothing_outside(tmp_path: Path, target: Path) -> None:
    allowed = {tmp_path / "a.tgz", tmp_path / "a.zip", tmp_path / "data"}
    for path in tmp_path.rglob("*"):
        assert any(path == a or a in path.parents for a in allowed), f"wrote {path}"
    assert not any(p.name.startswith(".out.tmp") for p in target.parent.iterdir())


def test_tgz_and_zip_extract_and_rerun_is_reused(tmp_path):
    for name, data in (("a.tgz", make_tgz(flowers_like(3))), ("a.zip", make_zip(flowers_like(3)))):
        target = tmp_path / "data" / name
        result = extract_archive(_write(tmp_path, data, name), target, archive_sha256=name)
        assert result.images == [f"jpg/image_000{i}.jpg" for i in (1, 2, 3)] and not result.reused
        assert extract_archive(tmp_path / name, target, archive_sha256=name).reused


@pytest.mark.parametrize("members, message", [
    ({"../evil.jpg": b"x"}, "outside"),
    ({"/etc/evil.jpg": b"x"}, "absolute"),
    ({"jpg/../../evil.jpg": b"x"}, "outside"),
])
def test_escaping_members_refuse_the_archive(tmp_path, members, message):
    archive = _write(tmp_path, make_tgz({**flowers_like(1), **members}))
    target = tmp_path / "data" / "out"
    with pytest.raises(PipelineError, match=message):
        extract_archive(archive, target, archive_sha256="x")
    assert not target.exists()
    _nothing_outside(tmp_path, target)


def test_zip_with_escaping_member_is_refused(tmp_path):
    archive = _write(tmp_path, make_zip({**flowers_like(1), "../../evil.jpg": b"x"}), "a.zip")
    with pytest.raises(PipelineError, match="outside"):
        extract_archive(archive, tmp_path / "data" / "out", archive_sha256="x")


def _symlink(tar):
    info = tarfile.TarInfo("jpg/link.jpg")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(info)


def _hardlink(tar):
    info = tarfile.TarInfo("jpg/hard.jpg")
    info.type, info.linkname = tarfile.LNKTYPE, "../../../etc/passwd"
    tar.addfile(info)


def _device(tar):
    info = tarfile.TarInfo("jpg/dev.jpg")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(info)


@pytest.mark.parametrize("add, name", [(_symlink, "jpg/link.jpg"), (_hardlink, "jpg/hard.jpg"),
                                       (_device, "jpg/dev.jpg")])
def test_links_and_devices_are_skipped_and_reported(tmp_path, add, name):
    target = tmp_path / "data" / "out"
    result = extract_archive(_tar_with(tmp_path, add), target, archive_sha256="x")
    assert name in result.skipped
    assert not (target / name).exists() and not (target / name).is_symlink()
    _nothing_outside(tmp_path, target)


@pytest.mark.parametrize("data, message", [
    (make_tgz(flowers_like(3))[:-400], "truncated or corrupt gzip"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
    (b"", "empty"),
    (b"\x00\x01garbage" * 100, "not a readable tar or zip"),
    (make_tgz({"README.txt": b"hello"}), "no image files"),
])
def test_unusable_archives_get_one_clear_line(tmp_path, data, message):
    target = tmp_path / "data" / "out"
    with pytest.raises(PipelineError, match=message) as err:
        extract_archive(_write(tmp_path, data), target, archive_sha256="x")
    assert "\n" not in str(err.value)
    assert not target.exists()
    _nothing_outside(tmp_path, target)


def test_archive_bomb_is_stopped_before_it_fills_the_disk(tmp_path):
    # A tar of 64 MiB of zeros compresses to a few dozen KiB; the limit is 8 MiB.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("jpg/zeros.jpg")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    archive = _write(tmp_path, gzip.compress(raw.getvalue(), 1))
    assert archive.stat().st_size < 1 << 20
    target = tmp_path / "data" / "out"
    with pytest.raises(PipelineError, match="limit"):
        extract_archive(archive, target, archive_sha256="x",
                        limits=ExtractLimits(max_total_bytes=8 << 20, max_member_bytes=8 << 20))
    assert not target.exists() and sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 2 << 20


def test_a_failed_extraction_keeps_the_previous_good_one(tmp_path):
    target = tmp_path / "data" / "out"
    extract_archive(_write(tmp_path, make_tgz(flowers_like(2))), target, archive_sha256="good")
    with pytest.raises(PipelineError):
        extract_archive(_write(tmp_path, b"<html>"), target, archive_sha256="bad")
    assert len(list((target / "jpg").iterdir())) == 2


def test_a_zip_declaring_more_than_the_limit_is_refused_before_writing(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(make_zip({f"{i}.jpg": bytes(500_000) for i in range(3)}))
    limits = ExtractLimits(max_total_bytes=1_000_000, max_member_bytes=600_000)
    with pytest.raises(PipelineError, match="declares 1,500,000 bytes in all, over the 1,000,000-byte limit"):
        extract_archive(archive, tmp_path / "out", archive_sha256="x", limits=limits)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_nested_archives_duplicates_and_long_names_are_skipped_and_reported(tmp_path):
    good, bad = jpeg(seed=1), b"\xff\xd8 corrupt later copy"
    members = {"a.jpg": good, "inner.zip": make_zip({"x.jpg": good}), "b" * 300 + ".jpg": good,
               "deep/" + "/".join(["d" * 100] * 60) + ".jpg": good, "moving.gif": b"GIF89a animated"}
    archive = tmp_path / "mixed.tgz"
    archive.write_bytes(make_tgz(members))
    result = extract_archive(archive, tmp_path / "out", archive_sha256="x")
    assert result.images == ["a.jpg"]
    reasons = " | ".join(result.skipped.values())
    assert "an archive inside the archive" in result.skipped["inner.zip"]
    assert result.skipped["moving.gif"] == "a GIF (often animated) is not read; convert it to PNG"
    assert reasons.count("name too long") == 2
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf:
        zf.writestr("a.jpg", good)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
            zf.writestr("a.jpg", bad)
    result = extract_archive(dup, tmp_path / "dup", archive_sha256="y")
    assert (tmp_path / "dup" / "a.jpg").read_bytes() == good
    assert result.skipped == {"a.jpg": "a second member of this name; the first was kept"}
