"""Downloads are bounded and never poison the cache: loopback servers that trickle, hang, stream forever,
redirect badly or answer with an error page."""

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from conftest import flowers_like, make_tgz

from flower_pipeline.catalog import get_dataset
from flower_pipeline.download import DownloadLimits, fetch, record_path
from flower_pipeline.errors import PipelineError
from flower_pipeline.ingest import extract_images, fetch_raw_archive
from flower_pipeline.layout import DataLayout

LIMITS = DownloadLimits(deadline_s=4, stall_s=1, stall_bytes=1000, max_bytes=1_000_000)


class Hostile(BaseHTTPRequestHandler):
    page = b""  # what /mine.tgz serves; tests switch it
    gets: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # every loop below stops by itself within seconds
        Hostile.gets.append(self.path)
        if self.path == "/trickle":
            self.send_response(200)
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        elif self.path == "/steady":  # fast enough for the stall rule, too slow for the deadline
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(bytes(2000))
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/silent":
            time.sleep(3)
        elif self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            for _ in range(400):  # up to 100 MB, far past the cap
                self.wfile.write(bytes(256 << 10))
        elif self.path == "/declares-a-terabyte":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif self.path in ("/loop", "/to-ftp"):
            self.send_response(302)
            self.send_header("Location", "/loop" if self.path == "/loop" else "ftp://127.0.0.1/x.tgz")
            self.end_headers()
        elif self.path == "/mine.tgz":
            self.send_response(200)
            self.send_header("Content-Length", str(len(Hostile.page)))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(Hostile.page)


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hostile.gets = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("path", "message"), [
    ("trickle", r"stalled: \d+ bytes in \d+ s .*raise it with --download-stall-s"),
    ("steady", r"passed its deadline of 4 s at [\d,]+ bytes; raise it with --download-deadline-s"),
    ("silent", r"did not answer for 1 s; raise it with --download-stall-s"),
    ("endless", r"sent more than the 1,000,000-byte cap; raise it with --download-max-bytes"),
    ("declares-a-terabyte", r"announces 1,000,000,000,000 bytes, over the 1,000,000-byte cap"),
    ("loop", r"redirects in a loop"),
    ("to-ftp", r"redirects to ftp://127.0.0.1/x.tgz: only http\(s\) redirects are followed"),
])
def test_each_limit_ends_a_download_in_seconds_with_one_line(hostile, tmp_path, path, message):
    started = time.monotonic()
    with pytest.raises(PipelineError, match=message) as caught:
        fetch(f"{hostile}/{path}", tmp_path, limits=LIMITS, backoff_s=0.1)
    assert time.monotonic() - started < 10 and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing under a final name, and no partial file filling the disk


def test_an_error_page_is_never_reused_and_the_server_is_asked_again(hostile, tmp_path):
    spec, layout = get_dataset("mine"), DataLayout(tmp_path)
    Hostile.page = b"<!DOCTYPE html><html>Service unavailable</html>"
    raw = fetch_raw_archive(layout, spec, source=f"{hostile}/mine.tgz")
    with pytest.raises(PipelineError):
        extract_images(raw, layout)
    assert not (tmp_path / "mine" / "downloads" / "mine.tgz").exists()  # forgotten with its record

    Hostile.page = make_tgz(flowers_like(3))
    raw = fetch_raw_archive(layout, spec, source=f"{hostile}/mine.tgz")
    assert raw.downloaded and len(extract_images(raw, layout).images) == 3
    assert Hostile.gets.count("/mine.tgz") == 2
    record = json.loads(record_path(tmp_path / "mine" / "downloads" / "mine.tgz").read_text())
    assert record["etag"] == '"v1"' and record["size"] == len(Hostile.page)  # kept beside the file

    again = fetch_raw_archive(layout, spec, source=f"{hostile}/mine.tgz")
    assert not again.downloaded and Hostile.gets.count("/mine.tgz") == 2  # matches its record: reused
    (tmp_path / "mine" / "downloads" / "mine.tgz").write_bytes(b"changed on disk")
    assert fetch_raw_archive(layout, spec, source=f"{hostile}/mine.tgz").downloaded  # no longer matches


class NeedsLogin(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"ann:s3cret").decode():
            self.send_response(401)
            self.end_headers()
            return
        body = b"flowers"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_credentials_come_from_netrc_and_a_url_carrying_them_is_refused_unshown(tmp_path, monkeypatch, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), NeedsLogin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/f.tgz"
        (tmp_path / "netrc").write_text("machine 127.0.0.1 login ann password s3cret\n")
        (tmp_path / "netrc").chmod(0o600)
        monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
        assert fetch(url, tmp_path / "d").path.read_bytes() == b"flowers"
        with pytest.raises(PipelineError, match=r"carries credentials; put them in ~/.netrc") as caught:
            fetch(url.replace("//", "//ann:s3cret@"), tmp_path / "e")
        assert "s3cret" not in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()

    from conftest import cli_main

    code, _, err = cli_main(tmp_path, capsys, monkeypatch, "prepare", "--dataset", "custom", "--name", "x", "--source",
                         "http://ann:s3cret@127.0.0.1:9/x.tgz")
    assert code == 1 and "carries credentials" in err and "s3cret" not in err
    assert not (tmp_path / "dagster_home" / "storage").exists()  # refused before a run (and its config) existed

