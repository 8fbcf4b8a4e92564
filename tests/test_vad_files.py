"""Files with the Silero VAD (D28): pauses skipped with the same words, ``?vad=false``, start-up
with good and bad VAD files, ``download --vad``; real server and CLI subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from gigastt.engine.model import GigaamModel
from gigastt.engine.recognizer import FRAME_SAMPLES, Recognizer, Window, own_words, split_windows
from gigastt.engine.vad import VAD_FILE, SileroVad
from gigastt.engine.windows import plan_windows, vad_plan
from gigastt.testing.audio import speech_like, wav_bytes
from gigastt.testing.models import DECODER, _decoder_io, _Graph, write_tone_model
from tests.conftest import ROOT, SHARED, golos_clips, read_pcm16
from tests.mirror import ModelServer
from tests.serverproc import ServerProcess, serving

VAD_PATH = SHARED / "fixtures" / "vad" / "silero_vad.onnx"
requires_vad = pytest.mark.skipif(not VAD_PATH.is_file() or not golos_clips(),
                                  reason="shared/fixtures/vad or golos not present")
RATE = 16_000


def local_model(path: Path) -> Path:
    """The tone model with a stateless prediction network: every 40 ms frame's tokens depend
    on that frame's log-mel alone, so any window cut in a pause gives the same words."""
    write_tone_model(path)
    g = _Graph()
    g.op("Mul", ["h.1", g.const("zero", np.float32(0.0))], out="h")
    g.op("Transpose", ["h"], out="dec", perm=[1, 0, 2])
    g.op("Identity", ["c.1"], out="c")
    import onnx

    model = g.model("decoder", *_decoder_io())
    onnx.save(model, path / DECODER)
    return path


def ten_minutes() -> np.ndarray:
    """Golos clips separated by 2-20 s pauses (a faint noise floor), ~70 % non-speech."""
    rng = np.random.default_rng(18)
    clips = [read_pcm16(p) for p in golos_clips()]
    parts: list[np.ndarray] = []
    total, i = 0, 0
    while total < 600 * RATE:
        pause = rng.normal(0, 3e-4, int(rng.uniform(2, 20) * RATE)).astype(np.float32)
        parts += [pause, clips[i % len(clips)]]
        total += len(pause) + len(clips[i % len(clips)])
        i += 1
    return np.concatenate(parts)[: 600 * RATE]


@pytest.fixture(scope="module")
def long_file() -> np.ndarray:
    if not golos_clips():
        pytest.skip("shared/fixtures/golos not present")
    return ten_minutes()


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return local_model(tmp_path_factory.mktemp("local-model"))


@pytest.fixture(scope="module")
def vad_model_dir(local_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local model plus the real VAD file in the model directory."""
    if not VAD_PATH.is_file():
        pytest.skip("shared/fixtures/vad/silero_vad.onnx not present")
    directory = tmp_path_factory.mktemp("with-vad")
    for item in local_dir.iterdir():
        shutil.copy(item, directory / item.name)
    shutil.copy(VAD_PATH, directory / VAD_FILE)
    return directory


# --- the planner --------------------------------------------------------------------------------


def test_plan_merges_short_pauses_skips_long_ones_and_aligns() -> None:
    samples = np.zeros(60 * RATE, np.float32)
    segments = [(1000, 3 * RATE), (int(3.5 * RATE), 5 * RATE), (10 * RATE + 7, 12 * RATE)]
    windows = plan_windows(samples, segments)
    assert [(w.start, w.stop) for w in windows] == [(640, 5 * RATE),
                                                    (10 * RATE, 12 * RATE)]
    assert all(w.start % FRAME_SAMPLES == 0 for w in windows)


def test_plan_cuts_long_speech_within_the_window_length() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.1, 70 * RATE).astype(np.float32)
    windows = plan_windows(samples, [(RATE, 65 * RATE)])
    assert windows[0].start == RATE and windows[-1].stop == 65 * RATE
    assert all(w.stop - w.start <= 20 * RATE for w in windows)
    assert all(a.stop == b.start for a, b in pairwise(windows))


def test_plan_never_overlaps_windows() -> None:
    samples = np.zeros(60 * RATE, np.float32)
    # The second segment starts inside the frame where the first (a full window) ends.
    windows = plan_windows(samples, [(0, 20 * RATE - 100), (20 * RATE - 50, 25 * RATE)])
    assert all(a.stop <= b.start for a, b in pairwise(windows))


@requires_vad
def test_ten_minutes_same_words_with_and_without_vad(local_dir: Path,
                                                     long_file: np.ndarray) -> None:
    """The same tokens at the same frames (so the same text and word times), while the VAD
    leaves most of the file unrecognised.

    Compared token by token: this model's vocabulary has continuation pieces that, within one
    window, glue onto the last word before a pause of any length, so *word grouping* differs
    where a 20 s window spans a pause that the VAD skips; the pieces and their times do not.
    """
    recognizer = Recognizer(GigaamModel(local_dir))
    vad = SileroVad(VAD_PATH)
    plan = vad_plan(vad, long_file)

    def tokens(windows: list[Window]) -> list[tuple[int, int]]:
        return [(t.id, w.frame_offset + t.frame) for w in windows
                for t in own_words(recognizer.model.vocab, w, recognizer.tokens(
                    long_file[w.audio_start : w.audio_stop]))[0]]

    without, with_vad = tokens(split_windows(long_file)), tokens(plan.windows)
    covered = sum(w.stop - w.start for w in plan.windows)
    print(f"speech {plan.speech_samples / RATE:.1f} s, windows {covered / RATE:.1f} s"
          f" of {len(long_file) / RATE:.0f} s, {len(without)} tokens")
    assert covered < 0.5 * len(long_file)
    assert len(without) > 1000
    assert with_vad == without
    text = "".join(w.word for win in plan.windows
                   for w in recognizer.window_words(long_file, win))
    assert text == "".join(w.word for win in split_windows(long_file)
                           for w in recognizer.window_words(long_file, win))


# --- the server ---------------------------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def vad_server(vad_model_dir: Path) -> Iterator[ServerProcess]:
    yield from serving(vad_model_dir, "--metrics", "--skip-quantize")


@requires_vad
def test_server_reports_vad_and_query_switches_it(vad_server: ServerProcess,
                                                   long_file: np.ndarray) -> None:
    health = vad_server.request("GET", "/health").json()
    assert isinstance(health, dict) and health["vad"] is True
    models = vad_server.request("GET", "/v1/models").json()
    assert isinstance(models, dict) and models["vad"] is True
    assert "VAD loaded from" in vad_server.log
    body = wav_bytes(long_file[: 120 * RATE])
    on = vad_server.request("POST", "/v1/transcribe", body)
    assert on.status == 200
    metrics = vad_server.request("GET", "/metrics").body.decode()
    speech = _metric(metrics, 'gigastt_vad_speech_seconds_total{route="transcribe"}')
    audio = _metric(metrics, 'gigastt_vad_audio_seconds_total{route="transcribe"}')
    assert audio == pytest.approx(120.0) and 0 < speech < audio
    off = vad_server.request("POST", "/v1/transcribe?vad=false", body)
    assert off.status == 200
    again = vad_server.request("GET", "/metrics").body.decode()
    assert _metric(again, 'gigastt_vad_audio_seconds_total{route="transcribe"}') == audio
    assert _metric(again, 'gigastt_vad_speech_seconds_total{route="transcribe"}') == speech
    a, b = json.loads(on.body), json.loads(off.body)
    assert [w["word"] for w in a["words"]] == [w["word"] for w in b["words"]]
    assert a["duration"] == b["duration"] == 120.0


@requires_vad
def test_openai_route_uses_the_vad(vad_server: ServerProcess, long_file: np.ndarray) -> None:
    """Non-stream OpenAI transcription goes through the VAD (its own metric route) and gives
    /v1/transcribe's text."""
    boundary = "vadboundary"
    audio = wav_bytes(long_file[: 60 * RATE])
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            f'whisper-1\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n').encode() + audio + (
            f"\r\n--{boundary}--\r\n").encode()
    reply = vad_server.request("POST", "/v1/audio/transcriptions", body,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert reply.status == 200, reply.body
    metrics = vad_server.request("GET", "/metrics").body.decode()
    assert _metric(metrics, 'gigastt_vad_audio_seconds_total{route="openai"}') == 60.0
    assert 0 < _metric(metrics, 'gigastt_vad_speech_seconds_total{route="openai"}') < 60.0
    native = json.loads(vad_server.request("POST", "/v1/transcribe", audio).body)
    assert json.loads(reply.body)["text"] == native["text"]


def _transcribe_cli(model_dir: Path, wav: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    return subprocess.run([sys.executable, "-m", "gigastt", "transcribe", str(wav),
                           "--model-dir", str(model_dir), "--format", "json", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@requires_vad
def test_cli_transcribe_with_and_without_vad(vad_model_dir: Path, long_file: np.ndarray,
                                             tmp_path: Path) -> None:
    wav = tmp_path / "two-minutes.wav"
    wav.write_bytes(wav_bytes(long_file[: 120 * RATE]))
    with_vad = _transcribe_cli(vad_model_dir, wav, "--vad", "on")
    without = _transcribe_cli(vad_model_dir, wav, "--no-vad")
    assert with_vad.returncode == 0 and without.returncode == 0, with_vad.stderr + without.stderr
    assert "VAD loaded from" in with_vad.stderr and "VAD" not in without.stderr
    a, b = json.loads(with_vad.stdout), json.loads(without.stdout)
    assert a["duration"] == b["duration"] == 120.0
    assert "".join(w["word"] for w in a["words"]) == "".join(w["word"] for w in b["words"])
    bad = _wrong_interface(tmp_path / "bad.onnx")
    refused = _transcribe_cli(vad_model_dir, wav, "--vad", "on", "--vad-model", str(bad))
    assert refused.returncode == 1
    assert f"Error: VAD model {bad} has the wrong interface" in refused.stderr


@requires_vad
@pytest.mark.parametrize("query", ["vad=maybe", "vad=true&vad=false", "vad="])
def test_bad_vad_query_is_refused(vad_server: ServerProcess, query: str) -> None:
    reply = vad_server.request("POST", f"/v1/transcribe?{query}", wav_bytes(np.zeros(RATE)))
    assert reply.status == 400
    assert json.loads(reply.body)["code"] == "invalid_vad"


def _serve(model_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A server expected to refuse to start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    return subprocess.run([sys.executable, "-m", "gigastt", "serve", "--port", "0",
                           "--skip-quantize", "--model-dir", str(model_dir), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _wrong_interface(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_vad_on_with_wrong_interface_refuses_to_start(local_dir: Path, tmp_path: Path) -> None:
    bad = _wrong_interface(tmp_path / "bad_vad.onnx")
    done = _serve(local_dir, "--vad", "on", "--vad-model", str(bad))
    assert done.returncode == 1
    assert f"VAD model {bad} has the wrong interface" in done.stdout + done.stderr


def test_vad_on_without_file_refuses_to_start(local_dir: Path) -> None:
    done = _serve(local_dir, "--vad", "on")
    assert done.returncode == 1
    assert f"VAD model {local_dir / VAD_FILE} not found" in done.stderr


def test_vad_auto_with_wrong_interface_runs_without(local_dir: Path, tmp_path: Path) -> None:
    bad = _wrong_interface(tmp_path / "bad_vad.onnx")
    server = ServerProcess(local_dir, "--skip-quantize", "--vad-model", str(bad))
    try:
        assert server.log.count("running without VAD (--vad auto)") == 1
        assert "bad_vad.onnx has the wrong interface" in server.log
        health = server.request("GET", "/health").json()
        assert isinstance(health, dict) and "vad" not in health
    finally:
        server.stop()


@requires_vad
def test_checksum_mismatch_in_model_dir(vad_model_dir: Path, tmp_path: Path) -> None:
    """A silero_vad.onnx in the model directory must have D28's pin (it was downloaded)."""
    directory = tmp_path / "models"
    shutil.copytree(vad_model_dir, directory)
    with open(directory / VAD_FILE, "ab") as handle:
        handle.write(b"\0")  # still a loadable model, but not the pinned file
    done = _serve(directory, "--vad", "on")
    assert done.returncode == 1
    assert f"VAD model {directory / VAD_FILE}: SHA-256 mismatch" in done.stderr
    server = ServerProcess(directory, "--skip-quantize")  # auto: runs without, says why once
    try:
        assert server.log.count("SHA-256 mismatch") == 1
        assert "vad" not in str(server.request("GET", "/v1/models").json())
    finally:
        server.stop()


def test_vad_off_ignores_a_bad_file(local_dir: Path, tmp_path: Path) -> None:
    bad = _wrong_interface(tmp_path / "bad_vad.onnx")
    server = ServerProcess(local_dir, "--skip-quantize", "--vad", "off", "--vad-model", str(bad))
    try:
        assert "VAD" not in server.log
        health = server.request("GET", "/health").json()
        assert isinstance(health, dict) and health["status"] == "ok" and "vad" not in health
        reply = server.request("POST", "/v1/transcribe", wav_bytes(speech_like(3, seed=1)))
        assert reply.status == 200 and json.loads(reply.body)["duration"] == 3.0
    finally:
        assert server.stop() == 0


def test_bad_vad_mode_is_a_usage_error(local_dir: Path) -> None:
    done = _serve(local_dir, "--vad", "maybe")
    assert done.returncode == 2 and "--vad" in done.stderr


# --- download --vad -----------------------------------------------------------------------------


def _download(model_dir: Path, mirror: ModelServer,
              *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIGASTT_") and "proxy" not in k.lower()}
    env["GIGASTT_DOWNLOAD_RETRIES"] = "0"
    return subprocess.run([sys.executable, "-m", "gigastt", "download", "--skip-quantize",
                           "--vad", "--model-dir", str(model_dir), "--model-url", mirror.url,
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@requires_vad
def test_download_vad_fetches_the_pinned_file(local_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "models"
    shutil.copytree(local_dir, directory)  # model files present: only the VAD is fetched
    mirror = ModelServer({VAD_FILE: VAD_PATH.read_bytes()})
    try:
        done = _download(directory, mirror)
        assert done.returncode == 0, done.stderr
        digest = hashlib.sha256((directory / VAD_FILE).read_bytes()).hexdigest()
        assert digest == "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
        assert [s.name for s in mirror.served] == [VAD_FILE]
        assert _download(directory, mirror).returncode == 0  # present: not fetched again
        assert len(mirror.served) == 1
    finally:
        mirror.close()


@requires_vad
def test_download_vad_refuses_a_corrupt_file(local_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "models"
    shutil.copytree(local_dir, directory)
    mirror = ModelServer({VAD_FILE: VAD_PATH.read_bytes()})
    mirror.faults.corrupt.add(VAD_FILE)
    try:
        done = _download(directory, mirror)
        assert done.returncode == 1
        assert f"SHA-256 mismatch for {VAD_FILE}" in done.stderr
        assert not (directory / VAD_FILE).exists()
    finally:
        mirror.close()
