"""D30: ``--max-audio-secs`` replaces the fixed 600 s cap on every route, the CLI and jobs.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

from gigastt.testing import audio
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000


def pcm16_wav(silence_secs: float, clip: np.ndarray) -> bytes:
    """A 16 kHz mono PCM16 WAV: ``silence_secs`` of digital silence, then ``clip``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(bytes(2 * round(silence_secs * RATE)))
        w.writeframes((np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def gigastt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gigastt", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=full)


def test_45_minutes_of_silence_and_speech_transcribe_with_the_default_cap(
        small_model: Path) -> None:
    clip = audio.speech_like(10, seed=1)
    body = pcm16_wav(45 * 60, clip)  # 86 MB: over the 50 MiB default body limit
    server = ServerProcess(small_model, "--body-limit-bytes", "100000000")
    try:
        reply = server.request("POST", "/v1/transcribe", body, timeout=600)
        assert reply.status == 200, reply.body
        result = json.loads(reply.body)
        assert result["duration"] == 45 * 60 + 10.0
        # The small model says nothing over silence: every word is the clip's, at its time.
        assert result["words"] and all(w["start"] >= 45 * 60 - 0.04 for w in result["words"])
    finally:
        server.stop()


def test_the_cap_is_configurable_and_keeps_each_routes_status(small_model: Path,
                                                               tmp_path: Path) -> None:
    over = pcm16_wav(0, audio.speech_like(21, seed=2))
    under = pcm16_wav(0, audio.speech_like(19, seed=2))
    config = tmp_path / "limits.toml"
    config.write_text("max_audio_secs = 20\n")
    jobs_dir = tmp_path / "jobs"
    server = ServerProcess(small_model, "--config", str(config), "--jobs-dir", str(jobs_dir))
    try:
        assert server.request("POST", "/v1/transcribe", under).status == 200
        reply = server.request("POST", "/v1/transcribe", over)
        assert reply.status == 422 and json.loads(reply.body)["code"] == "transcription_error"
        reply = server.request("POST", "/v1/transcribe/stream", over)
        assert reply.status == 422 and json.loads(reply.body)["code"] == "invalid_audio"
        form = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                b"\r\n" + over + b"\r\n--b--\r\n")
        reply = server.request("POST", "/v1/audio/transcriptions", form,
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert reply.status == 422 and json.loads(reply.body)["error"]["code"] == "invalid_audio"
        job = json.loads(server.request("POST", "/v1/jobs", over).body)["id"]
        deadline = time.monotonic() + 60
        while (state := json.loads(server.request("GET", f"/v1/jobs/{job}").body))[
                "status"] != "failed":
            assert time.monotonic() < deadline and state["status"] in ("queued", "running")
            time.sleep(0.05)
        assert state["error"]["code"] == "audio_too_long"
        # A reload applies a new cap to the next request (D12), like the other limits.
        config.write_text("max_audio_secs = 30\n")
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "max_audio_secs=30" not in server.log:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.request("POST", "/v1/transcribe", over).status == 200
    finally:
        server.stop()


def test_cli_cap_flag_environment_and_zero(small_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(pcm16_wav(0, audio.speech_like(11, seed=3)))
    base = ("transcribe", str(path), "--model-dir", str(small_model))
    for args, env in (((*base, "--max-audio-secs", "10"), {}),
                      (base, {"GIGASTT_MAX_AUDIO_SECS": "10"})):
        result = gigastt(*args, env=env)
        assert result.returncode == 1
        assert "Error: invalid audio: audio is 11.0 s long; the maximum is 10 s" in result.stderr
    assert gigastt(*base, "--max-audio-secs", "11").returncode == 0
    assert gigastt(*base, "--max-audio-secs", "0", env={"GIGASTT_MAX_AUDIO_SECS": "1"}
                   ).returncode == 0  # the flag wins; 0 = no duration cap
    for args, env in (((*base, "--max-audio-secs", "-1"), {}),
                      ((*base, "--max-audio-secs", "604801"), {}),
                      (base, {"GIGASTT_MAX_AUDIO_SECS": "ten"})):
        result = gigastt(*args, env=env)
        assert result.returncode == 2 and "usage:" in result.stderr
