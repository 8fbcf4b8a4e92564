"""``gigastt quantize`` and the automatic INT8 step (README "Model files").
Generated small models stand in for the real encoder; the INT8 file must load and decode.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gigastt.engine.model import ENCODER_FILE, ENCODER_INT8_FILE, GigaamModel
from gigastt.store import prepare_model
from gigastt.store.download import sha256_of
from gigastt.store.quantize import (
    INSTALL_HINT,
    QuantizeError,
    QuantizeUnavailable,
    auto_quantize,
    quantize_encoder,
)
from tests.conftest import ROOT

pytest.importorskip("onnx")


@pytest.fixture
def model(small_model: Path, tmp_path: Path) -> Path:
    """A private copy: quantizing writes into the directory."""
    target = tmp_path / "model"
    shutil.copytree(small_model, target)
    return target


def gigastt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    return subprocess.run([sys.executable, "-m", "gigastt", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


def test_quantize_command_writes_a_loadable_int8_encoder(model: Path) -> None:
    from gigastt.engine.recognizer import Recognizer
    from gigastt.testing.audio import speech_like

    result = gigastt("quantize", "--model-dir", str(model))
    assert result.returncode == 0, result.stderr
    int8 = model / ENCODER_INT8_FILE
    assert f"Quantized model saved to {int8}" in result.stderr
    assert "WARNING:root" not in result.stderr  # the quantizer's own chatter is demoted
    assert sorted(p.name for p in model.iterdir() if "int8" in p.name) == [ENCODER_INT8_FILE]
    assert int8.stat().st_size < (model / ENCODER_FILE).stat().st_size
    loaded = GigaamModel(model)
    assert loaded.info.encoder == "int8"
    text = Recognizer(loaded).transcribe(speech_like(3.0)).text
    assert text.strip(), "the INT8 encoder must still decode speech to tokens"


def test_existing_int8_is_kept_unless_forced(model: Path) -> None:
    assert gigastt("quantize", "--model-dir", str(model)).returncode == 0
    int8 = model / ENCODER_INT8_FILE
    before = int8.stat()
    again = gigastt("quantize", "--model-dir", str(model))
    assert again.returncode == 0
    assert f"INT8 model already exists: {int8}" in again.stderr
    assert "Use --force to re-quantize." in again.stderr
    same = int8.stat()
    assert (same.st_ino, same.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    forced = gigastt("quantize", "--model-dir", str(model), "--force")
    assert forced.returncode == 0 and "Quantized model saved to" in forced.stderr
    assert int8.stat().st_ino != before.st_ino  # a new file renamed over the old one
    assert GigaamModel(model).info.encoder == "int8"


def test_missing_fp32_encoder(tmp_path: Path) -> None:
    result = gigastt("quantize", "--model-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith(
        f"Error: Cannot quantize: FP32 encoder not found at {tmp_path / ENCODER_FILE}")


def test_broken_encoder_leaves_nothing_behind(model: Path) -> None:
    (model / ENCODER_FILE).write_bytes(b"not an onnx graph")
    result = gigastt("quantize", "--model-dir", str(model))
    assert result.returncode == 1 and "Error: Cannot quantize " in result.stderr
    assert not [p for p in model.iterdir() if "int8" in p.name]


@pytest.fixture
def gigastt_logger() -> Iterator[logging.Logger]:
    """The package logger, restored afterwards (``cli.main`` reconfigures it)."""
    logger = logging.getLogger("gigastt")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


def test_without_the_onnx_extra(model: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str],
                                caplog: pytest.LogCaptureFixture,
                                gigastt_logger: logging.Logger) -> None:
    from gigastt import cli

    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(QuantizeUnavailable, match=r"pip install 'gigastt-server\[quantize\]'"):
        quantize_encoder(model)
    assert cli.main(["quantize", "--model-dir", str(model)]) == 1
    assert INSTALL_HINT in capsys.readouterr().err
    # serve/download: an info line, then the FP32 encoder
    gigastt_logger.propagate = True
    caplog.set_level(logging.INFO, logger="gigastt")
    auto_quantize(model, expected_sha256=sha256_of(model / ENCODER_FILE), verified=True)
    assert any("optional package 'onnx' is not installed" in r.message and r.levelname == "INFO"
               for r in caplog.records)
    assert not (model / ENCODER_INT8_FILE).exists()


def test_auto_quantize_only_a_verified_encoder(model: Path) -> None:
    auto_quantize(model, expected_sha256="0" * 64, verified=False)
    assert not (model / ENCODER_INT8_FILE).exists()
    auto_quantize(model, expected_sha256=sha256_of(model / ENCODER_FILE), verified=False)
    assert (model / ENCODER_INT8_FILE).is_file()
    mtime = (model / ENCODER_INT8_FILE).stat().st_mtime_ns
    auto_quantize(model, expected_sha256=None, verified=True)  # present: nothing to do
    assert (model / ENCODER_INT8_FILE).stat().st_mtime_ns == mtime


def test_prepare_model_quantizes_with_the_operator_sha256_file(model: Path,
                                                               tmp_path: Path) -> None:
    sums = tmp_path / "sums"
    sums.write_text(f"{sha256_of(model / ENCODER_FILE)}  {ENCODER_FILE}\n")
    env = {"GIGASTT_MODEL_SHA256_FILE": str(sums)}
    prepare_model(model, model_url=None, env=env, quantize=False, on_demand=True)
    assert not (model / ENCODER_INT8_FILE).exists()
    prepare_model(model, model_url=None, env=env, quantize=True, on_demand=True)
    assert GigaamModel(model).info.encoder == "int8"


def test_quantize_error_when_fp32_missing_in_auto_mode(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="Cannot quantize: FP32 encoder not found at"):
        auto_quantize(tmp_path, expected_sha256=None, verified=False)
