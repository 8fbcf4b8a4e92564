"""Progress people can see: the CLI's line on a terminal (and nothing on a pipe), and the SSE
``progress`` events that only ``?progress=true`` asks for.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gigastt.progress import TerminalProgress, clock_text, progress_text
from gigastt.testing import audio
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
TIMESTAMP = re.compile(rb'"timestamp":[0-9.e+-]+')


def test_progress_text_and_clock() -> None:
    assert clock_text(None) == "--:--"
    assert clock_text(59.4) == "0:59" and clock_text(3600) == "1:00:00"
    assert progress_text(0.0, 0.0, 7200) == (
        "transcribing   0.0% of 2:00:00 of audio, elapsed 0:00, ETA --:--")
    assert progress_text(0.25, 30.0, 7200) == (
        "transcribing  25.0% of 2:00:00 of audio, elapsed 0:30, ETA 1:30")


def test_terminal_line_is_rewritten_in_place_and_ended() -> None:
    now = [0.0]
    out = io.StringIO()
    line = TerminalProgress(out, 100.0, clock=lambda: now[0])
    now[0] = 10.0
    line.update(0.5)
    line.finish()
    parts = out.getvalue().split("\r")
    assert parts[0] == "" and out.getvalue().endswith("100.0% of 1:40 of audio, elapsed 0:10,"
                                                      " ETA 0:00\n")
    assert "50.0%" in parts[2] and "ETA 0:10" in parts[2]


def _transcribe(model: Path, wav: Path, *extra: str, tty: bool) -> tuple[int, bytes, bytes]:
    """Run ``gigastt transcribe`` with stderr on a pseudo-terminal or a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    cmd = [sys.executable, "-m", "gigastt", *extra, "transcribe", str(wav), "--model-dir",
           str(model)]
    if not tty:
        done = subprocess.run(cmd, capture_output=True, timeout=120, cwd=ROOT, env=env)
        return done.returncode, done.stdout, done.stderr
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            err += chunk
        assert proc.stdout is not None
        out = proc.stdout.read()
        return proc.wait(60), out, err
    finally:
        os.close(master)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "speech.wav"
    path.write_bytes(audio.wav_bytes(audio.speech_like(70, seed=8)))  # four windows
    return path


def test_cli_shows_a_progress_line_on_a_terminal(small_model: Path, wav: Path) -> None:
    code, out, err = _transcribe(small_model, wav, tty=True)
    assert code == 0
    text = err.decode()
    lines = [part for part in re.split(r"[\r\n]+", text) if part.startswith("transcribing")]
    percents = [float(re.search(r"(\d+\.\d)%", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert percents[0] == 0.0 and percents[-1] == 100.0 and percents == sorted(percents)
    assert len(percents) >= 4  # at least one line per window
    assert "of 1:10 of audio" in lines[-1] and "ETA 0:00" in lines[-1]
    assert "transcribed 70.0 s of audio into" in text  # the summary at --log-level info
    _, piped_out, _ = _transcribe(small_model, wav, tty=False)
    assert out == piped_out and out  # stdout is the transcript alone either way


def test_cli_prints_only_a_summary_on_a_pipe(small_model: Path, wav: Path) -> None:
    code, out, err = _transcribe(small_model, wav, tty=False)
    assert code == 0 and out
    assert b"\r" not in err and b"transcribing" not in err
    summary = [line for line in err.decode().splitlines() if "transcribed" in line]
    assert len(summary) == 1 and "transcribed 70.0 s of audio into" in summary[0]
    assert "real-time factor" in summary[0]
    code, out, err = _transcribe(small_model, wav, "--log-level", "warn", tty=False)
    assert code == 0 and out and err == b""
    code, _, err = _transcribe(small_model, wav, "--log-level", "off", tty=True)
    assert code == 0 and b"transcribing" not in err  # `off` silences the line too


def _events(body: bytes) -> list[bytes]:
    return [chunk for chunk in body.split(b"\n\n") if chunk]


def test_sse_progress_only_when_asked(small_model: Path) -> None:
    clip = audio.wav_bytes(audio.speech_like(40, seed=9))
    server = ServerProcess(small_model)
    try:
        plain = server.request("POST", "/v1/transcribe/stream", clip).body
        off = server.request("POST", "/v1/transcribe/stream?progress=false", clip).body
        on = server.request("POST", "/v1/transcribe/stream?progress=true", clip).body
    finally:
        server.stop()
    # Without the flag: exactly today's stream, i.e. the same events byte for byte (the wall
    # clock timestamps aside) as the progress stream without its progress events, and no other.
    assert b'"type":"progress"' not in plain and b'"type":"progress"' not in off
    assert TIMESTAMP.sub(b"", plain) == TIMESTAMP.sub(b"", off)
    segments = [e for e in _events(on) if b'"type":"progress"' not in e]
    assert TIMESTAMP.sub(b"", b"".join(e + b"\n\n" for e in segments)) == TIMESTAMP.sub(b"",
                                                                                       plain)
    for event in _events(plain):
        assert event.startswith(b"data: ")
        assert json.loads(event[6:])["type"] in ("partial", "final")
    progress = [json.loads(e[6:]) for e in _events(on) if b'"type":"progress"' in e]
    assert all(list(p) == ["progress", "type"] for p in progress)
    values = [p["progress"] for p in progress]
    assert values == sorted(set(values)) and values[0] > 0 and values[-1] == 1.0
    assert len(values) == 40  # a whole percent more at each of the 40 one-second chunks
