"""The polyphase resampler (decision D19): output length, passband flatness, alias and image
rejection, DC gain, exactness against the defining sum, stream chunking without seams, and the
bounded plans of awkward ratios.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from gigastt.engine.audio import MAX_RATE, MIN_RATE, MODEL_RATE, Resampler, resample
from gigastt.engine.audio import resampler as plans

# 383999 is coprime with 16000: its plan rounds each output to the nearest of 2561 phases.
RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 37800, 383999]
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


def _reference(
    x: np.ndarray, in_rate: int, out_rate: int, ns: np.ndarray, phases: int | None = None
) -> np.ndarray:
    """Outputs ``ns`` of y[n] = Σ_k x[k]·h(t_n − k) / Σ_k h(t_n − k), t_n = n·in/out, in float64.

    The denominator (sum over all integers k) is the per-phase unit-DC-gain normalisation. With
    ``phases``, t_n's fraction is rounded to the nearest multiple of 1/phases.
    """
    scale = plans._ROLLOFF * min(1.0, out_rate / in_rate)
    half_width = plans._ZEROS / scale

    def h(t: np.ndarray) -> np.ndarray:
        arg = np.sqrt(np.clip(1 - (t / half_width) ** 2, 0, None))
        window = np.i0(plans._BETA * arg) * (np.abs(t) < half_width)
        return scale * np.sinc(scale * t) * window

    k = np.arange(len(x))
    y = np.zeros(len(ns))
    for i, n in enumerate(ns):
        t_n = int(n) * in_rate / out_rate
        if phases is not None:
            whole, rest = divmod(int(n) * in_rate, out_rate)
            t_n = whole + (2 * rest * phases + out_rate) // (2 * out_rate) / phases
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
        (383999, 16000),  # 16000 phases × 1637 taps is too large: 2561 rounded phases
        (8000, 384000),
        (8001, 384000),  # 384000/8001 phases × 71 taps: rounded phases while upsampling
    ],
)
def test_matches_the_defining_sum(in_rate: int, out_rate: int) -> None:
    n = min(1500, in_rate // 30)
    x = np.random.default_rng(in_rate).uniform(-0.9, 0.9, n).astype(np.float32)
    y = resample(x, in_rate, out_rate)
    assert len(y) == -(-n * out_rate // in_rate)
    # Both edges (zero padding) and a spread of phases in between.
    ns = np.unique(np.r_[0:20, len(y) - 20 : len(y), np.linspace(0, len(y) - 1, 200).astype(int)])
    g = math.gcd(in_rate, out_rate)
    plan = plans._plan(out_rate // g, in_rate // g)
    rounded = None if plan.phases == plan.up else plan.phases
    ref = _reference(x.astype(np.float64), in_rate, out_rate, ns, rounded)
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


@pytest.mark.parametrize(("in_rate", "out_rate"), [(0, 16000), (7999, 16000), (384001, 16000),
                                                   (2**32 - 5, 16000), (16000, 7999)])
def test_rates_outside_the_range_are_refused(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError, match=r"sample rates must be in 8000\.\.384000 Hz"):
        Resampler(in_rate, out_rate)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="1-D"):
        Resampler(8000).process(np.zeros((2, 2), dtype=np.float32))
    # Other dtypes are converted, not rejected.
    assert resample(np.zeros(80, dtype=np.float64), 8000).dtype == np.float32


@pytest.mark.parametrize("rate", [MIN_RATE, 8001, 15999, 44101, 192001, 352801, 383999, MAX_RATE])
def test_plans_are_bounded_for_every_ratio(rate: int) -> None:
    # The table is capped at _MAX_TABLE entries (rounded phases beyond) and the block matrix at
    # _MAX_BLOCK_MATRIX, whatever the ratio; taps grow with the ratio, which the range bounds.
    for in_rate, out_rate in ((rate, MODEL_RATE), (rate, MIN_RATE), (MIN_RATE, rate)):
        if in_rate == out_rate:
            continue
        g = math.gcd(in_rate, out_rate)
        plan = plans._plan(out_rate // g, in_rate // g)
        assert plan.taps <= 3271
        assert plan.table.size <= plans._MAX_TABLE
        assert plan.nbytes <= 8 * (plans._MAX_TABLE + plans._MAX_BLOCK_MATRIX)


def test_every_rate_in_the_range_has_a_bounded_plan() -> None:
    # The plan's shape from L and M alone, for all 376 001 rates into 16 kHz: the largest
    # table+block is 32 MiB, and rounded phases step at most 1/5120 of an input sample.
    rates = np.arange(MIN_RATE, MAX_RATE + 1, dtype=np.int64)
    g = np.gcd(rates, MODEL_RATE)
    up, down = MODEL_RATE // g, rates // g
    half = np.ceil(plans._ZEROS / (plans._ROLLOFF * np.minimum(1.0, up / down))).astype(np.int64)
    taps = 2 * half + 1
    exact = up * taps <= plans._MAX_TABLE
    phases = np.where(exact, up, plans._MAX_TABLE // taps - 1)
    rows = np.where(exact, up, phases + 1)
    assert int(np.max(rows * taps)) <= plans._MAX_TABLE
    assert int(np.min(phases[~exact])) >= 2560
    group = np.maximum(1, -(-2 * half // down))
    width = group * up
    span = (width - 1) * down // up + taps
    block = np.where(exact & (span * width <= plans._MAX_BLOCK_MATRIX), span * width, 0)
    assert int(np.max(rows * taps + block)) * 8 <= 32 << 20


def test_plan_cache_is_bounded_in_bytes() -> None:
    # Each of these coprime rates needs a 16000-phase table of 3 M entries (23 MiB); a cache
    # counted in entries would keep them all alive.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for rate in (44101, 44103, 44107, 44111, 44113):
            assert resample(np.zeros(100, dtype=np.float32), rate).size == 37
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept <= plans.PLAN_CACHE_BYTES
    assert plans.plan_cache_bytes() <= plans.PLAN_CACHE_BYTES
