"""Configuration under hostile conditions, with real servers and real signals: a config file that
became a FIFO or grew huge, out-of-range values, SIGHUP/SIGTERM during start-up, ``--host ::``.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gigastt.config import MAX_CONFIG_FILE_BYTES
from gigastt.engine.model import VOCAB_FILE
from tests.conftest import ROOT
from tests.mirror import ModelServer
from tests.serverproc import LISTENING, ServerProcess

HUGE = "9" * 400
FAILED = "config reload failed, keeping the old limits"


def wait_for(lines: list[str], pattern: str, timeout: float = 15.0, start: int = 0) -> int:
    """The index of the first log line from ``start`` on that contains ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for index, line in enumerate(list(lines)[start:], start):
            if pattern in line:
                return index
        time.sleep(0.05)
    raise AssertionError(f"no log line with {pattern!r}:\n" + "".join(lines))


def get(host: str, port: int, path: str, headers: dict[str, str] | None = None,
        timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def stop(proc: ServerProcess) -> int:
    """SIGTERM; a server that does not end in time is killed and the test fails."""
    try:
        return proc.stop(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM did not end the server:\n" + proc.log)


# --- SIGHUP: the file is read off the loop, and only if it is a small regular file ----------------


def test_sighup_on_a_fifo_or_oversize_config_keeps_serving_and_the_old_limits(
        tone_model: Path, tmp_path: Path) -> None:
    config = tmp_path / "gigastt.toml"
    config.write_text("idle_timeout_secs = 300\n")
    proc = ServerProcess(tone_model, "--config", str(config))
    try:
        # A FIFO nobody writes to: reading it would block whoever reads, for ever.
        config.unlink()
        os.mkfifo(config)
        proc.signal(signal.SIGHUP)
        first = wait_for(proc.lines, FAILED)
        assert "not a regular file" in proc.lines[first]
        assert proc.request("GET", "/health", timeout=5).status == 200

        # Oversize: a valid file that would switch the limiter on if it were read.
        config.unlink()
        secret = "# not-for-the-log\n"
        config.write_text("rate_limit_per_minute = 30\nrate_limit_burst = 1\n"
                          + secret * (MAX_CONFIG_FILE_BYTES // len(secret) + 1))
        proc.signal(signal.SIGHUP)
        second = wait_for(proc.lines, FAILED, start=first + 1)
        assert "larger than 64 KiB" in proc.lines[second]
        assert [proc.request("GET", "/v1/models").status for _ in range(3)] == [200] * 3
        assert "limits now" not in proc.log and "not-for-the-log" not in proc.log
    finally:
        assert stop(proc) == 0


def test_sighup_with_an_out_of_range_value_changes_nothing(tone_model: Path,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "gigastt.toml"
    config.write_text("rate_limit_per_minute = 1\nrate_limit_burst = 2\n")
    proc = ServerProcess(tone_model, "--config", str(config))
    try:
        config.write_text(f"idle_timeout_secs = 7\nrate_limit_burst = {HUGE}\n")
        proc.signal(signal.SIGHUP)
        line = proc.lines[wait_for(proc.lines, FAILED)]
        assert "rate_limit_burst must be an integer in 0..4294967295" in line
        assert HUGE not in proc.log
        assert "idle_timeout_secs=7" not in proc.log  # all or nothing
        # The limiter kept its old settings: every request is answered, within the old burst.
        replies = [proc.request("GET", "/v1/models", timeout=5) for _ in range(3)]
        assert [r.status for r in replies] == [200, 200, 429]
        assert b'"code":"rate_limited"' in replies[2].body
    finally:
        assert stop(proc) == 0


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    # Old code fetched the model before reading the file: make that fail at once, offline.
    full.update({"GIGASTT_MODEL_URL": "http://127.0.0.1:9/", "GIGASTT_DOWNLOAD_RETRIES": "0"})
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gigastt", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=full)


@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_out_of_range_values_stop_start_up_alike_from_every_source(tmp_path: Path,
                                                                   source: str) -> None:
    config = tmp_path / "gigastt.toml"
    config.write_text(f"rate_limit_burst = {HUGE}\n" if source == "file" else "")
    args = ["serve", "--config", str(config), "--model-dir", str(tmp_path / "models")]
    env: dict[str, str] = {}
    if source == "env":
        env["GIGASTT_RATE_LIMIT_BURST"] = str(1 << 32)
    elif source == "flag":
        args += ["--rate-limit-burst", str(1 << 32)]
    result = _cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    name = {"file": "rate_limit_burst", "env": "GIGASTT_RATE_LIMIT_BURST",
            "flag": "value"}[source]
    assert f"{name} must be an integer in 0..4294967295" in result.stderr
    assert source != "flag" or "--rate-limit-burst" in result.stderr
    assert HUGE not in result.stderr
    assert not (tmp_path / "models").exists()  # refused before any model work


def test_start_up_refuses_a_fifo_config(tmp_path: Path) -> None:
    config = tmp_path / "gigastt.toml"
    os.mkfifo(config)
    result = _cli("serve", "--config", str(config), "--model-dir", str(tmp_path / "models"))
    assert result.returncode == 1
    assert "Failed to read config file" in result.stderr and "not a regular file" in result.stderr


# --- signals while the model is still being fetched ---------------------------------------------


class Starting:
    """``gigastt serve`` whose model lacks its vocabulary, fetched from a mirror that holds
    its answer until the test releases it: start-up waits meanwhile."""

    def __init__(self, tone_model: Path, tmp_path: Path, *args: str) -> None:
        model = tmp_path / "model"
        shutil.copytree(tone_model, model)
        vocab = (model / VOCAB_FILE).read_bytes()
        (model / VOCAB_FILE).unlink()
        sums = tmp_path / "SHA256SUMS"
        sums.write_text(f"{hashlib.sha256(vocab).hexdigest()}  {VOCAB_FILE}\n")
        self.release = threading.Event()
        self.mirror = ModelServer({VOCAB_FILE: vocab})
        self.mirror.faults.hold = self.release
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GIGASTT_") and "proxy" not in k.lower()}
        env.update(GIGASTT_MODEL_URL=self.mirror.url, GIGASTT_MODEL_SHA256_FILE=str(sums))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gigastt", "serve", "--port", "0", "--skip-quantize",
             "--model-dir", str(model), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while not self.mirror.requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.mirror.requests(), "start-up never asked for the model file"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.release.set()
        self.mirror.close()


@pytest.fixture
def starting(tone_model: Path, tmp_path: Path) -> Iterator[Starting]:
    config = tmp_path / "gigastt.toml"
    config.write_text("idle_timeout_secs = 300\n")
    server = Starting(tone_model, tmp_path, "--config", str(config))
    yield server
    server.close()


def test_sighup_during_start_up_is_applied_once_the_server_runs(starting: Starting,
                                                                tmp_path: Path) -> None:
    (tmp_path / "gigastt.toml").write_text("rate_limit_per_minute = 30\nrate_limit_burst = 1\n")
    os.kill(starting.proc.pid, signal.SIGHUP)  # the model is still being fetched
    with pytest.raises(subprocess.TimeoutExpired):  # it used to die of the signal here
        starting.proc.wait(0.5)
    starting.release.set()
    match = LISTENING.search(starting.lines[wait_for(starting.lines, "listening on", 60)])
    assert match is not None
    port = int(match.group(2))
    assert get("127.0.0.1", port, "/health")[0] == 200
    wait_for(starting.lines, "limits now")
    assert "Applying the SIGHUP received during start-up" in starting.log
    statuses = [get("127.0.0.1", port, "/v1/models")[0] for _ in range(2)]
    assert statuses == [200, 429]  # the file's limiter, switched on by the held reload
    os.kill(starting.proc.pid, signal.SIGTERM)
    assert starting.proc.wait(15) == 0


def test_sigterm_during_start_up_ends_the_process_at_once(starting: Starting) -> None:
    # Documented (docs/runbook.md): before the server runs there is nothing to drain, and the
    # default action ends it; systemd and Kubernetes count death by SIGTERM as a clean stop.
    os.kill(starting.proc.pid, signal.SIGTERM)
    assert starting.proc.wait(15) == -signal.SIGTERM
    assert "Traceback" not in starting.log


# --- --host :: ----------------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_host_unspecified_ipv6_listens_on_both_stacks(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--bind-all", "--rate-limit-per-minute", "1",
                         "--rate-limit-burst", "1", host="::")
    try:
        assert re.search(r"listening on http://\[::\]:\d+", proc.log)
        assert "binding to non-loopback address ::" in proc.log
        assert get("::1", proc.port, "/health")[0] == 200
        assert get("127.0.0.1", proc.port, "/health")[0] == 200
        # 127.0.0.1 arrives as ::ffff:127.0.0.1 and is still a trusted same-host proxy (D8):
        # two forwarded clients get a bucket each.
        for client in ("192.0.2.1", "192.0.2.2"):
            assert get("127.0.0.1", proc.port, "/v1/models", {"X-Forwarded-For": client})[0] == 200
    finally:
        assert stop(proc) == 0
