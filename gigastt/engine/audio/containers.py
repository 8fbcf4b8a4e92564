"""Which decoder reads which bytes: WAV by our parser, FLAC/OGG/MP3 by soundfile (extra
``formats``), M4A/AAC by PyAV (extra ``m4a``), each read in blocks under the decoded-size caps."""

from __future__ import annotations

import functools
import importlib
import io
from types import ModuleType
from typing import Any

import numpy as np

from gigastt.engine.audio.core import (
    F32,
    FORMATS_EXTRA,
    M4A_EXTRA,
    MAX_AUDIO_SECONDS,
    AudioTooLongError,
    DecodedAudio,
    EmptyAudioError,
    UnsupportedFormatError,
    check_channels,
    check_decoded,
    check_rate,
    frame_limit,
    install_hint,
)
from gigastt.engine.audio.pcm import byte_view, finite_mean
from gigastt.engine.audio.wav import RIFF_MAGICS, read_wav

# Samples (all channels together) per soundfile read: a 1 MiB float32 block whatever the
# channel count, so the read buffer never depends on the file's frame count.
_BLOCK_SAMPLES = 1 << 18
# libsndfile reports an unknown length (e.g. a FLAC header with total samples 0) as a huge
# frame count; below this it is a length the header claims.
_UNKNOWN_FRAMES = 2**62


@functools.cache
def _load_soundfile() -> ModuleType | None:
    """soundfile (extra ``formats``), or None. Tests patch this to simulate its absence."""
    try:
        return importlib.import_module("soundfile")
    except (ImportError, OSError):  # OSError: the wheel-less fallback found no libsndfile
        return None


@functools.cache
def _load_av() -> ModuleType | None:
    """PyAV (extra ``m4a``), or None. Tests patch this to simulate its absence."""
    try:
        return importlib.import_module("av")
    except (ImportError, OSError):
        return None


def _soundfile_formats(sf: ModuleType | None) -> set[str]:
    if sf is None:
        return set()
    return set(sf.available_formats())


# kind → (label for messages, libsndfile major format or None, extra that decodes it)
_KINDS: dict[str, tuple[str, str | None, str]] = {
    "flac": ("FLAC", "FLAC", FORMATS_EXTRA),
    "ogg": ("OGG", "OGG", FORMATS_EXTRA),
    "mp3": ("MP3", "MP3", FORMATS_EXTRA),
    "m4a": ("M4A/MP4", None, M4A_EXTRA),
    "aac": ("AAC (ADTS)", None, M4A_EXTRA),
}


def _sniff(head: bytes) -> str | None:
    """Name the container from its magic bytes (only the kinds the extras decode)."""
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3"):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer = (head[1] >> 1) & 3
        version = (head[1] >> 3) & 3
        if layer == 0 and head[1] & 0xF0 == 0xF0:
            return "aac"  # ADTS: 12-bit sync, layer always 00
        if layer != 0 and version != 1:  # version 01 is reserved in MPEG audio
            return "mp3"
    return None


def _join(parts: list[F32]) -> F32:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _decode_soundfile(
    sf: ModuleType, buf: memoryview, max_seconds: float, label: str
) -> DecodedAudio:
    parts: list[F32] = []
    try:
        with sf.SoundFile(io.BytesIO(buf)) as f:
            rate = int(f.samplerate)
            channels = int(f.channels)
            if channels <= 0:
                raise UnsupportedFormatError(f"could not decode {label} audio: no channels")
            # libsndfile's name for the container (AIFF, CAF… where we could not sniff it).
            check_rate(rate, str(f.format))
            check_channels(channels, str(f.format))
            # Refuse early from a header that claims too much, but never size a buffer by it.
            limit = frame_limit(max_seconds, rate)
            if limit < int(f.frames) < _UNKNOWN_FRAMES:
                check_decoded(int(f.frames), rate, max_seconds)
            block = np.empty((max(1, _BLOCK_SAMPLES // channels), channels), dtype=np.float32)
            total = 0
            while True:
                # Never past one frame over the limit, whatever the header says.
                got = len(f.read(limit + 1 - total, dtype="float32", always_2d=True, out=block))
                if not got:
                    break
                check_decoded(total + got, rate, max_seconds)
                parts.append(finite_mean(block[:got], rate, label, total))
                total += got
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
        raise UnsupportedFormatError(f"could not decode {label} audio: {exc}") from None
    return DecodedAudio(samples=_join(parts), rate=rate, channels=channels)


# PyAV sample formats (packed names) → (scale, offset) to float in [-1, 1)
_AV_SCALES: dict[str, tuple[float, float]] = {
    "u8": (1.0 / 128.0, -1.0),
    "s16": (2.0**-15, 0.0),
    "s32": (2.0**-31, 0.0),
    "s64": (2.0**-63, 0.0),
    "flt": (1.0, 0.0),
    "dbl": (1.0, 0.0),
}


def _av_frame_to_float(frame: Any, channels: int) -> F32:
    """One PyAV AudioFrame → float32 (samples, channels)."""
    name = str(frame.format.name)
    packed = name.rstrip("p")
    if packed not in _AV_SCALES:
        raise UnsupportedFormatError(f"decoder produced an unsupported sample format {name!r}")
    scale, offset = _AV_SCALES[packed]
    arr = np.asarray(frame.to_ndarray())
    out = (arr.T if frame.format.is_planar else arr.reshape(-1, channels)).astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    if offset != 0.0:
        out += np.float32(offset)
    return out


def _decode_av(av: ModuleType, buf: memoryview, max_seconds: float, label: str) -> DecodedAudio:
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, EOFError)
    ffmpeg_error = getattr(av, "FFmpegError", None)
    if isinstance(ffmpeg_error, type) and issubclass(ffmpeg_error, BaseException):
        errors = (*errors, ffmpeg_error)
    parts: list[F32] = []
    rate = channels = 0
    try:
        with av.open(io.BytesIO(buf), mode="r") as container:
            if not container.streams.audio:
                raise UnsupportedFormatError(f"{label} file has no audio stream")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                declared = float(stream.duration * stream.time_base)
                if declared > max_seconds:
                    raise AudioTooLongError(
                        f"audio is {declared:.1f} s long; the maximum is {max_seconds:g} s"
                    )
            total = 0
            for frame in container.decode(stream):
                frame_rate, frame_channels = int(frame.sample_rate), len(frame.layout.channels)
                if not rate:
                    check_rate(frame_rate, label)
                    check_channels(frame_channels, label)
                    rate, channels = frame_rate, frame_channels
                elif frame_rate != rate or frame_channels != channels:
                    raise UnsupportedFormatError(
                        f"{label} audio changes its sample rate or channel count mid-stream"
                    )
                check_decoded(total + int(frame.samples), rate, max_seconds)
                block = _av_frame_to_float(frame, channels)
                parts.append(finite_mean(block, rate, label, total))
                total += block.shape[0]
    except errors as exc:
        raise UnsupportedFormatError(f"could not decode {label} audio: {exc}") from None
    if not rate:
        raise UnsupportedFormatError(f"could not decode {label} audio: no audio frames")
    return DecodedAudio(samples=_join(parts), rate=rate, channels=channels)


def _missing_extra(label: str, extra: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"{label} audio needs an optional decoder: `{install_hint(extra)}`", extra=extra
    )


def decode_audio(
    data: bytes | bytearray | memoryview, *, max_seconds: float = MAX_AUDIO_SECONDS
) -> DecodedAudio:
    """Decode any supported file to float32 mono at its own rate.

    WAV is read by :func:`read_wav`; FLAC/OGG/MP3 by soundfile (extra ``formats``) or PyAV;
    M4A/AAC by PyAV (extra ``m4a``); a WAV codec the built-in parser lacks (µ-law, ADPCM…)
    falls back to soundfile when installed.

    Raises:
        EmptyAudioError, MalformedWavError, UnsupportedFormatError (naming the extra when one
        would help), UnsupportedSampleRateError, TooManyChannelsError, AudioTooLongError (over
        ``max_seconds``, or a compressed stream over MAX_DECODED_FRAMES), NonFiniteSampleError.
    """
    buf = byte_view(data)
    if len(buf) == 0:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    head = bytes(buf[:16])
    if head[:4] in RIFF_MAGICS:
        try:
            return read_wav(buf, max_seconds=max_seconds)
        except UnsupportedFormatError as exc:
            # A WAV codec we lack (µ-law, ADPCM…): libsndfile decodes those, and so does FFmpeg.
            if exc.extra != FORMATS_EXTRA:
                raise
            if (sf := _load_soundfile()) is not None:
                return _decode_soundfile(sf, buf, max_seconds, "WAV")
            if (av := _load_av()) is not None:
                return _decode_av(av, buf, max_seconds, "WAV")
            raise
    kind = _sniff(head)
    sf = _load_soundfile()
    av = _load_av()
    if kind is None:
        if sf is not None:
            # libsndfile also reads AIFF, CAF, W64, big-endian RIFX…; let it try.
            try:
                return _decode_soundfile(sf, buf, max_seconds, "unrecognised")
            except UnsupportedFormatError:
                pass
        raise UnsupportedFormatError(
            "unrecognised audio format: expected WAV; FLAC, OGG and MP3 need "
            f"`{install_hint(FORMATS_EXTRA)}`, M4A/AAC needs `{install_hint(M4A_EXTRA)}`"
        )
    label, sf_format, extra = _KINDS[kind]
    if sf_format is not None and sf_format in _soundfile_formats(sf):
        assert sf is not None
        return _decode_soundfile(sf, buf, max_seconds, label)
    if av is not None:
        return _decode_av(av, buf, max_seconds, label)
    if sf is not None and sf_format is not None:
        raise UnsupportedFormatError(
            f"the installed libsndfile cannot decode {label} (MP3 needs libsndfile ≥ 1.1); "
            f"`{install_hint(M4A_EXTRA)}` adds a decoder that can",
            extra=M4A_EXTRA,
        )
    raise _missing_extra(label, extra)


def supported_formats() -> list[str]:
    """The formats decodable now, in the order wav, mp3, m4a, ogg, flac."""
    sf_formats = _soundfile_formats(_load_soundfile())
    has_av = _load_av() is not None
    out = ["wav"]
    for name, sf_format in (("mp3", "MP3"), ("m4a", None), ("ogg", "OGG"), ("flac", "FLAC")):
        if has_av or (sf_format is not None and sf_format in sf_formats):
            out.append(name)
    return out
