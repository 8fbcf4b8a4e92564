"""What every audio decoder shares: the error types, the opened source and its decoded result,
and the limits (duration, rate range, decoded size) each decoder checks before it allocates."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MODEL_RATE = 16000
# The decoders' default duration cap: D30's default (4 h); the server passes its own setting.
MAX_AUDIO_SECONDS = 14_400.0
# Every rate real audio uses, 8 kHz telephony to 384 kHz studio masters. Outside it, the
# resampler's filter (taps ∝ input/output rate) would be sized by a number the file claims.
MIN_RATE = 8000
MAX_RATE = 384_000
# Decoders whose output is not bounded by the input size (FLAC, OGG, MP3, AAC: a few bytes of
# digital silence can stand for minutes of audio) stop at this many frames when the whole
# recording is wanted as one array (AudioSource.read): 256 MiB of float32 mono, about 700 s at
# 96 kHz, 175 s at 384 kHz. Decoding block by block holds one block whatever the length, so
# there only the duration cap applies (D33). They also refuse more than 7.1's eight channels.
MAX_DECODED_FRAMES = 1 << 26
MAX_CHANNELS = 8

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

FORMATS_EXTRA = "formats"
M4A_EXTRA = "m4a"


def install_hint(extra: str) -> str:
    return f"pip install 'gigastt-server[{extra}]'"


class AudioError(Exception):
    """The input is not audio we can transcribe; ``str(e)`` is a precise message for humans."""


class MalformedWavError(AudioError):
    """The RIFF/RF64 structure is broken: missing, duplicated, truncated or self-contradicting."""


class UnsupportedFormatError(AudioError):
    """Not WAV, and no installed extra can decode it.

    ``extra`` names the optional dependency group that would decode it (``"formats"`` or
    ``"m4a"``), or is ``None`` when no extra would help.
    """

    def __init__(self, message: str, *, extra: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra


class UnsupportedSampleRateError(AudioError):
    """The sample rate is outside ``MIN_RATE``..``MAX_RATE``."""


class TooManyChannelsError(AudioError):
    """A compressed stream declares more than ``MAX_CHANNELS`` channels."""


class AudioTooLongError(AudioError):
    """The audio is longer than the allowed maximum (detected from the header where possible)."""


class NonFiniteSampleError(AudioError):
    """A float WAV holds NaN or ±Inf samples; they are rejected rather than silenced."""


class EmptyAudioError(AudioError):
    """The input has zero bytes."""


@dataclass(frozen=True, slots=True, eq=False)
class DecodedAudio:
    """Decoded audio before resampling.

    ``eq=False``: the generated ``__eq__`` would compare numpy arrays and raise; identity is
    the only meaningful equality for a buffer this size.
    """

    samples: F32
    """float32 mono (mean of the source channels), nominally in [-1, 1), at ``rate``."""
    rate: int
    channels: int
    """Channel count of the source."""

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.rate


class AudioSource(ABC):
    """An audio file whose format has been checked, decoded on demand block by block.

    Opening reads the header only, so every error a header can show comes before any sample
    is decoded; ``blocks()`` then decodes from the start each time it is called (a file may be
    read twice: once by the VAD, once by the recogniser), holding one block at a time, never
    the recording (D30 in docs/decisions.md). Errors only the samples can show (a NaN, a
    damaged frame, a stream longer than its header said) are raised by ``blocks()`` when it
    reaches them.
    """

    rate: int
    channels: int
    frames: int | None
    """The length the header declares, in frames (exact for WAV; None when unknown)."""
    bounded: bool = True
    """Whether the decoded size is bounded by the input's (WAV), or only by the limits."""

    @abstractmethod
    def blocks(self) -> Iterator[F32]:
        """float32 mono blocks (mean of the channels) at ``rate``, in order."""

    def read(self) -> DecodedAudio:
        """The whole recording as one array; a decoder not bounded by its input stops at
        MAX_DECODED_FRAMES, from the header's claim when it makes one."""
        if not self.bounded and self.frames is not None:
            check_frames(self.frames, self.rate)
        parts: list[F32] = []
        total = 0
        for block in self.blocks():
            total += block.shape[0]
            if not self.bounded:
                check_frames(total, self.rate)
            parts.append(block)
        samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return DecodedAudio(samples=samples, rate=self.rate, channels=self.channels)


def check_rate(rate: int, label: str) -> None:
    """Refuse a rate outside ``MIN_RATE``..``MAX_RATE`` before anything is sized by it (D32)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise UnsupportedSampleRateError(
            f"{label} sample rate {rate} Hz is outside the supported range "
            f"{MIN_RATE}–{MAX_RATE} Hz"
        )


def check_duration(frames: int, rate: int, max_seconds: float) -> None:
    if frames > max_seconds * rate:
        raise AudioTooLongError(
            f"audio is {frames / rate:.1f} s long; the maximum is {max_seconds:g} s"
        )


def frame_limit(max_seconds: float, rate: int) -> int | None:
    """Most frames a decoder may produce at ``rate`` (None: no duration cap)."""
    if math.isinf(max_seconds):
        return None
    return max(0, math.floor(max_seconds * rate))


def check_frames(frames: int, rate: int) -> None:
    """The decoded-size cap of whole-array decodes by decoders not bounded by their input."""
    if frames > MAX_DECODED_FRAMES:
        raise AudioTooLongError(
            f"decoded audio exceeds {MAX_DECODED_FRAMES} frames ({MAX_DECODED_FRAMES / rate:.1f} s"
            f" at {rate} Hz); convert it to a lower sample rate"
        )


def check_channels(channels: int, label: str) -> None:
    if channels > MAX_CHANNELS:
        raise TooManyChannelsError(
            f"{label} audio has {channels} channels; at most {MAX_CHANNELS} are supported"
        )
