"""Model download (README "Model files") against a loopback HTTP server that the test controls:
resume, lock, SHA-256, errors, progress output, and ``serve`` fetching its model on first start.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from gigastt.engine.model import ENCODER_INT8_FILE, MODEL_FILES
from gigastt.store import NotWritableError, StoreError
from gigastt.store import download as dl
from gigastt.store.download import (
    DownloadError,
    LineProgress,
    ModelSource,
    RetryPolicy,
    TerminalProgress,
    ensure_model,
    read_sha256_file,
)
from tests.conftest import ROOT
from tests.mirror import ModelServer
from tests.serverproc import ServerProcess

ENCODER, DECODER, JOINT, VOCAB = MODEL_FILES
FAST = RetryPolicy(retries=3, backoff=0.01, connect_timeout=5, read_timeout=5)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from gigastt.testing.models import write_small_model

    # d_model 64 makes the encoder ~2 MB: room to interrupt it half-way.
    path = write_small_model(tmp_path_factory.mktemp("served"), d_model=64)
    return {name: (path / name).read_bytes() for name in MODEL_FILES}


@pytest.fixture
def server(model_files: dict[str, bytes]) -> Iterator[ModelServer]:
    srv = ModelServer(model_files)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def pins(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def source(server: ModelServer) -> ModelSource:
    return ModelSource(server.url, pins(server.files))


@pytest.fixture
def manifest(tmp_path: Path, model_files: dict[str, bytes]) -> Path:
    path = tmp_path / "SHA256SUMS"
    path.write_text("".join(f"{h}  {n}\n" for n, h in pins(model_files).items()))
    return path


def cli_env(server: ModelServer, manifest: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIGASTT_") and "proxy" not in k.lower()}
    env.update(GIGASTT_MODEL_URL=server.url, GIGASTT_MODEL_SHA256_FILE=str(manifest), **extra)
    return env


def gigastt(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gigastt", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = gigastt(*args, env=env)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_complete(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (directory / name).read_bytes() == data, name
        assert not (directory / (name + ".partial")).exists()


# --- in-process: the transfer itself -----------------------------------------------------------


def test_fresh_download_into_an_empty_dir(server: ModelServer, tmp_path: Path) -> None:
    target = tmp_path / "a" / "models"
    assert ensure_model(target, source(server), policy=FAST) == list(MODEL_FILES)
    assert_complete(target, server.files)
    assert [(s.name, s.range, s.status) for s in server.requests()] == [
        (name, None, 200) for name in MODEL_FILES]
    assert (target / ".download.lock").exists()
    # present files are not fetched again (and not re-hashed)
    assert ensure_model(target, source(server), policy=FAST) == []
    assert len(server.requests()) == 4


def test_only_missing_files_are_fetched(server: ModelServer, tmp_path: Path) -> None:
    for name in (ENCODER, VOCAB):
        (tmp_path / name).write_bytes(server.files[name])
    assert ensure_model(tmp_path, source(server), policy=FAST) == [DECODER, JOINT]
    assert [s.name for s in server.requests()] == [DECODER, JOINT]


def test_dropped_connection_resumes_with_range(server: ModelServer, tmp_path: Path) -> None:
    size = len(server.files[ENCODER])
    half = size // 2
    server.faults.drop_after[ENCODER] = half
    ensure_model(tmp_path, source(server), policy=FAST)
    assert_complete(tmp_path, server.files)
    first, second = server.requests(ENCODER)
    assert (first.range, first.status, first.sent) == (None, 200, half)
    assert (second.range, second.status, second.sent) == (f"bytes={half}-", 206, size - half)


def test_redirects_keep_the_range(server: ModelServer, tmp_path: Path) -> None:
    size = len(server.files[ENCODER])
    server.faults.redirect = True
    server.faults.drop_after[ENCODER] = 1000
    ensure_model(tmp_path, source(server), policy=FAST)
    assert_complete(tmp_path, server.files)
    assert [(s.range, s.sent) for s in server.requests(ENCODER)] == [
        (None, 1000), ("bytes=1000-", size - 1000)]


def test_read_timeout_resumes(server: ModelServer, tmp_path: Path) -> None:
    server.faults.stall_after[DECODER] = (100_000, 2.0)
    policy = RetryPolicy(retries=2, backoff=0.01, connect_timeout=5, read_timeout=0.5)
    ensure_model(tmp_path, source(server), policy=policy)
    assert_complete(tmp_path, server.files)
    first, second = server.requests(DECODER)
    assert second.range is not None and second.range.startswith("bytes=")
    assert 0 < int(second.range[6:-1]) <= first.sent


def test_server_ignoring_range_restarts_from_zero(server: ModelServer, tmp_path: Path) -> None:
    size = len(server.files[ENCODER])
    server.faults.drop_after[ENCODER] = size // 3
    server.faults.ignore_range = True
    ensure_model(tmp_path, source(server), policy=FAST)
    assert_complete(tmp_path, server.files)
    _, second = server.requests(ENCODER)
    assert second.range == f"bytes={size // 3}-"
    assert (second.status, second.sent) == (200, size)


def test_mismatched_content_range_restarts(server: ModelServer, tmp_path: Path) -> None:
    data = server.files[JOINT]
    (tmp_path / (JOINT + ".partial")).write_bytes(data[:1000])
    server.faults.wrong_range = True
    dl.fetch_file(JOINT, tmp_path, source(server), policy=FAST)
    assert (tmp_path / JOINT).read_bytes() == data
    assert [(s.range, s.status) for s in server.requests()] == [("bytes=1000-", 206), (None, 200)]


def test_complete_partial_and_416_is_verified_not_refetched(server: ModelServer,
                                                            tmp_path: Path) -> None:
    data = server.files[JOINT]
    (tmp_path / (JOINT + ".partial")).write_bytes(data)  # killed between the last byte and rename
    dl.fetch_file(JOINT, tmp_path, source(server), policy=FAST)
    assert (tmp_path / JOINT).read_bytes() == data
    assert [(s.range, s.status, s.sent) for s in server.requests()] == [
        (f"bytes={len(data)}-", 416, 0)]


def test_stale_partial_is_fetched_again_once(server: ModelServer, tmp_path: Path) -> None:
    data = server.files[JOINT]
    (tmp_path / (JOINT + ".partial")).write_bytes(b"x" * 1000)  # another version's bytes
    dl.fetch_file(JOINT, tmp_path, source(server), policy=FAST)
    assert (tmp_path / JOINT).read_bytes() == data
    assert [(s.range, s.status) for s in server.requests()] == [("bytes=1000-", 206), (None, 200)]


def test_corrupted_file_is_rejected_and_nothing_is_installed(server: ModelServer,
                                                             tmp_path: Path) -> None:
    server.faults.corrupt.add(DECODER)
    good = pins(server.files)[DECODER]
    bad = hashlib.sha256(bytes([server.files[DECODER][0] ^ 0xFF])
                         + server.files[DECODER][1:]).hexdigest()
    with pytest.raises(DownloadError) as caught:
        ensure_model(tmp_path, source(server), policy=FAST)
    assert str(caught.value) == f"SHA-256 mismatch for {DECODER}: expected {good}, got {bad}"
    assert (tmp_path / ENCODER).is_file()  # verified before the failure: kept
    assert not (tmp_path / DECODER).exists() and not (tmp_path / (DECODER + ".partial")).exists()
    assert not (tmp_path / JOINT).exists()


def test_transient_5xx_is_retried(server: ModelServer, tmp_path: Path) -> None:
    server.faults.fail_first[VOCAB] = 2
    ensure_model(tmp_path, source(server), policy=FAST)
    assert [s.status for s in server.requests(VOCAB)] == [500, 500, 200]


def test_5xx_gives_up_after_the_retries(server: ModelServer, tmp_path: Path) -> None:
    server.faults.status[VOCAB] = 503
    with pytest.raises(DownloadError, match=f"^Download failed for {VOCAB}: HTTP 503$"):
        ensure_model(tmp_path, source(server), policy=FAST)
    assert len(server.requests(VOCAB)) == FAST.retries + 1


def test_4xx_is_not_retried(server: ModelServer, tmp_path: Path) -> None:
    server.faults.status[ENCODER] = 403
    with pytest.raises(DownloadError, match=f"^Download failed for {ENCODER}: HTTP 403$"):
        ensure_model(tmp_path, source(server), policy=FAST)
    assert len(server.requests()) == 1
    assert not (tmp_path / ENCODER).exists()


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    start = time.monotonic()
    with pytest.raises(DownloadError, match=f"Download failed for {ENCODER}: .*refused"):
        ensure_model(tmp_path, ModelSource(f"http://127.0.0.1:{port}"), policy=FAST)
    assert time.monotonic() - start < 5


def test_disk_full_keeps_the_partial_for_later(server: ModelServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        def __init__(self, handle: BinaryIO) -> None:
            self.handle = handle

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, chunk: bytes) -> int:
            if self.handle.tell() >= 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(chunk)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    real = dl.fetch._open_partial
    monkeypatch.setattr(dl.fetch, "_open_partial", lambda path, mode: Full(real(path, mode)))
    with pytest.raises(StoreError, match=r"No space left on device writing .*encoder\.onnx\.partial"
                       r" .*the download resumes"):
        ensure_model(tmp_path, source(server), policy=FAST)
    assert not (tmp_path / ENCODER).exists()
    kept = (tmp_path / (ENCODER + ".partial")).stat().st_size
    assert kept >= 100_000
    monkeypatch.setattr(dl.fetch, "_open_partial", real)
    ensure_model(tmp_path, source(server), policy=FAST)
    assert_complete(tmp_path, server.files)
    assert server.requests(ENCODER)[-1].range == f"bytes={kept}-"


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "sums"
    path.write_text(f"# private build\n{'A' * 64}  ./{ENCODER}\n{'b' * 64} *other.bin\n\n")
    assert read_sha256_file(path) == {ENCODER: "a" * 64}
    resolved = ModelSource.resolve(None, {"GIGASTT_MODEL_SHA256_FILE": str(path)})
    assert resolved.pins[ENCODER] == "a" * 64
    assert resolved.pins[VOCAB] == dl.SHA256_PINS[VOCAB]
    assert resolved.base_url == dl.DEFAULT_BASE_URL
    assert resolved.url(VOCAB) == f"{dl.DEFAULT_BASE_URL}/{VOCAB}"
    assert ModelSource("http://m/x/").url(VOCAB) == f"http://m/x/{VOCAB}"
    path.write_text("not a checksum line\n")
    with pytest.raises(DownloadError, match="expected '<sha256>  <file name>'"):
        read_sha256_file(path)


# --- progress ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_terminal_progress_renders_one_rewritten_line() -> None:
    import io

    out, clock = io.StringIO(), Clock()
    bar = TerminalProgress(out, clock=clock)
    bar.start("enc.onnx", 10 * 2**20, 0)
    for i in range(1, 11):
        clock.now = i * 0.5
        bar.update(i * 2**20)
    bar.finish(10 * 2**20)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert len(frames) == 12
    assert "50.0% 5.0 MiB / 10.0 MiB  2.0 MiB/s  ETA 0:03" in frames[5]
    assert "100.0%" in frames[-1] and "ETA 0:00" in frames[-1]


def test_line_progress_every_ten_percent() -> None:
    lines: list[str] = []
    clock = Clock()
    progress = LineProgress(lines.append, clock=clock)
    progress.start("dec.onnx", 1000, 250)
    for done in range(260, 1001, 10):
        clock.now += 0.1
        progress.update(done)
    assert lines[0] == "Downloading dec.onnx (1000 B, resuming at 250 B)"
    assert [line.split(":")[1].split("%")[0].strip() for line in lines[1:]] == [
        "30", "40", "50", "60", "70", "80", "90", "100"]


def test_progress_on_a_terminal(server: ModelServer, manifest: Path, tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gigastt", "download", "--skip-quantize", "--model-dir",
         str(tmp_path)], cwd=ROOT, env=cli_env(server, manifest), stdin=subprocess.DEVNULL,
        stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert proc.wait(30) == 0
    text = output.decode()
    # bare carriage returns (the terminal itself turns "\n" into "\r\n")
    frames = re.findall(r"\r([^\r\n]+)", text)
    bars = [f for f in frames if ENCODER in f and "%" in f]
    assert len(bars) >= 2, text
    assert "ETA" in bars[0] and "100.0%" in bars[-1] and "/s" in bars[-1]
    assert_complete(tmp_path, server.files)


def test_progress_without_a_terminal(server: ModelServer, manifest: Path, tmp_path: Path) -> None:
    code, err = run("download", "--skip-quantize", "--model-dir", str(tmp_path),
                    env=cli_env(server, manifest))
    assert code == 0, err
    assert "\r" not in err
    percents = re.findall(rf"{re.escape(ENCODER)}: (\d+)% \(", err)
    assert percents[-1] == "100" and 5 <= len(percents) <= 11, err
    assert f"Downloading {ENCODER} (" in err
    assert f"Model ready at {tmp_path}" in err


# --- the command: lock, kill, errors -----------------------------------------------------------


def test_concurrent_download_waits_for_the_lock(server: ModelServer, manifest: Path,
                                               tmp_path: Path) -> None:
    server.faults.rate = 100_000  # the first holds the lock until the second is seen waiting
    env = cli_env(server, manifest)
    args = ("download", "--skip-quantize", "--model-dir", str(tmp_path))
    first = gigastt(*args, env=env)
    deadline = time.monotonic() + 30
    while not server.requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = gigastt(*args, env=env)
    assert second.stderr is not None
    err2 = ""
    for line in second.stderr:
        err2 += line
        if "Waiting for another gigastt process" in line:
            break
    server.faults.rate = None
    err2 += second.communicate(timeout=60)[1]
    _, err1 = first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "Waiting for another gigastt process" in err2
    assert "completed by another process" in err2
    assert [s.name for s in server.requests()] == list(MODEL_FILES)  # fetched once, by the first
    assert_complete(tmp_path, server.files)


def test_killed_download_resumes(server: ModelServer, manifest: Path, tmp_path: Path) -> None:
    size = len(server.files[ENCODER])
    server.faults.rate = 1_500_000
    env = cli_env(server, manifest)
    args = ("download", "--skip-quantize", "--model-dir", str(tmp_path))
    proc = gigastt(*args, env=env)
    partial = tmp_path / (ENCODER + ".partial")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size >= size // 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    kept = partial.stat().st_size
    assert size // 3 <= kept < size
    assert not (tmp_path / ENCODER).exists()
    server.faults.rate = None
    code, err = run(*args, env=env)
    assert code == 0, err
    assert_complete(tmp_path, server.files)
    first, second = server.requests(ENCODER)
    assert first.range is None
    assert (second.range, second.status, second.sent) == (f"bytes={kept}-", 206, size - kept)


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_exit_1(server: ModelServer, manifest: Path, tmp_path: Path,
                            status: int) -> None:
    server.faults.status[ENCODER] = status
    # one retry for the 500 keeps the test short (default: 4, with back-off)
    code, err = run("download", "--model-dir", str(tmp_path),
                    env=cli_env(server, manifest, GIGASTT_DOWNLOAD_RETRIES="1"))
    assert code == 1
    assert err.rstrip().endswith(f"Error: Download failed for {ENCODER}: HTTP {status}")
    assert len(server.requests()) == (1 if status == 404 else 2)
    assert not (tmp_path / ENCODER).exists() and not (tmp_path / (ENCODER + ".partial")).exists()


def test_corrupted_file_via_the_command(server: ModelServer, manifest: Path,
                                        tmp_path: Path) -> None:
    server.faults.corrupt.add(ENCODER)
    target = tmp_path / "models"
    code, err = run("download", "--model-dir", str(target), env=cli_env(server, manifest))
    assert code == 1
    assert f"Error: SHA-256 mismatch for {ENCODER}: expected " in err
    assert sorted(p.name for p in target.iterdir()) == [".download.lock"]


def test_real_pins_reject_generated_files(server: ModelServer, manifest: Path,
                                          tmp_path: Path) -> None:
    """Without the operator's SHA256 file, a mirror's files must match the reference's pins."""
    env = cli_env(server, manifest)
    del env["GIGASTT_MODEL_SHA256_FILE"]
    code, err = run("download", "--model-dir", str(tmp_path), env=env)
    assert code == 1 and f"expected {dl.SHA256_PINS[ENCODER]}" in err


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory that even root cannot write: immutable (chattr) as root, mode 0555 otherwise."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(path)],
                                            capture_output=True).returncode:
            pytest.skip("root, and this filesystem cannot mark a directory immutable")
        yield path
        subprocess.run([chattr, "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_read_only_model_dir(server: ModelServer, manifest: Path, read_only_dir: Path) -> None:
    code, err = run("download", "--model-dir", str(read_only_dir), env=cli_env(server, manifest))
    assert code == 1
    assert f"Error: Model directory {read_only_dir} is not writable: " in err
    assert server.requests() == []


def test_model_dir_under_a_file(server: ModelServer, manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "models"
    code, err = run("download", "--model-dir", str(target), env=cli_env(server, manifest))
    assert code == 1
    assert f"Error: Cannot create model directory {target}: Not a directory" in err
    with pytest.raises(NotWritableError):
        ensure_model(target, source(server), policy=FAST)


def test_model_url_setting_for_serve() -> None:
    from gigastt.cli import build_parser
    from gigastt.config import ConfigError, serve_config

    def config(*args: str, env: dict[str, str]) -> str | None:
        return serve_config(build_parser().parse_args(["serve", *args]), env).model_url

    assert config(env={}) is None
    assert config(env={"GIGASTT_MODEL_URL": " http://m/a "}) == "http://m/a"
    assert config("--model-url", "https://f/b", env={"GIGASTT_MODEL_URL": "http://m/a"}) == (
        "https://f/b")
    with pytest.raises(ConfigError, match="GIGASTT_MODEL_URL"):
        config(env={"GIGASTT_MODEL_URL": "mirror.internal"})


def test_bad_mirror_url_and_retries_values(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    proc = gigastt("download", "--model-url", "ftp://x/y", "--model-dir", str(tmp_path), env=env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "invalid URL" in err
    proc = gigastt("download", "--model-dir", str(tmp_path),
                   env={**env, "GIGASTT_SKIP_QUANTIZE": "maybe"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "GIGASTT_SKIP_QUANTIZE" in err
    env["GIGASTT_DOWNLOAD_RETRIES"] = "many"
    code, err = run("download", "--model-dir", str(tmp_path), env=env)
    assert code == 1 and "GIGASTT_DOWNLOAD_RETRIES" in err


# --- serve and transcribe fetch what is missing --------------------------------------------------


def models_reply(proc: ServerProcess) -> dict[str, Any]:
    reply = proc.request("GET", "/v1/models")
    assert reply.status == 200
    body = reply.json()
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(("args", "encoder"), [((), "int8"), (("--skip-quantize",), "fp32")])
def test_serve_downloads_then_serves(server: ModelServer, manifest: Path, tmp_path: Path,
                                     args: tuple[str, ...], encoder: str) -> None:
    pytest.importorskip("onnx")
    target = tmp_path / "models"
    env = {"GIGASTT_MODEL_URL": server.url, "GIGASTT_MODEL_SHA256_FILE": str(manifest)}
    proc = ServerProcess(target, *args, env=env)
    try:
        assert models_reply(proc)["encoder"] == encoder
        from gigastt.testing.audio import speech_like, wav_bytes

        reply = proc.request("POST", "/v1/transcribe", wav_bytes(speech_like(2.0)))
        assert reply.status == 200
    finally:
        assert proc.stop() == 0
    assert (target / ENCODER_INT8_FILE).exists() == (encoder == "int8")
    assert "Traceback" not in proc.log
    assert [s.name for s in server.requests()] == list(MODEL_FILES)


def test_serve_does_not_quantize_an_unpinned_model(small_model: Path, tmp_path: Path) -> None:
    """A model that matches no pin (here: a generated one) keeps its FP32 encoder."""
    pytest.importorskip("onnx")
    target = tmp_path / "m"
    shutil.copytree(small_model, target)
    proc = ServerProcess(target)
    try:
        assert models_reply(proc)["encoder"] == "fp32"
    finally:
        proc.stop()
    assert not (target / ENCODER_INT8_FILE).exists()
    assert "not the pinned GigaAM v3 encoder" in proc.log


def test_serve_download_failure_explains(server: ModelServer, manifest: Path,
                                         tmp_path: Path) -> None:
    server.faults.status[ENCODER] = 404
    env = {k: v for k, v in cli_env(server, manifest).items()}
    proc = gigastt("serve", "--port", "0", "--model-dir", str(tmp_path), env=env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"Error: Download failed for {ENCODER}: HTTP 404; model files missing in" in err
    assert "gigastt download" in err


def test_transcribe_downloads_without_quantizing(server: ModelServer, manifest: Path,
                                                 tmp_path: Path) -> None:
    from gigastt.testing.audio import speech_like, wav_bytes

    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(speech_like(1.0)))
    target = tmp_path / "models"
    proc = gigastt("transcribe", str(clip), "--model-dir", str(target),
                   env=cli_env(server, manifest))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_complete(target, server.files)
    assert not (target / ENCODER_INT8_FILE).exists()
