"""The log-mel front end against its definition and against onnx-asr's NumPy GigaAM v3 preprocessor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gigastt.engine import features
from tests.conftest import golos_clips, read_pcm16, requires_golos

onnx_asr = pytest.importorskip("onnx_asr")


def _reference_constants() -> dict[str, np.ndarray]:
    import onnx_asr.preprocessors as pre

    return dict(np.load(Path(pre.__file__).parent / "data" / "fbanks.npz"))


def test_window_and_filterbank_equal_the_models_bf16_constants() -> None:
    ref = _reference_constants()
    assert np.array_equal(features.WINDOW, ref["gigaam_v3_window"])
    assert np.array_equal(features.FILTERBANK, ref["gigaam_v3"])


def test_bf16_rounding_is_round_to_nearest_even() -> None:
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e-39], dtype=np.float32)
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa (1.0) wins; 1 + 3·2^-8 rounds up.
    assert features.bf16_round(x).tolist()[:4] == [1.0, 1.0, 1.015625, -2.5]


def test_frame_count_and_short_input() -> None:
    assert features.frame_count(319) == 0
    assert features.frame_count(320) == 1
    assert features.frame_count(16000) == 99
    assert features.log_mel(np.zeros(100, np.float32)).shape == (64, 0)


def test_silence_is_the_log_floor() -> None:
    mel = features.log_mel(np.zeros(1600, np.float32))
    assert mel.shape == (64, 9)
    assert np.all(mel == np.float32(np.log(1e-9)))


@requires_golos
@pytest.mark.parametrize("clip", golos_clips(), ids=lambda p: p.name)
def test_features_match_onnx_asr_on_golos(clip: Path) -> None:
    from onnx_asr.preprocessors.numpy_preprocessor import GigaamPreprocessorNumpy

    samples = read_pcm16(clip)
    ref, ref_len = GigaamPreprocessorNumpy("gigaam_v3")(samples[None], np.array([len(samples)]))
    ours = features.log_mel(samples)
    assert ours.shape == ref[0].shape and ours.shape[1] == int(ref_len[0])
    assert float(np.abs(ours - ref[0]).max()) <= 1e-4
