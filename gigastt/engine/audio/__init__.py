"""Audio input, the public face: any supported file to 16 kHz mono float32, whole or block by
block (limits in core, samples in pcm, WAV in wav, other formats in containers, resampler)."""

from __future__ import annotations

from collections.abc import Iterator

from gigastt.engine.audio.containers import decode_audio, open_audio, supported_formats
from gigastt.engine.audio.core import (
    F32,
    MAX_AUDIO_SECONDS,
    MAX_CHANNELS,
    MAX_DECODED_FRAMES,
    MAX_RATE,
    MIN_RATE,
    MODEL_RATE,
    AudioError,
    AudioSource,
    AudioTooLongError,
    DecodedAudio,
    EmptyAudioError,
    MalformedWavError,
    NonFiniteSampleError,
    TooManyChannelsError,
    UnsupportedFormatError,
    UnsupportedSampleRateError,
)
from gigastt.engine.audio.pcm import pcm16_to_float
from gigastt.engine.audio.resampler import Resampler, resample
from gigastt.engine.audio.wav import open_wav, read_wav

__all__ = [
    "MAX_AUDIO_SECONDS",
    "MAX_CHANNELS",
    "MAX_DECODED_FRAMES",
    "MAX_RATE",
    "MIN_RATE",
    "MODEL_RATE",
    "AudioError",
    "AudioSource",
    "AudioTooLongError",
    "DecodedAudio",
    "EmptyAudioError",
    "MalformedWavError",
    "NonFiniteSampleError",
    "Resampler",
    "TooManyChannelsError",
    "UnsupportedFormatError",
    "UnsupportedSampleRateError",
    "decode_audio",
    "expected_samples",
    "load_audio",
    "model_blocks",
    "open_audio",
    "open_wav",
    "pcm16_to_float",
    "read_wav",
    "resample",
    "supported_formats",
    "to_model_rate",
]


def to_model_rate(audio: DecodedAudio) -> F32:
    """float32 mono at 16 kHz; the samples themselves (not a copy) when already at 16 kHz."""
    if audio.rate == MODEL_RATE:
        return audio.samples
    return resample(audio.samples, audio.rate, MODEL_RATE)


def load_audio(
    data: bytes | bytearray | memoryview, *, max_seconds: float = MAX_AUDIO_SECONDS
) -> F32:
    """:func:`decode_audio` then :func:`to_model_rate`."""
    return to_model_rate(decode_audio(data, max_seconds=max_seconds))


def model_blocks(source: AudioSource) -> Iterator[F32]:
    """The source's samples at 16 kHz, block by block, as they are decoded: one block of memory
    whatever the length (D30). The streaming resampler makes them equal to resampling the
    whole recording at once (:func:`load_audio`), to float32 rounding."""
    if source.rate == MODEL_RATE:
        yield from source.blocks()
        return
    resampler = Resampler(source.rate, MODEL_RATE)
    for block in source.blocks():
        out = resampler.process(block)
        if out.size:
            yield out
    tail = resampler.flush()
    if tail.size:
        yield tail


def expected_samples(source: AudioSource) -> int | None:
    """The 16 kHz length the header declares (progress is measured against it), if it does."""
    if source.frames is None:
        return None
    return -(-source.frames * MODEL_RATE // source.rate)
