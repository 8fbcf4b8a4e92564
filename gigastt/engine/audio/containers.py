"""Which decoder reads which file: WAV by our parser, FLAC/OGG/MP3 by soundfile (extra
``formats``), M4A/AAC by PyAV (extra ``m4a``), each decoded in blocks under the size caps."""

from __future__ import annotations

import functools
import importlib
import io
import math
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gigastt.engine.audio.core import (
    F32,
    FORMATS_EXTRA,
    M4A_EXTRA,
    MAX_AUDIO_SECONDS,
    AudioSource,
    AudioTooLongError,
    DecodedAudio,
    EmptyAudioError,
    UnsupportedFormatError,
    check_channels,
    check_duration,
    check_rate,
    frame_limit,
    install_hint,
)
from gigastt.engine.audio.pcm import byte_view, finite_mean
from gigastt.engine.audio.wav import RIFF_MAGICS, open_wav

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


Opener = Callable[[], Any]
"""A fresh file object or path for a decoder: a ``ViewReader`` over the bytes held, or the path."""


class ViewReader(io.RawIOBase):
    """A read-only, seekable file over bytes held elsewhere. ``io.BytesIO`` would copy a
    ``bytearray`` or a view whole at every opening (a request body is one: D30)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        n = max(0, min(len(target), len(self._view) - self._at))
        target[:n] = self._view[self._at : self._at + n]
        self._at += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._at = base + offset
        return self._at

    def tell(self) -> int:
        return self._at


class _SoundfileSource(AudioSource):
    """FLAC, OGG, MP3 (and what else libsndfile reads) through soundfile, block by block."""

    bounded = False

    def __init__(self, sf: ModuleType, opener: Opener, max_seconds: float, label: str) -> None:
        self._sf, self._opener, self._max_seconds, self._label = sf, opener, max_seconds, label
        try:
            with sf.SoundFile(opener()) as f:
                rate = int(f.samplerate)
                channels = int(f.channels)
                frames = int(f.frames)
                container = str(f.format)
        except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
            raise UnsupportedFormatError(f"could not decode {label} audio: {exc}") from None
        if channels <= 0:
            raise UnsupportedFormatError(f"could not decode {label} audio: no channels")
        # libsndfile's name for the container (AIFF, CAF… where we could not sniff it).
        check_rate(rate, container)
        check_channels(channels, container)
        # Refuse early from a header that claims too much, but never size a buffer by it.
        if frames < _UNKNOWN_FRAMES:
            check_duration(frames, rate, max_seconds)
        self.rate, self.channels = rate, channels
        self.frames = frames if frames < _UNKNOWN_FRAMES else None

    def blocks(self) -> Iterator[F32]:
        rate, channels, label = self.rate, self.channels, self._label
        limit = frame_limit(self._max_seconds, rate)
        block = np.empty((max(1, _BLOCK_SAMPLES // channels), channels), dtype=np.float32)
        total = 0
        with self._sf.SoundFile(self._opener()) as f:
            while True:
                # Never past one frame over the limit, whatever the header says.
                wanted = block.shape[0] if limit is None else limit + 1 - total
                try:
                    got = len(f.read(wanted, dtype="float32", always_2d=True, out=block))
                except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
                    raise UnsupportedFormatError(
                        f"could not decode {label} audio: {exc}") from None
                if not got:
                    return
                check_duration(total + got, rate, self._max_seconds)
                yield finite_mean(block[:got], rate, label, total)
                total += got


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


class _AvSource(AudioSource):
    """M4A/AAC (and the formats libsndfile lacks) through PyAV; its frames, a few milliseconds
    each, are handed on in blocks of about ``_BLOCK_SAMPLES``."""

    bounded = False

    def __init__(self, av: ModuleType, opener: Opener, max_seconds: float, label: str) -> None:
        self._av, self._opener, self._max_seconds, self._label = av, opener, max_seconds, label
        errors: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, EOFError)
        ffmpeg_error = getattr(av, "FFmpegError", None)
        if isinstance(ffmpeg_error, type) and issubclass(ffmpeg_error, BaseException):
            errors = (*errors, ffmpeg_error)
        self._errors = errors
        self.frames = None
        self.rate = self.channels = 0
        # The first frame names the rate and channel count, checked before anything else.
        for _ in self._frames(first_only=True):
            pass
        if not self.rate:
            raise UnsupportedFormatError(f"could not decode {label} audio: no audio frames")

    def _frames(self, *, first_only: bool = False) -> Iterator[Any]:
        label = self._label
        try:
            with self._av.open(self._opener(), mode="r") as container:
                if not container.streams.audio:
                    raise UnsupportedFormatError(f"{label} file has no audio stream")
                stream = container.streams.audio[0]
                if stream.duration is not None and stream.time_base is not None:
                    declared = float(stream.duration * stream.time_base)
                    if declared > self._max_seconds:
                        raise AudioTooLongError(f"audio is {declared:.1f} s long; the maximum is "
                                                f"{self._max_seconds:g} s")
                for frame in container.decode(stream):
                    rate, channels = int(frame.sample_rate), len(frame.layout.channels)
                    if first_only:
                        check_rate(rate, label)
                        check_channels(channels, label)
                        self.rate, self.channels = rate, channels
                        if stream.duration is not None and stream.time_base is not None:
                            self.frames = math.ceil(declared * rate)
                        return
                    if rate != self.rate or channels != self.channels:
                        raise UnsupportedFormatError(
                            f"{label} audio changes its sample rate or channel count mid-stream")
                    yield frame
        except self._errors as exc:
            raise UnsupportedFormatError(f"could not decode {label} audio: {exc}") from None

    def blocks(self) -> Iterator[F32]:
        rate, channels, label = self.rate, self.channels, self._label
        parts: list[F32] = []
        held = total = 0
        for frame in self._frames():
            check_duration(total + held + int(frame.samples), rate, self._max_seconds)
            block = _av_frame_to_float(frame, channels)
            parts.append(finite_mean(block, rate, label, total + held))
            held += block.shape[0]
            if held >= _BLOCK_SAMPLES // channels:
                yield np.concatenate(parts)
                parts, total, held = [], total + held, 0
        if parts:
            yield np.concatenate(parts)


def _missing_extra(label: str, extra: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"{label} audio needs an optional decoder: `{install_hint(extra)}`", extra=extra
    )


def open_audio(
    data: bytes | bytearray | memoryview | Path, *, max_seconds: float = MAX_AUDIO_SECONDS
) -> AudioSource:
    """Check any supported file, held in memory or on disk (a path that is not a regular file
    is read whole first); ``blocks()`` then decodes it.

    WAV is read by :func:`open_wav`; FLAC/OGG/MP3 by soundfile (extra ``formats``) or PyAV;
    M4A/AAC by PyAV (extra ``m4a``); a WAV codec the built-in parser lacks (µ-law, ADPCM…)
    falls back to soundfile when installed.

    Raises:
        EmptyAudioError, MalformedWavError, UnsupportedFormatError (naming the extra when one
        would help), UnsupportedSampleRateError, TooManyChannelsError, AudioTooLongError (over
        ``max_seconds``), OSError (a path that cannot be read); ``blocks()`` raises
        NonFiniteSampleError and the other errors only the samples show, ``read()`` also
        AudioTooLongError for a compressed stream over MAX_DECODED_FRAMES.
    """
    opener: Opener
    if isinstance(data, Path) and not stat.S_ISREG(data.stat().st_mode):
        # A pipe or a device (`/dev/stdin`, `<(ffmpeg …)`) cannot be read twice or from an
        # offset: it is read whole, as bytes held.
        data = data.read_bytes()
    if isinstance(data, Path):
        with open(data, "rb") as handle:
            head = handle.read(16)
        path = str(data)
        opener = lambda: path  # noqa: E731 - both decoders open a path themselves
    else:
        buf = byte_view(data)
        head = bytes(buf[:16])
        opener = lambda: ViewReader(buf)  # noqa: E731
    if not head:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    if head[:4] in RIFF_MAGICS:
        try:
            return open_wav(data, max_seconds=max_seconds)
        except UnsupportedFormatError as exc:
            # A WAV codec we lack (µ-law, ADPCM…): libsndfile decodes those, and so does FFmpeg.
            if exc.extra != FORMATS_EXTRA:
                raise
            if (sf := _load_soundfile()) is not None:
                return _SoundfileSource(sf, opener, max_seconds, "WAV")
            if (av := _load_av()) is not None:
                return _AvSource(av, opener, max_seconds, "WAV")
            raise
    kind = _sniff(head)
    sf = _load_soundfile()
    av = _load_av()
    if kind is None:
        if sf is not None:
            # libsndfile also reads AIFF, CAF, W64, big-endian RIFX…; let it try.
            try:
                return _SoundfileSource(sf, opener, max_seconds, "unrecognised")
            except UnsupportedFormatError:
                pass
        raise UnsupportedFormatError(
            "unrecognised audio format: expected WAV; FLAC, OGG and MP3 need "
            f"`{install_hint(FORMATS_EXTRA)}`, M4A/AAC needs `{install_hint(M4A_EXTRA)}`"
        )
    label, sf_format, extra = _KINDS[kind]
    if sf_format is not None and sf_format in _soundfile_formats(sf):
        assert sf is not None
        return _SoundfileSource(sf, opener, max_seconds, label)
    if av is not None:
        return _AvSource(av, opener, max_seconds, label)
    if sf is not None and sf_format is not None:
        raise UnsupportedFormatError(
            f"the installed libsndfile cannot decode {label} (MP3 needs libsndfile ≥ 1.1); "
            f"`{install_hint(M4A_EXTRA)}` adds a decoder that can",
            extra=M4A_EXTRA,
        )
    raise _missing_extra(label, extra)


def decode_audio(
    data: bytes | bytearray | memoryview, *, max_seconds: float = MAX_AUDIO_SECONDS
) -> DecodedAudio:
    """Decode any supported file to float32 mono at its own rate: :func:`open_audio`, then
    every block at once (raises what either raises)."""
    return open_audio(data, max_seconds=max_seconds).read()


def supported_formats() -> list[str]:
    """The formats decodable now, in the order wav, mp3, m4a, ogg, flac."""
    sf_formats = _soundfile_formats(_load_soundfile())
    has_av = _load_av() is not None
    out = ["wav"]
    for name, sf_format in (("mp3", "MP3"), ("m4a", None), ("ogg", "OGG"), ("flac", "FLAC")):
        if has_av or (sf_format is not None and sf_format in sf_formats):
            out.append(name)
    return out
