"""Fuzzing the audio input: the WAV reader on random bytes and on mutated valid files (audio or
an AudioError, in memory bounded by the input), pcm16_to_float, and the resampler's chunking.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gigastt.engine.audio import (
    MAX_RATE,
    MIN_RATE,
    MODEL_RATE,
    AudioError,
    DecodedAudio,
    Resampler,
    decode_audio,
    pcm16_to_float,
    read_wav,
    resample,
)

GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
# Every array the reader makes is a view of the input or at most 4 bytes per input byte (PCM8
# to float32), and a conversion holds at most two of them at once; a WAV codec our parser lacks
# goes to libsndfile, which decodes into one 1 MiB block at a time.
BYTES_PER_INPUT_BYTE = 8
FIXED_BOUND = 4 << 20


def bounded_outcome(decode: Callable[[bytes], DecodedAudio], data: bytes) -> None:
    """``decode(data)`` gives audio or an AudioError, and its peak allocation stays bounded."""
    tracemalloc.start()
    try:
        try:
            audio = decode(data)
        except AudioError:
            pass
        else:
            assert isinstance(audio, DecodedAudio)
            assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
            assert MIN_RATE <= audio.rate <= MAX_RATE and audio.channels >= 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= BYTES_PER_INPUT_BYTE * len(data) + FIXED_BOUND, (peak, len(data))


# --- valid WAV files with every field's offset known ----------------------------------------


@dataclass(frozen=True)
class Wav:
    data: bytes
    fields: dict[str, tuple[int, str]]  # name → (offset, struct format)


def build_wav(
    *, tag: int, channels: int, rate: int, bits: int, frames: bytes, rf64: bool, extensible: bool,
    extra_chunk: bytes,
) -> Wav:
    fields: dict[str, tuple[int, str]] = {"riff size": (4, "<I")}
    out = bytearray((b"RF64" if rf64 else b"RIFF") + b"\0\0\0\0" + b"WAVE")
    if rf64:
        fields["ds64 size"] = (len(out) + 4, "<I")
        fields["ds64 riff size"] = (len(out) + 8, "<Q")
        fields["ds64 data size"] = (len(out) + 16, "<Q")
        out += b"ds64" + struct.pack("<IQQQI", 28, 0, len(frames), 0, 0)
    align = channels * (bits // 8)
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * align,
                      align, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + GUID_TAIL
    at = len(out)
    fields |= {"fmt size": (at + 4, "<I"), "tag": (at + 8, "<H"), "channels": (at + 10, "<H"),
               "rate": (at + 12, "<I"), "byte rate": (at + 16, "<I"),
               "block align": (at + 20, "<H"), "bits": (at + 22, "<H")}
    if extensible:
        fields |= {"cb size": (at + 24, "<H"), "valid bits": (at + 26, "<H"),
                   "sub format": (at + 32, "<H")}
    out += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if extra_chunk:
        fields["extra size"] = (len(out) + 4, "<I")
        out += b"LIST" + struct.pack("<I", len(extra_chunk)) + extra_chunk
        out += b"\0" * (len(extra_chunk) & 1)
    fields["data size"] = (len(out) + 4, "<I")
    out += b"data" + struct.pack("<I", 0xFFFFFFFF if rf64 else len(frames)) + frames
    out[4:8] = struct.pack("<I", 0xFFFFFFFF if rf64 else len(out) - 8)
    if rf64:
        out[20:28] = struct.pack("<Q", len(out) - 8)
    return Wav(bytes(out), fields)


@st.composite
def valid_wavs(draw: st.DrawFn) -> Wav:
    tag, bits = draw(st.sampled_from([(1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)]))
    channels = draw(st.integers(1, 3))
    count = draw(st.integers(0, 64))
    if tag == 3:
        values = draw(st.lists(st.floats(-1, 1, width=32), min_size=count * channels,
                               max_size=count * channels))
        frames = np.array(values, dtype="<f4" if bits == 32 else "<f8").tobytes()
    else:
        frames = draw(st.binary(min_size=count * channels * bits // 8,
                                max_size=count * channels * bits // 8))
    return build_wav(
        tag=tag, channels=channels, bits=bits, frames=frames,
        rate=draw(st.sampled_from([8000, 16000, 44100, 48000, 384000])),
        rf64=draw(st.booleans()), extensible=draw(st.booleans()),
        extra_chunk=draw(st.binary(max_size=9)),
    )


def test_valid_wavs_decode() -> None:
    wav = build_wav(tag=1, channels=2, rate=8000, bits=16, frames=bytes(8), rf64=True,
                    extensible=True, extra_chunk=b"abc")
    audio = read_wav(wav.data)
    assert audio.rate == 8000 and audio.channels == 2 and audio.samples.size == 2


EXTREMES = [0, 1, 2, 3, 7, 8, 255, 0x7FFF, 0xFFFF, 7999, 8000, 384000, 384001, 0x7FFFFFFF,
            0xFFFFFFFB, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1]


@st.composite
def mutated_wavs(draw: st.DrawFn) -> bytes:
    wav = draw(valid_wavs())
    data = bytearray(wav.data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "flip", "insert", "delete", "truncate"]))
        if kind == "field":
            name = draw(st.sampled_from(sorted(wav.fields)))
            offset, fmt = wav.fields[name]
            limit = 2 ** (8 * struct.calcsize(fmt)) - 1
            value = draw(st.sampled_from([v for v in EXTREMES if v <= limit])
                         | st.integers(0, limit))
            if offset + struct.calcsize(fmt) <= len(data):
                struct.pack_into(fmt, data, offset, value)
        elif kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            at = draw(st.integers(0, len(data) - 1))
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    bounded_outcome(read_wav, data)
    bounded_outcome(decode_audio, data)


@given(st.sampled_from([b"RIFF", b"RF64", b"BW64"]), st.binary(max_size=8),
       st.binary(max_size=512))
def test_random_chunks_after_a_riff_header(magic: bytes, size: bytes, rest: bytes) -> None:
    bounded_outcome(decode_audio, magic + size.ljust(4, b"\xff")[:4] + b"WAVE" + rest)


@given(mutated_wavs())
def test_mutated_wavs(data: bytes) -> None:
    bounded_outcome(read_wav, data)
    bounded_outcome(decode_audio, data)


# --- PCM16 frames -------------------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_pcm16_to_float(data: bytes) -> None:
    if len(data) % 2:
        try:
            pcm16_to_float(data)
        except ValueError as exc:
            assert "even number of bytes" in str(exc)
        else:
            raise AssertionError("odd byte count accepted")
        return
    out = pcm16_to_float(data)
    assert out.dtype == np.float32
    assert np.array_equal(out, np.frombuffer(data, "<i2").astype(np.float64) / 32768)


# --- resampler chunking -------------------------------------------------------------------------

# Divisors of 16000 from 160 up: rates d·m share a factor d with 16 kHz, so the filter plans stay
# small (at most 2400 phases or inputs per period) and quick to build for every example.
_DIVISORS = [160, 200, 250, 320, 400, 500, 640, 800, 1000, 1600, 2000, 3200, 4000, 8000, 16000]


@st.composite
def in_rates(draw: st.DrawFn) -> int:
    if draw(st.booleans()):
        # Real rates, and coprime ones whose plans round phases (383999) or gather (8001).
        return draw(st.sampled_from([8000, 11025, 22050, 44100, 48000, 96000, 192000, 384000,
                                     8001, 383999]))
    d = draw(st.sampled_from(_DIVISORS))
    return d * draw(st.integers(-(-MIN_RATE // d), MAX_RATE // d))


@given(in_rates(), st.integers(0, 3000), st.lists(st.integers(0, 1500), max_size=12),
       st.integers(0, 2**32 - 1))
def test_resampler_chunks_equal_the_whole(rate: int, n: int, sizes: list[int], seed: int) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    whole = resample(x, rate)
    assert whole.size == -(-n * MODEL_RATE // rate)
    r = Resampler(rate)
    parts, pos = [], 0
    for size in sizes:
        parts.append(r.process(x[pos : pos + size]))
        pos += size
    parts.append(r.process(x[pos:]))
    parts.append(r.flush())
    got = np.concatenate(parts)
    assert got.size == whole.size
    assert got.size == 0 or float(np.max(np.abs(got - whole))) <= 1e-6
