"""edge_asd.datasets.download and .registry against a loopback HTTP server that implements Range."""

import hashlib
import io
import json
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.core.errors import EdgeAsdError
from edge_asd.datasets import download, registry
from edge_asd.datasets.layout import scan

CLIPS = [
    "fan/train/normal_id_00_00000000.wav",
    "fan/train/normal_id_00_00000001.wav",
    "fan/test/normal_id_00_00000000.wav",
    "fan/test/anomaly_id_00_00000000.wav",
]


def make_archive() -> bytes:
    """A small zip in the DCASE 2020 dev layout: four 0.1 s WAVs of noise (stored, not deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, name in enumerate(CLIPS):
            wav = io.BytesIO()
            noise = np.random.default_rng(i).normal(0, 0.1, 1600).astype(np.float32)
            sf.write(wav, noise, 16000, format="WAV", subtype="PCM_16")
            zf.writestr(name, wav.getvalue())
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    """GET /<anything>/<name>: serves server.files[name]; honours "Range: bytes=N-" when
    server.ranges; drops the connection after server.drop_after[name] bytes, once."""

    def do_GET(self):  # noqa: N802
        srv = self.server
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        data = srv.files.get(name)
        wanted = self.headers.get("Range")
        start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1]) if wanted and srv.ranges else 0
        srv.log.append({"path": self.path, "range": wanted, "start": start})
        if data is None:
            self.send_error(404)
            return
        if start >= len(data) and start > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        self.end_headers()
        drop = srv.drop_after.pop(name, None)
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802
        data = self.server.files.get(self.path.split("?")[0].rsplit("/", 1)[-1])
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()

    def log_message(self, *args):
        pass


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (port 0) with a request log."""

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.files, self.httpd.drop_after, self.httpd.log, self.httpd.ranges = {}, {}, [], True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def __getattr__(self, name):
        return getattr(self.httpd, name)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_registry(path: Path, base_url: str, known_hash, file="test_fan.zip", size=None) -> Path:
    """An EDGE_ASD_REGISTRY file with one dataset, "testset", holding one fan archive."""
    entry = {
        "title": "loopback test set",
        "licence": "test",
        "homepage": base_url,
        "base_url": base_url + "/",
        "archives": [{"machine_type": "fan", "file": file, "known_hash": known_hash, "size": size}],
    }
    path.write_text(json.dumps({"version": 1, "datasets": {"testset": entry}}))
    return path


@pytest.fixture
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


@pytest.fixture
def archive():
    return make_archive()


@pytest.fixture
def testset(server, archive, tmp_path, monkeypatch):
    """The archive served as test_fan.zip and an EDGE_ASD_REGISTRY naming it with its md5."""
    server.files["test_fan.zip"] = archive
    md5 = hashlib.md5(archive).hexdigest()
    monkeypatch.setenv("EDGE_ASD_REGISTRY", str(write_registry(tmp_path / "reg.json", server.url, f"md5:{md5}")))
    monkeypatch.delenv("EDGE_ASD_DATA_MIRROR", raising=False)
    return tmp_path / "dest"


def test_fetch_downloads_verifies_and_unpacks(server, archive, testset):
    folder = download.fetch("testset", "fan", dest=testset, progressbar=False)
    assert folder == testset / "testset" / "test_fan" / "fan"
    clips = scan(folder)
    assert sorted((c.split, c.label) for c in clips) == [
        ("test", "anomaly"),
        ("test", "normal"),
        ("train", "normal"),
        ("train", "normal"),
    ]
    assert (testset / "testset" / "test_fan.zip").read_bytes() == archive
    assert not list((testset / "testset").glob("*.part"))
    assert len(server.log) == 1 and server.log[0]["range"] is None
    # a second run finds the unpacked folder and does not download again
    assert download.fetch("testset", "FAN", dest=testset, progressbar=False) == folder
    assert len(server.log) == 1


def test_checksum_mismatch_removes_the_download(server, archive, tmp_path, monkeypatch):
    server.files["test_fan.zip"] = archive
    monkeypatch.setenv("EDGE_ASD_REGISTRY", str(write_registry(tmp_path / "r.json", server.url, "md5:" + "0" * 32)))
    dest = tmp_path / "dest"
    got = hashlib.md5(archive).hexdigest()
    with pytest.raises(
        EdgeAsdError,
        match=f"checksum mismatch for test_fan.zip: expected md5:0{{32}}, got {got}; "
        "the download was removed, run the command again",
    ):
        download.fetch("testset", "fan", dest=dest, progressbar=False)
    assert list((dest / "testset").iterdir()) == []  # no archive, no .part, no temporary file


def test_interrupted_download_resumes_with_range(server, archive, testset, monkeypatch):
    monkeypatch.setattr(download, "CHUNK_SIZE", 1024)
    server.drop_after["test_fan.zip"] = 5000
    with pytest.raises(
        EdgeAsdError,
        match=r"download of test_fan.zip interrupted after \d+ of \d+ bytes.*run the command again to resume",
    ):
        download.fetch("testset", "fan", dest=testset, progressbar=False)
    part = testset / "testset" / "test_fan.zip.part"
    kept = part.stat().st_size
    assert 0 < kept <= 5000 and part.read_bytes() == archive[:kept]
    assert [p.name for p in (testset / "testset").iterdir()] == ["test_fan.zip.part"]  # nothing else left

    folder = download.fetch("testset", "fan", dest=testset, progressbar=False)
    assert [r["range"] for r in server.log] == [None, f"bytes={kept}-"]
    assert (testset / "testset" / "test_fan.zip").read_bytes() == archive
    assert not part.exists() and len(scan(folder)) == 4


def test_server_without_range_support_restarts(server, archive, testset, monkeypatch):
    monkeypatch.setattr(download, "CHUNK_SIZE", 1024)
    server.ranges = False
    server.drop_after["test_fan.zip"] = 5000
    with pytest.raises(EdgeAsdError, match="interrupted"):
        download.fetch("testset", "fan", dest=testset, progressbar=False)
    download.fetch("testset", "fan", dest=testset, progressbar=False)
    assert server.log[1]["range"] is not None  # asked to resume, got 200: started over
    assert (testset / "testset" / "test_fan.zip").read_bytes() == archive


def test_complete_part_file_is_accepted_on_416(server, archive, testset):
    (testset / "testset").mkdir(parents=True)
    (testset / "testset" / "test_fan.zip.part").write_bytes(archive)
    download.fetch("testset", "fan", dest=testset, progressbar=False)
    assert server.log[0]["range"] == f"bytes={len(archive)}-"
    assert (testset / "testset" / "test_fan.zip").read_bytes() == archive


def test_bad_part_file_fails_the_checksum_and_is_removed(server, archive, testset):
    (testset / "testset").mkdir(parents=True)
    (testset / "testset" / "test_fan.zip.part").write_bytes(b"x" * 100)  # wrong bytes at the start
    with pytest.raises(EdgeAsdError, match="checksum mismatch for test_fan.zip"):
        download.fetch("testset", "fan", dest=testset, progressbar=False)
    assert list((testset / "testset").iterdir()) == []
    download.fetch("testset", "fan", dest=testset, progressbar=False)  # the next run starts clean
    assert (testset / "testset" / "test_fan.zip").read_bytes() == archive


def test_unreachable_host(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(
        "EDGE_ASD_REGISTRY", str(write_registry(tmp_path / "r.json", f"http://127.0.0.1:{port}", "md5:" + "1" * 32))
    )
    with pytest.raises(EdgeAsdError, match=r"could not reach 127.0.0.1 \(.*\); .*EDGE_ASD_DATA") as info:
        download.fetch("testset", "fan", dest=tmp_path / "dest", progressbar=False)
    assert "\n" not in str(info.value)


def test_http_error_and_mirror(server, archive, testset):
    server.files.pop("test_fan.zip")
    with pytest.raises(EdgeAsdError, match="HTTP 404"):
        download.fetch("testset", "fan", dest=testset, progressbar=False)
    server.files["test_fan.zip"] = archive
    download.fetch("testset", "fan", dest=testset, base_url=server.url + "/mirror/", progressbar=False)
    assert server.log[-1]["path"] == "/mirror/test_fan.zip"
    check = download.ResumableDownloader(testset / "x.part")  # pooch's availability check
    assert check(server.url + "/test_fan.zip", None, None, check_only=True) is True
    assert check(server.url + "/other.zip", None, None, check_only=True) is False


def test_unverified_archive_needs_no_verify(server, archive, tmp_path, monkeypatch):
    server.files["test_fan.zip"] = archive
    monkeypatch.setenv("EDGE_ASD_REGISTRY", str(write_registry(tmp_path / "r.json", server.url, None)))
    with pytest.raises(EdgeAsdError, match="test_fan.zip has no known checksum.*--no-verify"):
        download.fetch("testset", "fan", dest=tmp_path / "d", progressbar=False)
    assert server.log == []
    folder = download.fetch(
        "testset", "fan", dest=tmp_path / "d", allow_unverified=True, delete_archive=True, progressbar=False
    )
    assert len(scan(folder)) == 4 and not (tmp_path / "d" / "testset" / "test_fan.zip").exists()


def test_not_enough_disk_space(server, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "EDGE_ASD_REGISTRY", str(write_registry(tmp_path / "r.json", server.url, "md5:" + "1" * 32, size=10**18))
    )
    with pytest.raises(EdgeAsdError, match="not enough disk space"):
        download.fetch("testset", "fan", dest=tmp_path / "d", progressbar=False)
    assert server.log == []


def test_extract_is_all_or_nothing_and_stays_inside(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(EdgeAsdError, match="not a valid zip archive"):
        download.extract(bad, tmp_path / "out", progressbar=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
        zf.writestr("fan/ok.txt", "y")
    download.extract(evil, tmp_path / "sub" / "out", progressbar=False)
    assert not (tmp_path / "escaped.txt").exists() and (tmp_path / "sub" / "out" / "fan" / "ok.txt").exists()


# --- the built-in registry ----------------------------------------------------------------------


def test_builtin_registry_is_complete():
    datasets = registry.REGISTRY["datasets"]
    registry._check(datasets, "built-in")
    dcase = {a["file"] for a in datasets["dcase2020-dev"]["archives"]}
    assert dcase == {f"dev_data_{t}.zip" for t in ("fan", "pump", "slider", "valve", "ToyCar", "ToyConveyor")}
    mimii = {a["file"] for a in datasets["mimii"]["archives"]}
    assert mimii == {f"{s}_dB_{t}.zip" for s in ("6", "0", "-6") for t in ("fan", "pump", "slider", "valve")}
    for entry in datasets.values():
        for a in entry["archives"]:
            assert re.fullmatch(r"md5:[0-9a-f]{32}", a["known_hash"]) and a["size"] > 5 * 10**8
    hashes = [a["known_hash"] for e in datasets.values() for a in e["archives"]]
    assert len(set(hashes)) == len(hashes) == 18


def test_find_archive_and_urls(monkeypatch):
    monkeypatch.delenv("EDGE_ASD_REGISTRY", raising=False)
    reg = registry.load_registry()
    entry, a = registry.find_archive(reg, "mimii", "fan")
    assert a["file"] == "6_dB_fan.zip" and a["known_hash"] == "md5:0890f7d3c2fd8448634e69ff1d66dd47"
    assert registry.find_archive(reg, "mimii", "Valve", "-6dB")[1]["file"] == "-6_dB_valve.zip"
    assert registry.find_archive(reg, "mimii", "pump", "min6dB")[1]["file"] == "-6_dB_pump.zip"
    assert registry.find_archive(reg, "mimii", "pump", "0")[1]["file"] == "0_dB_pump.zip"
    entry, a = registry.find_archive(reg, "dcase2020-dev", "toycar")
    assert download.archive_url(entry, a) == "https://zenodo.org/records/3678171/files/dev_data_ToyCar.zip?download=1"
    assert download.archive_url(entry, a, "https://m.example/asd/") == "https://m.example/asd/dev_data_ToyCar.zip"
    for args, message in [
        (("foo", "fan"), "unknown dataset 'foo': use one of dcase2020-dev, mimii"),
        (("mimii", "ToyCar"), "mimii has no machine type 'ToyCar': use one of fan, pump, slider, valve"),
        (("mimii", "fan", "3dB"), "no fan archive at SNR 3dB: use one of -6dB, 0dB, 6dB"),
        (("mimii", "fan", "loud"), "bad SNR 'loud'"),
        (("dcase2020-dev", "fan", "6dB"), "dcase2020-dev has no SNR versions"),
    ]:
        with pytest.raises(EdgeAsdError, match=re.escape(message)):
            registry.find_archive(reg, *args)


def test_registry_override_errors(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    monkeypatch.setenv("EDGE_ASD_REGISTRY", str(path))
    with pytest.raises(EdgeAsdError, match="EDGE_ASD_REGISTRY=.*cannot read it"):
        registry.load_registry()
    path.write_text("{not json")
    with pytest.raises(EdgeAsdError, match="not valid JSON"):
        registry.load_registry()
    write_registry(path, "http://x", "md5:abc")
    with pytest.raises(EdgeAsdError, match="bad known_hash 'md5:abc'"):
        registry.load_registry()
    write_registry(path, "http://x", "sha256:" + "a" * 64)
    reg = registry.load_registry()
    assert set(reg["datasets"]) == {"dcase2020-dev", "mimii", "testset"}  # added on top of the built-in ones
