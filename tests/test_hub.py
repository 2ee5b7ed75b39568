"""files.hub: download, resume, verification and offline errors against a local HTTP server."""

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from files import hub

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes, not a multiple of anything handy
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves files from server.root; honours 'Range: bytes=N-' unless server.ignore_range.

    With server.cut_after = N it announces the full length but sends only N bytes, then hangs up.
    """

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and not self.server.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.server.cut_after is not None:  # simulate a dropped connection
            data = data[:self.server.cut_after]
            self.close_connection = True
        self.wfile.write(data)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "blob.bin").write_bytes(PAYLOAD)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.requests, srv.ignore_range, srv.cut_after = root, [], False, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "elsewhere"))
    assert hub.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("MINIGRAD_DATA_DIR")
    repo_root = Path(__file__).resolve().parent.parent
    assert hub.cache_dir() == repo_root / "data"


def test_sha256_of_known_vector(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    # FIPS 180-2 test vector
    assert hub.sha256_of(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_verifies_and_caches(server, cache):
    path = hub.ensure_file("sub/blob.bin", f"{server.url}/blob.bin", PAYLOAD_SHA, len(PAYLOAD),
                           progress=False)
    assert path == cache / "sub" / "blob.bin"
    assert path.read_bytes() == PAYLOAD
    assert not (cache / "sub" / "blob.bin.part").exists()
    assert server.requests == [("/blob.bin", None)]
    # A second call is served from the cache without touching the network.
    assert hub.ensure_file("sub/blob.bin", f"{server.url}/blob.bin", PAYLOAD_SHA, len(PAYLOAD),
                           progress=False) == path
    assert len(server.requests) == 1


def test_resume_partial_download_with_range(server, cache):
    part = cache / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:3000])
    path = hub.ensure_file("blob.bin", f"{server.url}/blob.bin", PAYLOAD_SHA, len(PAYLOAD),
                           progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/blob.bin", "bytes=3000-")]
    assert not part.exists()


def test_interrupted_download_keeps_part_and_resumes(server, cache):
    url = f"{server.url}/blob.bin"
    server.cut_after = 4000
    with pytest.raises(hub.MissingFileError, match="resume"):
        hub.ensure_file("blob.bin", url, PAYLOAD_SHA, len(PAYLOAD), progress=False)
    assert not (cache / "blob.bin").exists()
    assert (cache / "blob.bin.part").read_bytes() == PAYLOAD[:4000]
    server.cut_after = None
    assert hub.ensure_file("blob.bin", url, PAYLOAD_SHA, len(PAYLOAD),
                           progress=False).read_bytes() == PAYLOAD
    assert server.requests == [("/blob.bin", None), ("/blob.bin", "bytes=4000-")]


def test_server_ignoring_range_restarts_from_zero(server, cache):
    server.ignore_range = True
    part = cache / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 500)  # wrong bytes: appending the full body would corrupt the file
    path = hub.ensure_file("blob.bin", f"{server.url}/blob.bin", PAYLOAD_SHA, len(PAYLOAD),
                           progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/blob.bin", "bytes=500-")]


def test_stale_part_is_replaced_by_a_clean_download(server, cache):
    part = cache / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"y" * 100)  # not a prefix of the file; the server will happily resume
    path = hub.ensure_file("blob.bin", f"{server.url}/blob.bin", PAYLOAD_SHA, len(PAYLOAD),
                           progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/blob.bin", "bytes=100-"), ("/blob.bin", None)]


def test_complete_part_without_known_size_gets_416(server, cache):
    part = cache / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)
    path = hub.ensure_file("blob.bin", f"{server.url}/blob.bin", PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/blob.bin", f"bytes={len(PAYLOAD)}-")]


def test_checksum_mismatch_leaves_no_file(server, cache):
    wrong = "0" * 64
    with pytest.raises(hub.ChecksumError) as info:
        hub.ensure_file("blob.bin", f"{server.url}/blob.bin", wrong, progress=False)
    assert isinstance(info.value, ValueError)
    assert wrong in str(info.value) and PAYLOAD_SHA in str(info.value)
    assert (info.value.expected, info.value.actual) == (wrong, PAYLOAD_SHA)
    assert not (cache / "blob.bin").exists()
    assert not (cache / "blob.bin.part").exists()


def test_size_mismatch_leaves_no_file(server, cache):
    with pytest.raises(hub.ChecksumError, match=f"expected {len(PAYLOAD) + 1} bytes"):
        hub.ensure_file("blob.bin", f"{server.url}/blob.bin", size=len(PAYLOAD) + 1,
                        progress=False)
    assert list(cache.iterdir()) == []


def test_cached_file_with_wrong_size_is_an_error(server, cache):
    cache.mkdir()
    (cache / "blob.bin").write_bytes(PAYLOAD[:10])
    with pytest.raises(hub.ChecksumError, match="delete it"):
        hub.ensure_file("blob.bin", f"{server.url}/blob.bin", size=len(PAYLOAD), progress=False)
    assert server.requests == []


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/blob.bin"  # nothing listens there any more


def test_unreachable_server_raises_missing_file_error(cache):
    url = _closed_port_url()
    with pytest.raises(hub.MissingFileError) as info:
        hub.ensure_file("d/blob.bin", url, PAYLOAD_SHA, progress=False)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    assert url in str(err) and str(cache / "d" / "blob.bin") in str(err)
    assert (err.url, err.path) == (url, cache / "d" / "blob.bin")
    assert not (cache / "d" / "blob.bin").exists()


def test_http_404_raises_missing_file_error(server, cache):
    with pytest.raises(hub.MissingFileError, match="404"):
        hub.ensure_file("nope.bin", f"{server.url}/nope.bin", progress=False)


def test_offline_env_never_touches_network(server, cache, monkeypatch):
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    with pytest.raises(hub.MissingFileError, match="MINIGRAD_OFFLINE"):
        hub.ensure_file("blob.bin", f"{server.url}/blob.bin", progress=False)
    assert server.requests == []


@pytest.mark.parametrize("bad", ["../escape.bin", "/abs/file.bin", "a/../../b", ""])
def test_paths_outside_cache_are_refused(cache, bad):
    with pytest.raises(ValueError, match="relative"):
        hub.ensure_file(bad, "http://127.0.0.1:9/x", progress=False)


def test_verify_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(PAYLOAD)
    assert hub.verify_file(p, PAYLOAD_SHA, len(PAYLOAD)) == p
    assert hub.verify_file(p, PAYLOAD_SHA.upper()) == p
    with pytest.raises(hub.ChecksumError, match=PAYLOAD_SHA):
        hub.verify_file(p, "f" * 64)
    with pytest.raises(hub.ChecksumError, match="bytes"):
        hub.verify_file(p, size=3)
    with pytest.raises(FileNotFoundError):
        hub.verify_file(tmp_path / "absent", PAYLOAD_SHA)


def test_progress_bar_goes_to_stderr(server, cache, capsys):
    hub.ensure_file("blob.bin", f"{server.url}/blob.bin", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "blob.bin" in err
