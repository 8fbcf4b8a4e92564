"""Shared fixtures: the Golos clips, generated model directories, and a running server process.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Fuzz tests: a fixed seed and a modest example count by default (CI); for long local runs,
# `pytest --hypothesis-profile=deep tests/test_fuzz_*.py` (docs/architecture.md §16).
settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLOS = SHARED / "fixtures" / "golos"


def golos_clips() -> list[Path]:
    return sorted(GOLOS.glob("golos_*.wav"))


def golos_references() -> dict[str, str]:
    manifest = json.loads((GOLOS / "manifest.json").read_text(encoding="utf-8"))
    return {item["filename"]: item["reference"] for item in manifest}


def read_pcm16(path: Path) -> np.ndarray:
    """Reads a 16 kHz mono PCM16 WAV with the standard library (independent of our parser)."""
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def long_speech(seconds: float, *, seed: int = 0) -> np.ndarray:
    """``seconds`` of speech-like audio: a 10 s ``speech_like`` clip repeated, for tests where only
    the length matters (a busy executor, a big upload); generating it whole costs ~8 ms a second."""
    from gigastt.testing.audio import speech_like

    base = speech_like(10.0, seed=seed)
    return np.tile(base, -(-round(seconds * 16000) // base.shape[0]))[: round(seconds * 16000)]


requires_golos = pytest.mark.skipif(not GOLOS.is_dir(), reason="shared/fixtures/golos not present")


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gigastt.testing.models import write_small_model

    return write_small_model(tmp_path_factory.mktemp("small-model"))


@pytest.fixture(scope="session")
def tone_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gigastt.testing.models import write_tone_model

    return write_tone_model(tmp_path_factory.mktemp("tone-model"))
