import hashlib
from pathlib import Path

import pytest

from flower_pipeline.download import Checksum, fetch
from flower_pipeline.errors import PipelineError

DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()


def test_download_verifies_and_places_atomically(http_server, tmp_path):
    http_server.files["a.tgz"] = DATA
    seen = []
    got = fetch(http_server.url("a.tgz"), tmp_path, checksum=Checksum("sha256", SHA),
                progress=lambda done, total: seen.append((done, total)))
    assert got.path == tmp_path / "a.tgz" and got.path.read_bytes() == DATA and got.downloaded
    assert seen[-1] == (len(DATA), len(DATA))
    assert not list(tmp_path.glob("*.part"))


def test_dropped_connection_resumes_with_range(http_server, tmp_path):
    http_server.files["a.tgz"] = DATA
    http_server.drop_after["a.tgz"] = 300_000
    got = fetch(http_server.url("a.tgz"), tmp_path, checksum=Checksum("sha256", SHA), backoff_s=0.01)
    assert got.path.read_bytes() == DATA
    ranges = [r for _, r in http_server.requests]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:].rstrip("-")) > 0  # resumed part way, not from zero


def test_wrong_bytes_fail_the_checksum_and_leave_nothing(http_server, tmp_path):
    http_server.files["a.tgz"] = DATA[:-1] + b"x"
    with pytest.raises(PipelineError, match="sha256 mismatch"):
        fetch(http_server.url("a.tgz"), tmp_path, checksum=Checksum("sha256", SHA))
    assert list(tmp_path.iterdir()) == []


def test_md5_is_accepted(http_server, tmp_path):
    http_server.files["a.tgz"] = DATA
    fetch(http_server.url("a.tgz"), tmp_path, checksum=Checksum.parse(md5=hashlib.md5(DATA).hexdigest()))


def test_verified_file_is_reused_without_a_request(http_server, tmp_path):
    http_server.files["a.tgz"] = DATA
    fetch(http_server.url("a.tgz"), tmp_path, checksum=Checksum("sha256", SHA))
    again = fetch(http_server.url("a.tgz"), tmp_path, checksum=Checksum("sha256", SHA))
    assert not again.downloaded and len(http_server.requests) == 1


def test_http_error_and_no_network_give_one_clear_line(http_server, tmp_path):
    with pytest.raises(PipelineError, match="HTTP 404") as err:
        fetch(http_server.url("missing.tgz"), tmp_path, backoff_s=0.01)
    assert "\n" not in str(err.value) and "--source" in str(err.value)
    with pytest.raises(PipelineError, match=r"could not download .*mirror URL or a local copy"):
        fetch("http://127.0.0.1:9/none.tgz", tmp_path, retries=1, backoff_s=0.01)


def test_local_file_is_verified_in_place(tmp_path):
    local = tmp_path / "mine.tgz"
    local.write_bytes(DATA)
    got = fetch(str(local), tmp_path / "downloads", checksum=Checksum("sha256", SHA))
    assert got.path == local and not (tmp_path / "downloads").exists()
    with pytest.raises(PipelineError, match="mismatch"):
        fetch(str(local), tmp_path, checksum=Checksum("sha256", "0" * 64))
    with pytest.raises(PipelineError, match="not found"):
        fetch(str(tmp_path / "nope.tgz"), tmp_path)


@pytest.mark.parametrize("sha256, md5", [("abc", None), (None, "zz" * 16), ("a" * 64, "b" * 32)])
def test_bad_checksums_are_refused(sha256, md5):
    with pytest.raises(PipelineError):
        Checksum.parse(sha256, md5)


def test_no_partial_file_under_final_name_after_failure(http_server, tmp_path: Path):
    http_server.files["a.tgz"] = DATA
    http_server.drop_after["a.tgz"] = 1000
    with pytest.raises(PipelineError):
        fetch(http_server.url("a.tgz"), tmp_path, retries=0)
    assert list(tmp_path.iterdir()) == []  # nothing under the final name, and no partial file left to fill the disk
