"""The exact GigaAM v3 log-mel front end: bf16-rounded periodic Hann, HTK filterbank, no centring.

Bit-compatible with the model's own preprocessing (and onnx-asr's NumPy port), not the Rust one's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
N_FFT = 320
HOP = 160
N_MELS = 64
LOG_CLIP = (1e-9, 1e9)

F32 = npt.NDArray[np.float32]


def bf16_round(x: npt.NDArray[np.floating]) -> F32:
    """Round float32 values to bfloat16 (round to nearest even), returned as float32.

    The v3 checkpoint stores its window and filterbank buffers in bfloat16; the weights were
    trained on features computed with these rounded constants.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def hann_window() -> F32:
    """Periodic Hann window of length ``N_FFT``, rounded to bfloat16."""
    n = np.arange(N_FFT, dtype=np.float64)
    return bf16_round(0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT))


def _hz_to_mel(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank() -> F32:
    """HTK mel triangles, 0–8000 Hz, no area normalisation, ``[N_FFT // 2 + 1, N_MELS]``, bf16."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = np.linspace(0.0, 1.0, N_MELS + 2) * _hz_to_mel(np.array(SAMPLE_RATE / 2.0))
    points = _mel_to_hz(edges)
    diffs = np.diff(points)
    slopes = points[None, :] - bins[:, None]
    down = -slopes[:, :-2] / diffs[:-1]
    up = slopes[:, 2:] / diffs[1:]
    return bf16_round(np.maximum(0.0, np.minimum(down, up)))


WINDOW = hann_window()
FILTERBANK = mel_filterbank()


def frame_count(samples: int) -> int:
    """Feature frames for ``samples`` 16 kHz samples (no padding: fewer than one window → 0)."""
    return 0 if samples < N_FFT else (samples - N_FFT) // HOP + 1


def log_mel(samples: F32) -> F32:
    """Log-mel features ``[N_MELS, T]`` of mono float32 16 kHz audio."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    frames = frame_count(x.shape[0])
    if frames == 0:
        return np.zeros((N_MELS, 0), dtype=np.float32)
    strided = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
    spectrum = np.abs(np.fft.rfft(strided * WINDOW, N_FFT)).astype(np.float32) ** 2
    mel = spectrum @ FILTERBANK
    logmel: F32 = np.log(np.clip(mel, *LOG_CLIP)).T.astype(np.float32, copy=False)
    return logmel
