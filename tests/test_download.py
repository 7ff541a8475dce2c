"""download_dataset() against a real HTTP server on 127.0.0.1 serving a generated archive."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import os
import re
import socket
import threading
import time
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from inat_tune.data import download as dl
from inat_tune.data.download import ARCHIVE_NAME, DATASET_DIRNAME, DownloadError, download_dataset

CLASSES = ("Amphibia", "Aves")
Files = dict[str, bytes]  # member name -> content


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (seed * 40 % 256, seed * 90 % 256, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _tree() -> Files:
    """Member name -> bytes of a tiny dataset laid out like nature_12K.zip."""
    files, seed = {}, 0
    for split in ("train", "val"):
        for cls in CLASSES:
            for i in range(3):
                files[f"{DATASET_DIRNAME}/{split}/{cls}/{i}.jpg"] = _jpeg(seed)
                seed += 1
    return files


def _zip(files: Files) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        folders = sorted({n.rsplit("/", i)[0] + "/" for n in files for i in (1, 2, 3)})
        for folder in folders:  # real archives list folders too
            zf.writestr(folder, b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


class _Server(http.server.ThreadingHTTPServer):
    payload: bytes = b""
    status: int = 200  # 404, 500 ... to fail every request
    honour_range: bool = True
    drop_after: int | None = None  # send this many bytes once, then close the connection
    delay: float = 0.0  # seconds before answering
    hits: int = 0
    ranges: list[str | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.hits += 1
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        time.sleep(srv.delay)
        if srv.status != 200:
            self.send_error(srv.status)
            return
        body, start = srv.payload, 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and srv.honour_range:
            start = int(match[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if srv.drop_after is not None:
            self.wfile.write(body[start : start + srv.drop_after])
            srv.drop_after = None
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def files() -> Files:
    return _tree()


@pytest.fixture
def server(files: Files) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.payload, srv.ranges = _zip(files), []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/{ARCHIVE_NAME}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _get(root: Path, server: _Server) -> Path:
    return download_dataset(root, server.url, progress=False, timeout=5)  # type: ignore[attr-defined]


def _assert_dataset(root: Path, files: Files) -> None:
    on_disk = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in (root / DATASET_DIRNAME).rglob("*")
        if p.is_file()
    }
    assert on_disk == files
    leftovers = [
        p.name for p in root.iterdir() if p.name.startswith(".extract-") or p.suffix == ".part"
    ]
    assert leftovers == []


def test_full_download_extracts_train_and_val(tmp_path: Path, server: _Server, files: Files) -> None:
    out = _get(tmp_path, server)
    assert out == tmp_path / DATASET_DIRNAME
    assert (out / "train" / "Aves").is_dir() and (out / "val" / "Amphibia").is_dir()
    _assert_dataset(tmp_path, files)
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == server.payload
    assert server.ranges == [None]


def test_interrupted_download_resumes_with_range(tmp_path: Path, server: _Server, files: Files) -> None:
    cut = len(server.payload) // 3
    server.drop_after = cut
    with pytest.raises(DownloadError, match="run again"):
        _get(tmp_path, server)
    part = tmp_path / (ARCHIVE_NAME + ".part")
    assert part.stat().st_size == cut
    assert not (tmp_path / DATASET_DIRNAME).exists()

    _get(tmp_path, server)
    assert server.ranges == [None, f"bytes={cut}-"]
    digest = hashlib.sha256(server.payload).hexdigest()
    assert hashlib.sha256((tmp_path / ARCHIVE_NAME).read_bytes()).hexdigest() == digest
    _assert_dataset(tmp_path, files)


def test_second_call_does_nothing(tmp_path: Path, server: _Server) -> None:
    first = _get(tmp_path, server)
    stamp = (first / "train").stat().st_mtime_ns
    assert _get(tmp_path, server) == first
    assert server.hits == 1
    assert (first / "train").stat().st_mtime_ns == stamp


def test_archive_put_by_hand_needs_no_network(tmp_path: Path, files: Files) -> None:
    (tmp_path / ARCHIVE_NAME).write_bytes(_zip(files))
    out = download_dataset(tmp_path, f"http://127.0.0.1:{_closed_port()}/x.zip", progress=False)
    assert out == tmp_path / DATASET_DIRNAME
    _assert_dataset(tmp_path, files)


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_names_status_and_url(tmp_path: Path, server: _Server, status: int) -> None:
    server.status = status
    with pytest.raises(DownloadError) as info:
        _get(tmp_path, server)
    message = str(info.value)
    assert str(status) in message and server.url in message  # type: ignore[attr-defined]
    assert "\n" not in message
    assert not (tmp_path / DATASET_DIRNAME).exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_says_how_to_supply_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/{ARCHIVE_NAME}"
    with pytest.raises(DownloadError) as info:
        download_dataset(tmp_path, url, progress=False, timeout=5)
    message = str(info.value)
    assert "cannot reach 127.0.0.1" in message
    assert url in message and str(tmp_path / ARCHIVE_NAME) in message and "by hand" in message
    assert "\n" not in message


def test_corrupt_archive_is_deleted_and_reported(tmp_path: Path, server: _Server) -> None:
    server.payload = os.urandom(5000)
    with pytest.raises(DownloadError) as info:
        _get(tmp_path, server)
    assert str(tmp_path / ARCHIVE_NAME) in str(info.value)
    assert "run again" in str(info.value)
    assert not (tmp_path / ARCHIVE_NAME).exists()  # so the next run downloads it again
    assert not (tmp_path / DATASET_DIRNAME).exists()
    assert not list(tmp_path.glob(".extract-*"))


def test_archive_without_splits_is_refused(tmp_path: Path, server: _Server) -> None:
    server.payload = _zip({"something/else.txt": b"hello"})
    with pytest.raises(DownloadError, match="no train/ and val/"):
        _get(tmp_path, server)
    assert not (tmp_path / DATASET_DIRNAME).exists()


def test_zip_slip_member_is_refused(tmp_path: Path, files: Files) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / ARCHIVE_NAME).write_bytes(_zip({**files, f"{DATASET_DIRNAME}/../../evil.txt": b"x"}))
    with pytest.raises(DownloadError, match="escapes"):
        download_dataset(root, "http://unused.invalid/", progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (root / "evil.txt").exists()
    assert not (root / DATASET_DIRNAME).exists()


def test_disk_full_before_download(tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = types.SimpleNamespace(total=10**9, used=10**9 - 100, free=100)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(DownloadError) as info:
        _get(tmp_path, server)
    message = str(info.value)
    assert "disk space" in message and f"{len(server.payload):,}" in message and str(tmp_path) in message
    assert not (tmp_path / (ARCHIVE_NAME + ".part")).exists()  # failed before writing


def test_disk_full_while_writing(tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    class _FullDisk(io.BufferedWriter):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path: Path, mode: str) -> _FullDisk:
        return _FullDisk(io.FileIO(path, mode.replace("b", "")))

    monkeypatch.setattr(dl, "open", full_open, raising=False)  # shadows the builtin in dl
    with pytest.raises(DownloadError) as info:
        _get(tmp_path, server)
    message = str(info.value)
    assert "disk space" in message and ARCHIVE_NAME + ".part" in message
    assert f"{len(server.payload):,}" in message  # nothing was written, so all of it is needed


def test_server_ignoring_range_starts_over(tmp_path: Path, server: _Server, files: Files) -> None:
    server.honour_range = False
    server.drop_after = len(server.payload) // 2
    with pytest.raises(DownloadError):
        _get(tmp_path, server)
    # Garbage in the .part proves the restart overwrote it rather than appending to it.
    (tmp_path / (ARCHIVE_NAME + ".part")).write_bytes(b"\xff" * 100)
    _get(tmp_path, server)
    assert server.ranges[-1] == "bytes=100-"  # asked to resume, got a 200
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == server.payload
    _assert_dataset(tmp_path, files)


def test_complete_part_and_416_is_accepted(tmp_path: Path, server: _Server, files: Files) -> None:
    (tmp_path / (ARCHIVE_NAME + ".part")).write_bytes(server.payload)
    _get(tmp_path, server)
    assert server.ranges == [f"bytes={len(server.payload)}-"]
    _assert_dataset(tmp_path, files)


def test_concurrent_calls_download_once(tmp_path: Path, server: _Server, files: Files) -> None:
    server.delay = 0.3  # keeps the first download in flight while the second call arrives
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _get(tmp_path, server)
        except BaseException as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and server.hits == 1
    _assert_dataset(tmp_path, files)
