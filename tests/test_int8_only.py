"""INT8-only model directories (docs/decisions.md D53): complete without the FP32 encoder, used by
``serve`` and ``transcribe`` with nothing fetched, and made by ``download --int8-only``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gigastt.engine.model import ENCODER_FILE, ENCODER_INT8_FILE, MODEL_FILES, missing_files
from gigastt.testing.audio import tone_sequence, wav_bytes
from tests.mirror import ModelServer
from tests.serverproc import ServerProcess

HELLO = ["▁При", "вет", ",", "▁мир", "."]
TEXT = "Привет, мир.\n"


@pytest.fixture(scope="module")
def int8_dir(tone_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tone model after ``gigastt download --int8-only`` (quantized, FP32 encoder gone)."""
    directory = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(tone_model, directory)
    result = _gigastt("download", "--int8-only", "--model-dir", str(directory),
                      url="http://127.0.0.1:9/")
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def mirror(tone_model: Path) -> Iterator[ModelServer]:
    """A mirror that would serve the FP32 files and records every request: it must get none."""
    server = ModelServer({name: (tone_model / name).read_bytes() for name in MODEL_FILES})
    yield server
    server.close()


@pytest.fixture(scope="module")
def hello_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "hello.wav"
    path.write_bytes(wav_bytes(tone_sequence(HELLO)))
    return path


def _gigastt(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    env.update(GIGASTT_MODEL_URL=url, GIGASTT_DOWNLOAD_RETRIES="0")
    return subprocess.run([sys.executable, "-m", "gigastt", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_download_int8_only_leaves_only_the_int8_encoder(int8_dir: Path) -> None:
    assert sorted(p.name for p in int8_dir.iterdir() if p.suffix in (".onnx", ".txt")) == sorted(
        [ENCODER_INT8_FILE, *MODEL_FILES[1:]])
    assert not (int8_dir / ENCODER_FILE).exists()
    assert not list(int8_dir.glob("*.partial"))


def test_an_int8_only_directory_is_complete(int8_dir: Path, tmp_path: Path) -> None:
    assert missing_files(int8_dir) == []
    bare = tmp_path / "bare"
    shutil.copytree(int8_dir, bare)
    (bare / ENCODER_INT8_FILE).unlink()
    assert missing_files(bare) == [ENCODER_FILE]  # no encoder at all: the FP32 one is fetched


def test_transcribe_uses_it_and_fetches_nothing(int8_dir: Path, hello_wav: Path,
                                                mirror: ModelServer) -> None:
    before = sorted(os.listdir(int8_dir))
    result = _gigastt("transcribe", str(hello_wav), "--model-dir", str(int8_dir), url=mirror.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == TEXT
    assert "encoder int8" in result.stderr
    assert mirror.requests() == []
    assert sorted(os.listdir(int8_dir)) == before


def test_transcribe_with_the_mirror_nowhere(int8_dir: Path, hello_wav: Path) -> None:
    result = _gigastt("transcribe", str(hello_wav), "--model-dir", str(int8_dir),
                      url="http://127.0.0.1:9/")
    assert (result.returncode, result.stdout) == (0, TEXT), result.stderr


def test_serve_uses_it_and_fetches_nothing(int8_dir: Path, hello_wav: Path,
                                           mirror: ModelServer) -> None:
    server = ServerProcess(int8_dir, env={"GIGASTT_MODEL_URL": mirror.url})
    try:
        models = server.request("GET", "/v1/models").json()
        assert isinstance(models, dict) and models["encoder"] == "int8"
        reply = server.request("POST", "/v1/transcribe?format=text", hello_wav.read_bytes())
        assert (reply.status, reply.body.decode()) == (200, TEXT)
    finally:
        assert server.stop() == 0
    assert mirror.requests() == []
    assert not (int8_dir / ENCODER_FILE).exists()


def test_download_again_fetches_nothing(int8_dir: Path, mirror: ModelServer) -> None:
    for extra in ([], ["--int8-only"]):
        result = _gigastt("download", "--model-dir", str(int8_dir), *extra, url=mirror.url)
        assert result.returncode == 0, result.stderr
    assert mirror.requests() == []
    assert not (int8_dir / ENCODER_FILE).exists()


def test_int8_only_with_skip_quantize_is_a_usage_error(tmp_path: Path) -> None:
    result = _gigastt("download", "--int8-only", "--skip-quantize", "--model-dir",
                      str(tmp_path), url="http://127.0.0.1:9/")
    assert result.returncode == 2
    assert "--int8-only" in result.stderr and "--skip-quantize" in result.stderr


def test_int8_only_without_onnx_keeps_the_fp32_encoder(tone_model: Path, tmp_path: Path) -> None:
    """Quantizing needs the `quantize` extra: without it the FP32 encoder stays, with an error."""
    directory = tmp_path / "model"
    shutil.copytree(tone_model, directory)
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "onnx.py").write_text("raise ImportError('onnx blocked for this test')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    env.update(PYTHONPATH=str(blocker), GIGASTT_MODEL_URL="http://127.0.0.1:9/")
    result = subprocess.run([sys.executable, "-m", "gigastt", "download", "--int8-only",
                             "--model-dir", str(directory)], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "gigastt-server[quantize]" in result.stderr
    assert (directory / ENCODER_FILE).is_file()
    assert not (directory / ENCODER_INT8_FILE).exists()
