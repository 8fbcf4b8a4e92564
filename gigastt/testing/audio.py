"""Deterministic synthetic test audio: speech-like signals, silence, tone-model sequences.
Also owns WAV serialisation in every sample format the engine accepts (PCM 8/16/24/32, float).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["silence", "speech_like", "tone_sequence", "wav_bytes"]

F32 = npt.NDArray[np.float32]

# (F1, F2, F3) in Hz for a few Russian-ish vowels.
_VOWELS: tuple[tuple[float, float, float], ...] = (
    (730.0, 1090.0, 2440.0),  # а
    (530.0, 1840.0, 2480.0),  # э
    (270.0, 2290.0, 3010.0),  # и
    (570.0, 840.0, 2410.0),  # о
    (300.0, 870.0, 2240.0),  # у
    (440.0, 1600.0, 2500.0),  # ы
)
_BANDWIDTHS = (90.0, 110.0, 170.0)
_FORMANT_GAINS = (1.0, 0.6, 0.3)


def _n_samples(seconds: float, rate: int) -> int:
    if seconds < 0:
        raise ValueError(f"negative duration: {seconds}")
    if rate <= 0:
        raise ValueError(f"invalid sample rate: {rate}")
    return round(seconds * rate)


def silence(seconds: float, rate: int = 16000) -> F32:
    """Digital silence (exact zeros), float32 mono."""
    return np.zeros(_n_samples(seconds, rate), dtype=np.float32)


def _ramp(n: int, ramp: int) -> npt.NDArray[np.float64]:
    """A window of length n with raised-cosine attack and release of `ramp` samples."""
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        env[:ramp] = r
        env[n - ramp :] = r[::-1]
    return env


def _voiced(n: int, rate: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A vowel: harmonics of a gliding f0 weighted by a gliding formant envelope."""
    t = np.arange(n) / rate
    dur = max(n / rate, 1e-3)
    f0_start = rng.uniform(95.0, 240.0)
    f0_end = f0_start * rng.uniform(0.75, 1.3)
    vibrato = 1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * t)
    f0 = (f0_start + (f0_end - f0_start) * t / dur) * vibrato
    phase = 2 * np.pi * np.cumsum(f0) / rate
    v1, v2 = (_VOWELS[i] for i in rng.integers(0, len(_VOWELS), size=2))
    alpha = t / dur
    n_harm = int(min(4000.0, 0.45 * rate) // min(f0_start, f0_end))
    k = np.arange(1, n_harm + 1)[:, None]
    freqs = k * f0[None, :]
    env = np.zeros_like(freqs)
    for j in range(3):
        fj = v1[j] + (v2[j] - v1[j]) * alpha
        env += _FORMANT_GAINS[j] / (1.0 + ((freqs - fj[None, :]) / _BANDWIDTHS[j]) ** 2)
    env *= 1.0 / np.sqrt(k)  # glottal source tilt
    env[freqs >= 0.45 * rate] = 0.0
    jitter = rng.uniform(0, 2 * np.pi, size=(n_harm, 1))
    sig = np.sum(env * np.sin(k * phase[None, :] + jitter), axis=0)
    return np.asarray(sig / (np.max(np.abs(sig)) + 1e-12))


def _noise_burst(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A fricative/plosive-like burst: coloured noise (high-passed or band-limited)."""
    noise = rng.standard_normal(n + 8)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # 's'/'sh': first difference emphasises high frequencies
        sig = np.diff(noise, n=2)[: n]
    elif kind == 1:  # 'f'/'h': softer, flatter
        sig = noise[:n] - 0.5 * noise[1 : n + 1]
    else:  # plosive: short band-limited burst
        kernel = np.hanning(7)
        sig = np.convolve(noise, kernel, mode="same")[:n]
    return np.asarray(sig / (np.max(np.abs(sig)) + 1e-12))


def speech_like(seconds: float, *, seed: int = 0, rate: int = 16000) -> F32:
    """Deterministic speech-like float32 mono audio, peak amplitude 0.3.

    Syllables = optional noise burst (consonant) + voiced vowel with gliding pitch and formants;
    gaps of 20-120 ms between syllables and occasional 150-350 ms pauses between "words".
    """
    n_total = _n_samples(seconds, rate)
    out = np.zeros(n_total)
    rng = np.random.default_rng(seed)
    pos = int(rng.integers(0, int(0.08 * rate) + 1))
    syll_in_word = 0
    while pos < n_total:
        gain = rng.uniform(0.45, 1.0)
        if rng.random() < 0.7:
            nb = int(rng.uniform(0.03, 0.09) * rate)
            burst = _noise_burst(nb, rng) * _ramp(nb, int(0.004 * rate)) * rng.uniform(0.15, 0.4)
            end = min(n_total, pos + nb)
            out[pos:end] += gain * burst[: end - pos]
            pos += nb
        nv = int(rng.uniform(0.09, 0.24) * rate)
        if pos < n_total:
            vowel = _voiced(nv, rate, rng) * _ramp(nv, int(0.015 * rate))
            end = min(n_total, pos + nv)
            out[pos:end] += gain * vowel[: end - pos]
        pos += nv
        syll_in_word += 1
        if syll_in_word >= int(rng.integers(1, 4)):
            pos += int(rng.uniform(0.15, 0.35) * rate)
            syll_in_word = 0
        else:
            pos += int(rng.uniform(0.02, 0.12) * rate)
    # faint background noise so that pauses are not digital silence
    out += 1e-3 * rng.standard_normal(n_total)
    peak = float(np.max(np.abs(out))) if n_total else 0.0
    if peak > 0:
        out *= 0.3 / peak
    return out.astype(np.float32)


def tone_sequence(
    tokens: Sequence[str],
    *,
    tone_s: float = 0.2,
    gap_s: float = 0.0,
    lead_s: float = 0.3,
    tail_s: float = 0.3,
    amplitude: float = 0.3,
    rate: int = 16000,
    allow_repeats: bool = False,
    gains: Sequence[float] | None = None,
) -> F32:
    """Audio that the tone model (`models.write_tone_model`) decodes to exactly `tokens`.

    `gains` scales each token's tone (1.0 each by default): a tone scaled down far enough is
    missed by the model (hotword tests: a phrase missed by a small margin).

    Each token is a sine at the centre of its mel band (`models.tone_frequency`), `tone_s` long with
    5 ms raised-cosine ramps, separated by `gap_s` of silence, with `lead_s`/`tail_s` of silence
    around. The tone model mutes a token until two other tokens were emitted, so a token repeated
    within two positions would be swallowed: that raises ValueError unless `allow_repeats`.
    """
    from gigastt.testing.models import tone_frequency  # local: models imports onnx lazily too

    if not allow_repeats:
        for i, tok in enumerate(tokens):
            if tok in tokens[max(0, i - 2) : i]:
                raise ValueError(
                    f"token {tok!r} repeats within two positions (index {i}); "
                    "the tone model would swallow it"
                )
    freqs = [tone_frequency(tok) for tok in tokens]
    n_tone = _n_samples(tone_s, rate)
    n_gap = _n_samples(gap_s, rate)
    env = _ramp(n_tone, int(0.005 * rate))
    t = np.arange(n_tone) / rate
    parts: list[npt.NDArray[np.float64]] = [np.zeros(_n_samples(lead_s, rate))]
    for i, f in enumerate(freqs):
        if i and n_gap:
            parts.append(np.zeros(n_gap))
        gain = 1.0 if gains is None else gains[i]
        parts.append(gain * amplitude * env * np.sin(2 * np.pi * f * t))
    parts.append(np.zeros(_n_samples(tail_s, rate)))
    return np.concatenate(parts).astype(np.float32)


_FORMATS: dict[str, tuple[int, int]] = {  # name -> (bytes per sample, WAVE format tag)
    "pcm8": (1, 1),
    "pcm16": (2, 1),
    "pcm24": (3, 1),
    "pcm32": (4, 1),
    "float32": (4, 3),
    "float64": (8, 3),
}


def _encode_samples(x: npt.NDArray[np.float64], sample_format: str) -> bytes:
    if sample_format == "pcm8":
        return np.clip(np.round(x * 128.0) + 128.0, 0, 255).astype(np.uint8).tobytes()
    if sample_format == "pcm16":
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    if sample_format == "pcm24":
        v = np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype("<i4")
        return v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    if sample_format == "pcm32":
        return np.clip(np.round(x * 2147483648.0), -2147483648, 2147483647).astype("<i4").tobytes()
    if sample_format == "float32":
        return x.astype("<f4").tobytes()
    return x.astype("<f8").tobytes()


def wav_bytes(
    samples: npt.ArrayLike,
    rate: int = 16000,
    *,
    channels: int = 1,
    sample_format: str = "pcm16",
) -> bytes:
    """A complete RIFF/WAVE file.

    `samples` are floats in [-1, 1): shape (n,) for mono (or (n, 1)), (n, channels) otherwise.
    Formats: pcm8 (unsigned), pcm16, pcm24, pcm32 (format tag 1, readable by Python's `wave`),
    float32, float64 (IEEE float, format tag 3, with a `fact` chunk). Integer formats are scaled
    by their full scale (2^(bits-1)) and clipped.
    """
    if sample_format not in _FORMATS:
        raise ValueError(f"unknown sample_format {sample_format!r}; one of {sorted(_FORMATS)}")
    if channels < 1:
        raise ValueError(f"invalid channel count: {channels}")
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim == 1 and channels == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != channels:
        raise ValueError(f"samples of shape {arr.shape} do not match channels={channels}")
    width, tag = _FORMATS[sample_format]
    data = _encode_samples(arr.reshape(-1), sample_format)
    n_frames = arr.shape[0]
    block_align = width * channels
    fmt = struct.pack(
        "<HHIIHH", tag, channels, rate, rate * block_align, block_align, width * 8
    )
    chunks = [b"fmt " + struct.pack("<I", len(fmt)) + fmt]
    if tag == 3:
        fmt_ext = fmt + struct.pack("<H", 0)  # cbSize
        chunks = [
            b"fmt " + struct.pack("<I", len(fmt_ext)) + fmt_ext,
            b"fact" + struct.pack("<II", 4, n_frames),
        ]
    pad = b"\x00" if len(data) % 2 else b""
    chunks.append(b"data" + struct.pack("<I", len(data)) + data + pad)
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiny_wav(rate: int) -> bytes:
    """A 64-byte PCM16 mono WAV (10 samples) whose header declares any ``rate`` (up to 2^32 - 1):
    the smallest input that claims an absurd sample rate (D32)."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    data = np.arange(10, dtype="<i2").tobytes()
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 20) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body
