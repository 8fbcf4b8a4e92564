"""Audio input, the public face: any supported file's bytes to 16 kHz mono float32 (limits in
core, samples in pcm, WAV in wav, other formats in containers, rate conversion in resampler)."""

from __future__ import annotations

from gigastt.engine.audio.containers import decode_audio, supported_formats
from gigastt.engine.audio.core import (
    F32,
    MAX_AUDIO_SECONDS,
    MAX_CHANNELS,
    MAX_DECODED_FRAMES,
    MAX_RATE,
    MIN_RATE,
    MODEL_RATE,
    AudioError,
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
from gigastt.engine.audio.wav import read_wav

__all__ = [
    "MAX_AUDIO_SECONDS",
    "MAX_CHANNELS",
    "MAX_DECODED_FRAMES",
    "MAX_RATE",
    "MIN_RATE",
    "MODEL_RATE",
    "AudioError",
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
    "load_audio",
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
