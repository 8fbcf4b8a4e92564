"""D30: ``--max-audio-secs`` replaces the fixed 600 s cap on every route, the CLI and jobs.
"""

from __future__ import annotations

import importlib.util
import io
import json
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

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


def wav_form(data: bytes, *, stream: bool = False) -> bytes:
    """An OpenAI-route form with ``data`` as the file (and ``stream=true``)."""
    fields = b"--b\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n"
    return ((fields if stream else b"") + b"--b\r\nContent-Disposition: form-data; "
            b"name=\"file\"; filename=\"a.wav\"\r\n\r\n" + data + b"\r\n--b--\r\n")


FORM = {"Content-Type": "multipart/form-data; boundary=b"}


def job_error(server: ServerProcess, data: bytes) -> str:
    """Submit ``data`` as a job, wait for it to fail, and return its error code."""
    job = json.loads(server.request("POST", "/v1/jobs", data).body)["id"]
    deadline = time.monotonic() + 120
    while (state := json.loads(server.request("GET", f"/v1/jobs/{job}").body))[
            "status"] != "failed":
        assert time.monotonic() < deadline and state["status"] in ("queued", "running")
        time.sleep(0.05)
    code: str = state["error"]["code"]
    return code


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
        reply = server.request("POST", "/v1/audio/transcriptions", wav_form(over), headers=FORM)
        assert reply.status == 422 and json.loads(reply.body)["error"]["code"] == "invalid_audio"
        assert job_error(server, over) == "audio_too_long"
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


def peak_rss_mb(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``gigastt ARGS`` and read its peak resident memory (its own, from its parent)."""
    wrapper = ("import resource, subprocess, sys;"
               "r = subprocess.run([sys.executable, '-m', 'gigastt', *sys.argv[1:]],"
               " capture_output=True, text=True);"
               "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr);"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
               "sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    return result, int(result.stderr.strip().splitlines()[-1]) / 1024


def test_cli_memory_does_not_grow_with_the_recording(small_model: Path, tmp_path: Path) -> None:
    # D30: a WAV on disk is read window by window. 20 minutes as one float32 array at 16 kHz
    # would be 77 MB, plus the 38 MB file read whole; both show in the peak if anyone does it.
    clip = audio.speech_like(20, seed=6)
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    short.write_bytes(pcm16_wav(40, clip))
    long.write_bytes(pcm16_wav(20 * 60 - 20, clip))
    peaks = {}
    for path in (short, long):
        result, peaks[path] = peak_rss_mb("transcribe", str(path), "--model-dir",
                                          str(small_model), "--format", "json")
        assert result.returncode == 0, result.stderr
        words = json.loads(result.stdout)["words"]
        assert words and all(w["start"] >= (path.stat().st_size - 44) / 32000 - 20.04
                             for w in words)
    assert peaks[long] < peaks[short] + 25, peaks


def test_cli_reads_a_pipe_whole(small_model: Path, tmp_path: Path) -> None:
    # `/dev/stdin` on a pipe cannot be read twice or from an offset: it is read whole.
    path = tmp_path / "a.wav"
    path.write_bytes(pcm16_wav(1, audio.speech_like(5, seed=9)))
    piped = subprocess.run([sys.executable, "-m", "gigastt", "transcribe", "/dev/stdin",
                            "--model-dir", str(small_model), "--format", "json"],
                           input=path.read_bytes(), capture_output=True, timeout=300, cwd=ROOT)
    assert piped.returncode == 0, piped.stderr
    direct = gigastt("transcribe", str(path), "--model-dir", str(small_model), "--format", "json")
    assert json.loads(piped.stdout) == json.loads(direct.stdout)


@pytest.mark.skipif(importlib.util.find_spec("soundfile") is None,
                    reason="soundfile (extra 'formats') missing")
def test_a_stream_found_too_long_while_decoding_names_the_cap(small_model: Path,
                                                              tmp_path: Path) -> None:
    # A FLAC header may declare no length (total samples 0, as a pipe's encoder writes): the
    # cap is then met by decoding, after a stream's 200 went out.
    from tests.test_audio_limits import flac_bytes, patch_streaminfo

    clip = (audio.speech_like(25, seed=10) * 32767).astype(np.int16)
    data = patch_streaminfo(flac_bytes(clip, RATE), total=0)
    config = tmp_path / "limits.toml"
    config.write_text("max_audio_secs = 20\n")
    server = ServerProcess(small_model, "--config", str(config))
    try:
        reply = server.request("POST", "/v1/transcribe", data)
        assert reply.status == 422 and json.loads(reply.body)["code"] == "transcription_error"
        reply = server.request("POST", "/v1/transcribe/stream", data)
        last = [line for line in reply.body.decode().splitlines() if line.startswith("data: ")][-1]
        assert reply.status == 200 and json.loads(last[6:]) == {
            "code": "invalid_audio", "type": "error",
            "message": "The audio is longer than the server's maximum (--max-audio-secs)."}
        reply = server.request("POST", "/v1/audio/transcriptions",
                               wav_form(data, stream=True), headers=FORM)
        last = [line for line in reply.body.decode().splitlines() if line.startswith("data: ")][-1]
        assert json.loads(last[6:])["error"] == {
            "code": "invalid_audio", "type": "invalid_request_error", "param": None,
            "message": "The audio is longer than the server's maximum (--max-audio-secs)."}
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log


def test_bad_samples_late_in_a_file_fail_every_route_precisely(small_model: Path,
                                                               tmp_path: Path) -> None:
    # The header is fine; the NaN is only met when decoding reaches 50 s, after windows were
    # recognised (and, on the event streams, sent): each route still names the audio.
    x = audio.speech_like(60, seed=7).astype(np.float32)
    x[16000 * 50] = np.nan
    bad = audio.wav_bytes(x, 16000, sample_format="float32")
    server = ServerProcess(small_model, "--jobs-dir", str(tmp_path / "jobs"))
    try:
        reply = server.request("POST", "/v1/transcribe", bad)
        assert reply.status == 422 and json.loads(reply.body)["code"] == "transcription_error"
        reply = server.request("POST", "/v1/transcribe/stream", bad)
        assert reply.status == 200
        events = [json.loads(line[6:]) for line in reply.body.decode().splitlines()
                  if line.startswith("data: ")]
        assert events[-1] == {"code": "invalid_audio", "type": "error",
                              "message": "Failed to decode audio file. Check format (WAV, MP3,"
                                         " M4A, OGG, FLAC supported)."}
        assert any(e["type"] in ("partial", "final") for e in events[:-1])
        reply = server.request("POST", "/v1/audio/transcriptions", wav_form(bad), headers=FORM)
        assert reply.status == 422 and json.loads(reply.body)["error"]["code"] == "invalid_audio"
        reply = server.request("POST", "/v1/audio/transcriptions", wav_form(bad, stream=True),
                               headers=FORM)
        last = [line for line in reply.body.decode().splitlines() if line.startswith("data: ")][-1]
        assert json.loads(last[6:])["error"]["code"] == "invalid_audio"
        assert job_error(server, bad) == "invalid_audio"
        good = audio.wav_bytes(x[: 16000 * 40], 16000, sample_format="float32")
        assert server.request("POST", "/v1/transcribe", good).status == 200
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log
