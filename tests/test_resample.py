"""The polyphase resampler (decision D19): output length, passband flatness, alias and image
rejection, DC gain, exactness against the defining sum, and stream chunking without seams.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gigastt.engine import audio
from gigastt.engine.audio import MODEL_RATE, Resampler, resample

RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 37800]
DOWN_RATES = [r for r in RATES if r > MODEL_RATE]
UP_RATES = [r for r in RATES if r < MODEL_RATE]
# Measured with this design (Kaiser β 14.8, 32 zero crossings, cutoff 0.94 of the lower
# Nyquist), identical for every input rate: 1–6.5 kHz within 0.0001 dB, 7 kHz −0.29 dB,
# 7.5 kHz −5.6 dB; 8.5 kHz −87.7 dB; 9–12 kHz at the float32 noise floor (−144…−166 dB).
# The bounds keep a margin for the tone-fit estimate while still catching any design slip.
PASSBAND_DB = 0.01
ALIAS_DB = -80.0


def _tone(rate: int, freq: float, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _middle(y: np.ndarray) -> slice:
    # Skip the onset/offset transients of a tone that starts and stops abruptly.
    return slice(len(y) // 5, len(y) - len(y) // 5)


def _fit(y: np.ndarray, freq: float) -> tuple[float, float]:
    """Amplitude of the component at ``freq`` (least squares) and the RMS of the rest."""
    sl = _middle(y)
    t = np.arange(len(y))[sl] / MODEL_RATE
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    seg = y[sl].astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
    residual = seg - basis @ coef
    return float(np.hypot(*coef)), float(np.sqrt(np.mean(residual**2)))


def _db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-30))


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 160, 441, 1000, 12345])
def test_output_length_is_ceil(rate: int, n: int) -> None:
    x = np.zeros(n, dtype=np.float32)
    assert len(resample(x, rate)) == -(-n * MODEL_RATE // rate)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16000, 44100), (16000, 48000), (48000, 44100)])
def test_other_output_rates(in_rate: int, out_rate: int) -> None:
    x = _tone(in_rate, 1000)
    y = resample(x, in_rate, out_rate)
    assert y.dtype == np.float32 and len(y) == -(-len(x) * out_rate // in_rate)


def test_equal_rates_give_a_copy() -> None:
    x = np.arange(5, dtype=np.float32)
    y = resample(x, 16000)
    assert y is not x and np.array_equal(x, y)
    r = Resampler(16000)
    assert np.array_equal(r.process(x), x) and r.flush().size == 0


@pytest.mark.parametrize("rate", RATES)
def test_passband_is_flat(rate: int) -> None:
    nyquist = min(rate, MODEL_RATE) / 2
    # 1 kHz and 6 kHz; rates whose Nyquist is below 6 kHz get a tone at 3/4 of it instead.
    for freq in (1000.0, min(6000.0, 0.75 * nyquist)):
        amplitude, _ = _fit(resample(_tone(rate, freq), rate), freq)
        assert abs(_db(amplitude / 0.5)) <= PASSBAND_DB, (rate, freq, _db(amplitude / 0.5))


@pytest.mark.parametrize("rate", DOWN_RATES)
@pytest.mark.parametrize("freq", [8500.0, 9500.0])
def test_tones_above_8khz_do_not_alias(rate: int, freq: float) -> None:
    # 9.5 kHz would fold to 6.5 kHz, 8.5 kHz to 7.5 kHz; all output is alias, so measure it all.
    reference, _ = _fit(resample(_tone(rate, 1000), rate), 1000)
    y = resample(_tone(rate, freq), rate).astype(np.float64)
    alias = float(np.sqrt(2 * np.mean(y[_middle(y)] ** 2)))
    assert _db(alias / reference) <= ALIAS_DB, (rate, freq, _db(alias / reference))


@pytest.mark.parametrize("rate", UP_RATES)
def test_upsampling_images_are_rejected(rate: int) -> None:
    # A tone at f in the input has images at rate ± f; everything but the tone is an image.
    freq = 0.75 * rate / 2
    amplitude, rest = _fit(resample(_tone(rate, freq), rate), freq)
    assert _db(rest / amplitude) <= ALIAS_DB, (rate, _db(rest / amplitude))


@pytest.mark.parametrize("rate", RATES)
def test_dc_gain_is_one(rate: int) -> None:
    y = resample(np.full(rate // 10, 0.25, dtype=np.float32), rate)
    assert np.max(np.abs(y[_middle(y)] - 0.25)) < 1e-6


def _reference(x: np.ndarray, in_rate: int, out_rate: int, ns: np.ndarray) -> np.ndarray:
    """Outputs ``ns`` of y[n] = Σ_k x[k]·h(t_n − k) / Σ_k h(t_n − k), t_n = n·in/out, in float64.

    The denominator (sum over all integers k) is the per-phase unit-DC-gain normalisation.
    """
    scale = audio._ROLLOFF * min(1.0, out_rate / in_rate)
    half_width = audio._ZEROS / scale

    def h(t: np.ndarray) -> np.ndarray:
        arg = np.sqrt(np.clip(1 - (t / half_width) ** 2, 0, None))
        window = np.i0(audio._BETA * arg) * (np.abs(t) < half_width)
        return scale * np.sinc(scale * t) * window

    k = np.arange(len(x))
    y = np.zeros(len(ns))
    for i, n in enumerate(ns):
        t_n = int(n) * in_rate / out_rate
        support = np.arange(math.floor(t_n - half_width) - 1, math.ceil(t_n + half_width) + 2)
        y[i] = np.dot(h(t_n - k), x) / np.sum(h(t_n - support))
    return y


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [
        (48000, 16000),  # block matmul path
        (44100, 16000),
        (8000, 16000),
        (44101, 16000),  # 16000/44101: per-output gather with a phase table
        (1_000_003, 16000),  # table too large: weights computed on the fly
        (7, 16000),
    ],
)
def test_matches_the_defining_sum(in_rate: int, out_rate: int) -> None:
    n = 40 if in_rate == 7 else min(1500, in_rate // 30)
    x = np.random.default_rng(in_rate).uniform(-0.9, 0.9, n).astype(np.float32)
    y = resample(x, in_rate, out_rate)
    assert len(y) == -(-n * out_rate // in_rate)
    # Both edges (zero padding) and a spread of phases in between.
    ns = np.unique(np.r_[0:20, len(y) - 20 : len(y), np.linspace(0, len(y) - 1, 200).astype(int)])
    ref = _reference(x.astype(np.float64), in_rate, out_rate, ns)
    assert np.max(np.abs(y[ns] - ref)) < 1e-6


def _stream(r: Resampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    parts, pos = [], 0
    for size in sizes:
        parts.append(r.process(x[pos : pos + size]))
        pos += size
    assert pos >= len(x)
    parts.append(r.flush())
    assert all(p.dtype == np.float32 for p in parts)
    return np.concatenate(parts)


@pytest.mark.parametrize("rate", [*RATES, 44101])
def test_chunked_stream_equals_whole_signal(rate: int) -> None:
    rng = np.random.default_rng(rate)
    x = rng.uniform(-1, 1, rate // 4).astype(np.float32)
    whole = resample(x, rate)
    sizes: list[int] = []
    while sum(sizes) < len(x):
        sizes.append(int(rng.choice([0, 1, 2, 7, 160, 441, 1024, 4801])))
    r = Resampler(rate)
    assert np.max(np.abs(_stream(r, x, sizes) - whole)) <= 1e-6
    # flush() leaves the resampler ready for a new stream.
    assert np.max(np.abs(_stream(r, x, [len(x)]) - whole)) <= 1e-6


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 37800])
def test_one_sample_and_empty_chunks(rate: int) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, 700).astype(np.float32)
    sizes = [s for _ in range(len(x)) for s in (1, 0)]
    assert np.max(np.abs(_stream(Resampler(rate), x, sizes) - resample(x, rate))) <= 1e-6


def test_empty_stream_and_lone_flush() -> None:
    r = Resampler(44100)
    assert r.process(np.zeros(0, dtype=np.float32)).size == 0
    assert r.flush().size == 0
    assert r.flush().size == 0


def test_output_waits_only_for_the_filter_look_ahead() -> None:
    # Streaming latency: after a second of input nearly all of its output is already out.
    r = Resampler(48000)
    assert len(r.process(np.zeros(48000, dtype=np.float32))) > 16000 - 200


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        Resampler(0)
    with pytest.raises(ValueError, match="1-D"):
        Resampler(8000).process(np.zeros((2, 2), dtype=np.float32))
    # Other dtypes are converted, not rejected.
    assert resample(np.zeros(80, dtype=np.float64), 8000).dtype == np.float32
