"""Download (checksum, resume over a real HTTP server) and safe archive extraction."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ferbench.data.download import (ChecksumError, IncompleteDownloadError,
                                    UnsafeArchiveError, extract, fetch, sha256sum)

FILES = {"a.txt": b"alpha\n" * 10, "sub/b.txt": b"beta\n" * 20}


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            zipped.writestr(info, data)
    return buffer.getvalue()


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    """A tar from (name, bytes) files and ready-made TarInfo entries (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A zip large enough to span several read chunks (incompressible bytes).
PAYLOAD = _zip({"data/blob.bin": hashlib.sha256(b"seed").digest() * 4096, **FILES})


class _Server:
    """A real HTTP server on 127.0.0.1 that serves PAYLOAD, honours (or ignores) Range
    requests, and records every request's Range header. With `cut_after` set it promises
    the whole body but closes the connection after that many bytes (once); with `hold`
    cleared it stops halfway through a body until the test sets it."""

    def __init__(self):
        self.ranges: list[str | None] = []
        self.honour_range = True
        self.cut_after: int | None = None
        self.hold = threading.Event()
        self.hold.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.ranges.append(self.headers.get("Range"))
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match and server.honour_range else 0
                if start >= len(PAYLOAD) and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Length", str(len(PAYLOAD) - start))
                self.end_headers()
                body = PAYLOAD[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[:server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                server.hold.wait(timeout=60)
                self.wfile.write(body[len(body) // 2:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    serving = _Server()
    yield serving
    serving.stop()


def test_download_verifies_checksum_and_skips_a_complete_file(server, tmp_path):
    dest = tmp_path / "dl" / "data.zip"
    assert fetch(server.url, dest, _digest(PAYLOAD), progress=False, chunk=4096) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_suffix(".zip.part").exists()
    assert server.ranges == [None]
    fetch(server.url, dest, _digest(PAYLOAD), progress=False)
    assert server.ranges == [None]  # already there with the right digest: no request


def test_checksum_mismatch_raises_and_leaves_no_output(server, tmp_path):
    dest = tmp_path / "data.zip"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        fetch(server.url, dest, wrong, progress=False)
    message = str(err.value)
    assert wrong in message and _digest(PAYLOAD) in message and server.url in message
    assert "\n" not in message
    assert isinstance(err.value, ValueError)
    assert [p.name for p in tmp_path.iterdir()] == ["data.zip.lock"]  # no data, no .part


def test_resume_sends_a_range_request_and_completes_the_file(server, tmp_path):
    dest = tmp_path / "data.zip"
    half = len(PAYLOAD) // 2
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD[:half])
    fetch(server.url, dest, _digest(PAYLOAD), progress=False)
    assert server.ranges == [f"bytes={half}-"]
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_suffix(".zip.part").exists()


def test_a_connection_closed_mid_body_keeps_the_part_file_and_the_next_call_resumes(
        server, tmp_path):
    dest = tmp_path / "data.zip"
    cut = len(PAYLOAD) // 3
    server.cut_after = cut
    with pytest.raises(IncompleteDownloadError) as err:
        fetch(server.url, dest, _digest(PAYLOAD), progress=False, chunk=4096)
    message = str(err.value)
    assert f"after {cut} of {len(PAYLOAD)} bytes" in message and "\n" not in message
    assert isinstance(err.value, OSError)  # retryable, like any network failure
    assert dest.with_suffix(".zip.part").read_bytes() == PAYLOAD[:cut]
    assert not dest.exists()
    fetch(server.url, dest, _digest(PAYLOAD), progress=False)
    assert server.ranges == [None, f"bytes={cut}-"]
    assert dest.read_bytes() == PAYLOAD


def test_two_processes_fetching_one_file_take_turns(server, tmp_path):
    """The second process waits on the destination's lock while the first is mid-body,
    then finds the finished file: one request, intact bytes, both succeed."""
    dest = tmp_path / "weights" / "data.zip"
    script = ("import sys; from ferbench.data.download import fetch; print('ready', flush=True);"
              " fetch(sys.argv[1], sys.argv[2], sys.argv[3], progress=False, chunk=4096)")
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    server.hold.clear()
    start = lambda: subprocess.Popen([sys.executable, "-c", script, server.url, str(dest),  # noqa: E731
                                      _digest(PAYLOAD)], env=environment, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = start()
    deadline = time.monotonic() + 60
    while not server.ranges and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.ranges == [None], "the first process never reached the server"
    second = start()
    assert second.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # ample time for an unlocked second process to send its own request
    requests_while_held = list(server.ranges)
    server.hold.set()
    for process in (first, second):
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    assert requests_while_held == [None], "the second process did not wait for the first"
    assert server.ranges == [None]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path):
    server.honour_range = False
    dest = tmp_path / "data.zip"
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD[:100])
    fetch(server.url, dest, _digest(PAYLOAD), progress=False)
    assert server.ranges == ["bytes=100-"]
    assert dest.read_bytes() == PAYLOAD


def test_a_complete_part_file_is_fetched_again_after_416(server, tmp_path):
    dest = tmp_path / "data.zip"
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD + b"junk")
    fetch(server.url, dest, _digest(PAYLOAD), progress=False)
    assert server.ranges == [f"bytes={len(PAYLOAD) + 4}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_local_paths_and_file_urls_are_copied_with_the_same_check(tmp_path):
    source = tmp_path / "source.zip"
    source.write_bytes(PAYLOAD)
    for url, name in ((str(source), "a.zip"), (source.as_uri(), "b.zip")):
        assert fetch(url, tmp_path / name, _digest(PAYLOAD), progress=False).read_bytes() \
            == PAYLOAD
    with pytest.raises(ChecksumError):
        fetch(source.as_uri(), tmp_path / "c.zip", "f" * 64, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == \
        ["a.zip", "b.zip", "source.zip"]


def test_sha256sum_matches_hashlib(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(PAYLOAD)
    assert sha256sum(path, chunk=1000) == _digest(PAYLOAD)


@pytest.mark.parametrize("suffix, data", [
    (".zip", _zip(FILES)),
    (".tar.gz", _tar(list(FILES.items()))),
    (".tar.bz2", _tar(list(FILES.items()), "w:bz2")),
    (".tar.xz", _tar(list(FILES.items()), "w:xz")),
    (".tar", _tar(list(FILES.items()), "w")),
], ids=lambda value: value if isinstance(value, str) else "")
def test_extract_unpacks_zip_and_tar(tmp_path, suffix, data):
    archive = tmp_path / f"data{suffix}"
    archive.write_bytes(data)
    target = tmp_path / "raw"
    files = extract(archive, target)
    assert files == [target / "a.txt", target / "sub" / "b.txt"]
    assert {p.relative_to(target).as_posix(): p.read_bytes() for p in files} == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "raw"])


def test_extract_into_an_existing_empty_folder_but_never_a_full_one(tmp_path):
    archive = tmp_path / "data.zip"
    archive.write_bytes(_zip(FILES))
    (tmp_path / "empty").mkdir()
    assert len(extract(archive, tmp_path / "empty")) == 2
    with pytest.raises(FileExistsError):
        extract(archive, tmp_path / "empty")


BOMB = b"\0" * (4 << 20)  # 4 MiB of zeros: compresses about a thousandfold


@pytest.mark.parametrize("suffix, data", [
    (".zip", _zip({"ok.txt": b"x", "zeros.bin": BOMB}, zipfile.ZIP_DEFLATED)),
    (".tar.gz", _tar([("ok.txt", b"x"), ("zeros.bin", BOMB)])),
], ids=["zip", "tar.gz"])
def test_an_archive_expanding_past_the_cap_is_refused_before_anything_is_written(
        tmp_path, suffix, data):
    archive = tmp_path / f"bomb{suffix}"
    archive.write_bytes(data)
    assert 20 * len(data) < len(BOMB)  # past the default cap of 20x the archive's size
    with pytest.raises(UnsafeArchiveError, match=f"expand to {len(BOMB) + 1} bytes"):
        extract(archive, tmp_path / "raw")
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]
    with pytest.raises(UnsafeArchiveError, match="past the cap of 1000000 bytes"):
        extract(archive, tmp_path / "raw", max_bytes=10**6)
    files = extract(archive, tmp_path / "raw", max_bytes=len(BOMB) + 1)  # trusted: raised cap
    assert sum(p.stat().st_size for p in files) == len(BOMB) + 1


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


UNSAFE = [
    ("dotdot.zip", _zip({"ok.txt": b"x", "../evil.txt": b"evil"}), "../evil.txt"),
    ("absolute.zip", _zip({"ok.txt": b"x", "/tmp/evil.txt": b"evil"}), "/tmp/evil.txt"),
    ("backslash.zip", _zip({"ok.txt": b"x", "..\\evil.txt": b"evil"}), "..\\evil.txt"),
    ("symlink.tar.gz", _tar([("ok.txt", b"x"), _link("etc", "/etc")]), "etc"),
    ("relative-symlink.tar.gz", _tar([("ok.txt", b"x"), _link("up", "../..")]), "up"),
    ("hardlink.tar.gz", _tar([("ok.txt", b"x"), _link("pw", "../../etc/passwd",
                                                     tarfile.LNKTYPE)]), "pw"),
    ("dotdot.tar.gz", _tar([("ok.txt", b"x"), ("a/../../evil.txt", b"evil")]),
     "a/../../evil.txt"),
    ("absolute.tar.gz", _tar([("ok.txt", b"x"), ("/tmp/evil.txt", b"evil")]), "/tmp/evil.txt"),
    ("device.tar", _tar([("ok.txt", b"x"), _device("null")], "w"), "null"),
]


@pytest.mark.parametrize("name, data, member", UNSAFE, ids=[case[0] for case in UNSAFE])
def test_unsafe_archives_are_refused_before_anything_is_written(tmp_path, name, data, member):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / name
    archive.write_bytes(data)
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(member))):
        extract(archive, work / "out" / "raw")
    # nothing at all: no target, no staging folder, no escaped file anywhere near
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        ["work", f"work/{name}"]
    assert not Path("/tmp/evil.txt").exists()


def test_a_link_through_an_earlier_link_is_caught_while_extracting(tmp_path):
    """`l2 -> l1/..` looks harmless until `l1` exists on disk; the staged extraction
    refuses it then, and removes the half-written folder."""
    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    archive = tmp_path / "chain.tar"
    archive.write_bytes(_tar([directory, _link("l1", "d/.."), _link("l2", "l1/.."),
                              ("ok.txt", b"x")], "w"))
    with pytest.raises(UnsafeArchiveError, match="'l2'"):
        extract(archive, tmp_path / "raw")
    assert [p.name for p in tmp_path.iterdir()] == ["chain.tar"]
