"""Audio input: the WAV/RF64 parser, optional soundfile/PyAV decoders, the duration cap, and the
stateful Kaiser-windowed-sinc polyphase resampler that brings any rate to 16 kHz mono float32."""

from __future__ import annotations

import functools
import importlib
import io
import math
import operator
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

MODEL_RATE = 16000
MAX_AUDIO_SECONDS = 600.0

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_FORMATS_EXTRA = "formats"
_M4A_EXTRA = "m4a"


def _install_hint(extra: str) -> str:
    return f"pip install 'gigastt-server[{extra}]'"


# --------------------------------------------------------------------------------------------
# Errors and result type
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# WAV (RIFF / RF64 / BW64)
# --------------------------------------------------------------------------------------------
#
# Rules (decision D17), chosen so every input has exactly one defined outcome:
# - The RIFF size field is advisory: chunks are walked to the real end of the bytes. It only
#   marks where trailing bytes (e.g. an appended tag) stop being part of the WAV: once fmt and
#   data are both known, the walk stops at the end of the RIFF extent.
# - A data chunk whose declared size exceeds the bytes present is an error (truncated file); it
#   is never silently shortened. The same holds for fmt and, before the audio is complete, for
#   any other chunk. A chunk that overruns the file *after* fmt and data have been read is
#   trailing junk and is ignored.
# - Streaming writers (ffmpeg to a pipe) cannot patch sizes and leave the data size as
#   0xFFFFFFFF. In a RIFF (not RF64) file, a data size of exactly 0xFFFFFFFF means "the data
#   runs to the end of the file"; that length must still be a whole number of frames.
# - RF64/BW64: the first chunk must be ds64; a data size of 0xFFFFFFFF is replaced by ds64's
#   64-bit data size, which is then checked against the bytes present like any other size.
# - A data chunk of zero frames is valid and decodes to zero samples.
# - byte_rate is ignored (writers often get it wrong and nothing depends on it); block_align
#   must equal channels × bytes per sample.
# - Chunks may come in any order; odd-sized chunks are followed by one pad byte (a missing pad
#   byte at the very end of the file is tolerated).

_RIFF_MAGICS = (b"RIFF", b"RF64", b"BW64")
_SIZE_PLACEHOLDER = 0xFFFFFFFF
_TAG_PCM = 0x0001
_TAG_FLOAT = 0x0003
_TAG_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs share this tail after the little-endian 16-bit format tag.
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
# WAV codecs that libsndfile (the `formats` extra) decodes but our parser does not.
_SNDFILE_WAV_CODECS = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
}
_OTHER_WAV_CODECS = {0x0055: "MPEG Layer 3", 0x0050: "MPEG", 0x0161: "Windows Media Audio"}


@dataclass(frozen=True, slots=True)
class _WavFormat:
    tag: int  # resolved: _TAG_PCM or _TAG_FLOAT, also for WAVE_FORMAT_EXTENSIBLE
    channels: int
    rate: int
    bits: int
    block_align: int


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
        view = view.cast("B")  # requires C-contiguity, which numpy's frombuffer needs anyway
    return view


def _parse_fmt(buf: memoryview, body: int, size: int) -> _WavFormat:
    if size < 16:
        raise MalformedWavError(f"'fmt ' chunk is {size} bytes; at least 16 are required")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", buf, body)
    if tag == _TAG_EXTENSIBLE:
        if size < 40:
            raise MalformedWavError(
                f"WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is {size} bytes; 40 are required"
            )
        cb_size, valid_bits = struct.unpack_from("<HH", buf, body + 16)
        if cb_size < 22:
            raise MalformedWavError(
                f"WAVE_FORMAT_EXTENSIBLE extension size is {cb_size}; at least 22 is required"
            )
        guid = bytes(buf[body + 24 : body + 40])
        if guid[2:] != _GUID_TAIL:
            raise UnsupportedFormatError(
                f"WAVE_FORMAT_EXTENSIBLE sub-format {guid.hex()} is not PCM or IEEE float"
            )
        if valid_bits > bits:
            raise MalformedWavError(
                f"WAVE_FORMAT_EXTENSIBLE declares {valid_bits} valid bits in a {bits}-bit container"
            )
        # Valid bits below the container size are left-justified, so decoding by container
        # size is exact.
        tag = int.from_bytes(guid[:2], "little")
    if channels == 0:
        raise MalformedWavError("'fmt ' chunk declares 0 channels")
    if rate == 0:
        raise MalformedWavError("'fmt ' chunk declares a sample rate of 0 Hz")
    if tag == _TAG_PCM:
        if bits not in (8, 16, 24, 32):
            raise MalformedWavError(
                f"PCM WAV with {bits} bits per sample is not supported (expected 8, 16, 24 or 32)"
            )
    elif tag == _TAG_FLOAT:
        if bits not in (32, 64):
            raise MalformedWavError(
                f"IEEE float WAV with {bits} bits per sample is not supported (expected 32 or 64)"
            )
    elif tag in _SNDFILE_WAV_CODECS:
        raise UnsupportedFormatError(
            f"WAV with {_SNDFILE_WAV_CODECS[tag]} encoding (format tag 0x{tag:04X}) is not "
            f"supported by the built-in decoder; `{_install_hint(_FORMATS_EXTRA)}` decodes it",
            extra=_FORMATS_EXTRA,
        )
    else:
        name = _OTHER_WAV_CODECS.get(tag, "an unknown")
        raise UnsupportedFormatError(
            f"WAV with {name} encoding (format tag 0x{tag:04X}) is not supported; "
            "convert it to PCM or IEEE float WAV"
        )
    expected_align = channels * (bits // 8)
    if block_align != expected_align:
        raise MalformedWavError(
            f"'fmt ' block align is {block_align} bytes, but {channels} channel(s) of {bits}-bit "
            f"samples need {expected_align}"
        )
    return _WavFormat(tag, channels, rate, bits, block_align)


def _walk_chunks(buf: memoryview) -> tuple[_WavFormat, int, int]:
    """Return the format and the (offset, size) of the audio bytes; apply the rules above."""
    total = len(buf)
    magic = bytes(buf[:4])
    if total < 12:
        raise MalformedWavError(f"file is {total} bytes; a WAV header needs at least 12")
    form = bytes(buf[8:12])
    if form != b"WAVE":
        raise UnsupportedFormatError(f"RIFF file of form {form!r} is not WAVE audio")
    is64 = magic != b"RIFF"
    riff_size = struct.unpack_from("<I", buf, 4)[0]
    riff_end = total if riff_size == _SIZE_PLACEHOLDER else 8 + riff_size
    ds64_data: int | None = None
    fmt_at: tuple[int, int] | None = None
    data_at: tuple[int, int] | None = None
    offset = 12
    while total - offset >= 8:
        if offset >= riff_end and fmt_at is not None and data_at is not None:
            break
        cid = bytes(buf[offset : offset + 4])
        size = struct.unpack_from("<I", buf, offset + 4)[0]
        body = offset + 8
        remaining = total - body
        if is64 and offset == 12:
            if cid != b"ds64":
                raise MalformedWavError(
                    f"{magic.decode()} file: the first chunk must be 'ds64', found {cid!r}"
                )
            if size < 28:
                raise MalformedWavError(f"'ds64' chunk is {size} bytes; at least 28 are required")
            if size > remaining:
                raise MalformedWavError(
                    f"'ds64' chunk declares {size} bytes but only {remaining} remain in the file"
                )
            riff64, ds64_data = struct.unpack_from("<QQ", buf, body)
            riff_end = 8 + riff64
        elif cid == b"fmt ":
            if fmt_at is not None:
                raise MalformedWavError(
                    f"duplicate 'fmt ' chunk at byte {offset} (the first is at {fmt_at[0] - 8})"
                )
            if size > remaining:
                raise MalformedWavError(
                    f"'fmt ' chunk declares {size} bytes but only {remaining} remain in the file"
                )
            fmt_at = (body, size)
        elif cid == b"data":
            if data_at is not None:
                raise MalformedWavError(
                    f"duplicate 'data' chunk at byte {offset} (the first is at {data_at[0] - 8})"
                )
            if size == _SIZE_PLACEHOLDER:
                size = remaining if ds64_data is None else ds64_data
            if size > remaining:
                raise MalformedWavError(
                    f"'data' chunk declares {size} bytes but only {remaining} remain in the file: "
                    "the file is truncated"
                )
            data_at = (body, size)
        elif size > remaining:
            if fmt_at is not None and data_at is not None:
                break  # trailing junk after a complete WAV
            raise MalformedWavError(
                f"chunk {cid!r} at byte {offset} declares {size} bytes but only {remaining} "
                "remain in the file"
            )
        offset = body + size + (size & 1)
    if is64 and ds64_data is None:
        raise MalformedWavError(f"{magic.decode()} file has no 'ds64' chunk")
    if fmt_at is None:
        raise MalformedWavError("WAV file has no 'fmt ' chunk")
    if data_at is None:
        raise MalformedWavError("WAV file has no 'data' chunk")
    fmt = _parse_fmt(buf, *fmt_at)
    return fmt, data_at[0], data_at[1]


def _convert(buf: memoryview, offset: int, size: int, fmt: _WavFormat) -> F32:
    """Interleaved little-endian samples at ``buf[offset:offset+size]`` → float32 mono."""
    channels = fmt.channels
    count = size // (fmt.bits // 8)
    if fmt.tag == _TAG_FLOAT:
        src = np.frombuffer(
            buf, dtype="<f4" if fmt.bits == 32 else "<f8", count=count, offset=offset
        )
        # A float64 beyond float32 range becomes ±Inf here and is rejected with the rest.
        with np.errstate(over="ignore"):
            interleaved = src.astype(np.float32)
        finite = np.isfinite(interleaved)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            first = int(np.argmin(finite)) // channels
            raise NonFiniteSampleError(
                f"float WAV has {bad} non-finite sample(s) (NaN or ±Inf); the first is at frame "
                f"{first} ({first / fmt.rate:.3f} s)"
            )
        return _mix_down(interleaved, channels, 1.0, 0.0)
    if fmt.bits == 8:
        src8 = np.frombuffer(buf, dtype=np.uint8, count=count, offset=offset)
        return _mix_down(src8, channels, 1.0 / 128.0, -1.0)
    if fmt.bits == 16:
        src16 = np.frombuffer(buf, dtype="<i2", count=count, offset=offset)
        return _mix_down(src16, channels, 2.0**-15, 0.0)
    if fmt.bits == 24:
        # Read each 3-byte sample as the top three bytes of an int32 that starts one byte
        # earlier (a 3-byte-strided view; the data chunk header guarantees that byte exists),
        # then clear the borrowed low byte. The int32's sign bit does the sign extension and
        # 2^-31 scales it, exactly sample / 2^23. Faster than widening a (n, 3) uint8 view.
        shifted = np.ndarray((count,), dtype="<i4", buffer=buf, offset=offset - 1, strides=(3,))
        return _mix_down(shifted & np.int32(-256), channels, 2.0**-31, 0.0)
    src32 = np.frombuffer(buf, dtype="<i4", count=count, offset=offset)
    return _mix_down(src32, channels, 2.0**-31, 0.0)


def _mix_down(interleaved: npt.NDArray[Any], channels: int, scale: float, offset: float) -> F32:
    """Mean of channels, then ``x * scale + offset``, in float32.

    Scales are powers of two, so mono PCM conversion is exact (PCM16 → x / 32768 bit for bit).
    """
    if channels == 1:
        out = interleaved.astype(np.float32)  # always a fresh, writable array
    else:
        frames = interleaved.reshape(-1, channels)
        out = frames[:, 0].astype(np.float32)
        # A per-channel loop of whole-array adds beats numpy's reduction over a short inner axis.
        for c in range(1, channels):
            out += frames[:, c]
        out /= np.float32(channels)
    if scale != 1.0:
        out *= np.float32(scale)
    if offset != 0.0:
        out += np.float32(offset)
    return out


def _check_duration(frames: int, rate: int, max_seconds: float) -> None:
    if frames > max_seconds * rate:
        raise AudioTooLongError(
            f"audio is {frames / rate:.1f} s long; the maximum is {max_seconds:g} s"
        )


def read_wav(
    data: bytes | bytearray | memoryview, *, max_seconds: float = MAX_AUDIO_SECONDS
) -> DecodedAudio:
    """Decode a RIFF/RF64/BW64 WAV file (PCM 8/16/24/32, float 32/64, extensible).

    Args:
        data: the whole file.
        max_seconds: reject longer audio; checked from the header before any sample is read.

    Raises:
        EmptyAudioError, MalformedWavError, UnsupportedFormatError (non-WAV or a WAV codec
        other than PCM/float), AudioTooLongError, NonFiniteSampleError.
    """
    buf = _byte_view(data)
    if len(buf) == 0:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    magic = bytes(buf[:4])
    if magic not in _RIFF_MAGICS:
        raise MalformedWavError(f"not a WAV file: it starts with {magic!r}, not 'RIFF' or 'RF64'")
    fmt, offset, size = _walk_chunks(buf)
    if size % fmt.block_align:
        raise MalformedWavError(
            f"'data' chunk is {size} bytes, not a whole number of {fmt.block_align}-byte frames"
        )
    frames = size // fmt.block_align
    _check_duration(frames, fmt.rate, max_seconds)
    samples = _convert(buf, offset, size, fmt)
    return DecodedAudio(samples=samples, rate=fmt.rate, channels=fmt.channels)


# --------------------------------------------------------------------------------------------
# Other containers through optional extras
# --------------------------------------------------------------------------------------------


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
    "flac": ("FLAC", "FLAC", _FORMATS_EXTRA),
    "ogg": ("OGG", "OGG", _FORMATS_EXTRA),
    "mp3": ("MP3", "MP3", _FORMATS_EXTRA),
    "m4a": ("M4A/MP4", None, _M4A_EXTRA),
    "aac": ("AAC (ADTS)", None, _M4A_EXTRA),
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


def _frame_limit(max_seconds: float, rate: int) -> int | None:
    """Most frames allowed at ``rate``; None when unlimited."""
    if math.isinf(max_seconds):
        return None
    return max(0, math.floor(max_seconds * rate))


def _decode_soundfile(
    sf: ModuleType, buf: memoryview, max_seconds: float, label: str
) -> DecodedAudio:
    try:
        with sf.SoundFile(io.BytesIO(buf)) as f:
            rate = int(f.samplerate)
            channels = int(f.channels)
            limit = _frame_limit(max_seconds, rate)
            # libsndfile knows the frame count from the header for every format it reads from
            # a seekable buffer; huge values are its "unknown" sentinel, not a length.
            declared = int(f.frames)
            if limit is not None and limit < declared < 2**62:
                _check_duration(declared, rate, max_seconds)
            block = f.read(
                frames=-1 if limit is None else limit + 1, dtype="float32", always_2d=True
            )
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
        raise UnsupportedFormatError(f"could not decode {label} audio: {exc}") from None
    if rate <= 0 or channels <= 0:
        raise UnsupportedFormatError(f"could not decode {label} audio: no samples or no rate")
    frames = np.asarray(block, dtype=np.float32)
    _check_duration(frames.shape[0], rate, max_seconds)
    return DecodedAudio(samples=_finite_mean(frames, rate, label), rate=rate, channels=channels)


def _finite_mean(frames: F32, rate: int, label: str) -> F32:
    """Mean of a (frames, channels) float32 array, rejecting NaN/Inf."""
    finite = np.isfinite(frames)
    if not finite.all():
        first = int(np.argmin(finite.all(axis=1)))
        raise NonFiniteSampleError(
            f"{label} audio has non-finite samples (NaN or ±Inf); the first is at frame {first} "
            f"({first / rate:.3f} s)"
        )
    return _mix_down(np.ascontiguousarray(frames).reshape(-1), frames.shape[1], 1.0, 0.0)


# PyAV sample formats (packed names) → (scale, offset) to float in [-1, 1)
_AV_SCALES: dict[str, tuple[float, float]] = {
    "u8": (1.0 / 128.0, -1.0),
    "s16": (2.0**-15, 0.0),
    "s32": (2.0**-31, 0.0),
    "s64": (2.0**-63, 0.0),
    "flt": (1.0, 0.0),
    "dbl": (1.0, 0.0),
}


def _av_frame_to_float(frame: Any) -> F32:
    """One PyAV AudioFrame → float32 (channels, samples)."""
    name = str(frame.format.name)
    packed = name.rstrip("p")
    if packed not in _AV_SCALES:
        raise UnsupportedFormatError(f"decoder produced an unsupported sample format {name!r}")
    scale, offset = _AV_SCALES[packed]
    arr = np.asarray(frame.to_ndarray())
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T
    out = arr.astype(np.float32)
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
                chunk = _av_frame_to_float(frame)
                if not rate:
                    rate, channels = int(frame.sample_rate), chunk.shape[0]
                elif int(frame.sample_rate) != rate or chunk.shape[0] != channels:
                    raise UnsupportedFormatError(
                        f"{label} audio changes its sample rate or channel count mid-stream"
                    )
                total += chunk.shape[1]
                _check_duration(total, rate, max_seconds)
                parts.append(chunk)
    except errors as exc:
        raise UnsupportedFormatError(f"could not decode {label} audio: {exc}") from None
    if not rate:
        raise UnsupportedFormatError(f"could not decode {label} audio: no audio frames")
    frames = np.concatenate(parts, axis=1).T
    return DecodedAudio(samples=_finite_mean(frames, rate, label), rate=rate, channels=channels)


def _missing_extra(label: str, extra: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"{label} audio needs an optional decoder: `{_install_hint(extra)}`", extra=extra
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
        would help), AudioTooLongError, NonFiniteSampleError.
    """
    buf = _byte_view(data)
    if len(buf) == 0:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    head = bytes(buf[:16])
    if head[:4] in _RIFF_MAGICS:
        try:
            return read_wav(buf, max_seconds=max_seconds)
        except UnsupportedFormatError as exc:
            # A WAV codec we lack (µ-law, ADPCM…): libsndfile decodes those, and so does FFmpeg.
            if exc.extra != _FORMATS_EXTRA:
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
            f"`{_install_hint(_FORMATS_EXTRA)}`, M4A/AAC needs `{_install_hint(_M4A_EXTRA)}`"
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
            f"`{_install_hint(_M4A_EXTRA)}` adds a decoder that can",
            extra=_M4A_EXTRA,
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


def pcm16_to_float(data: bytes | bytearray | memoryview) -> F32:
    """Little-endian PCM16 → float32 / 32768 (WebSocket frames).

    Raises:
        ValueError: odd byte count; the caller carries a split sample to its next frame.
    """
    view = _byte_view(data)
    if len(view) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(view)}")
    out = np.frombuffer(view, dtype="<i2").astype(np.float32)
    out *= np.float32(2.0**-15)
    return out


# --------------------------------------------------------------------------------------------
# Resampling (decision D19)
# --------------------------------------------------------------------------------------------
#
# Output sample n sits at input time t_n = n·M/L (L/M = out/in in lowest terms) and is
#     y[n] = Σ_k x[k] · h(t_n − k),   h(t) = s·sinc(s·t) · kaiser(t / W),
# with s = ROLLOFF · min(1, L/M) (cutoff relative to the input Nyquist) and W = ZEROS / s input
# samples. Centring the kernel on t_n makes the filter zero-phase: no delay to compensate. With
# t_n = q + r/L (q integer, phase r in [0, L)), the weights depend only on r: one table row per
# phase, computed once per ratio. Missing samples before the start and after the end are zero,
# so the whole-signal output has exactly ceil(N·L/M) samples.

_ROLLOFF = 0.94
_ZEROS = 32
_BETA = 14.8
# Above these sizes (float64 entries: 8 and 32 MiB) a plan drops to a slower path that needs
# less memory; every common rate stays far below (44.1 kHz: 0.1 M and 30 k entries).
_MAX_BLOCK_MATRIX = 1 << 20
_MAX_TABLE = 1 << 22
# Entries of the input matrix per matmul, so the float64 copy stays around 4 MiB.
_BATCH_ENTRIES = 1 << 19


def _kernel(t: F64, scale: float, half_width: float) -> F64:
    x = t / half_width
    window = np.i0(_BETA * np.sqrt(np.clip(1.0 - x * x, 0.0, None))) / np.i0(_BETA)
    window[np.abs(x) >= 1.0] = 0.0
    return scale * np.sinc(scale * t) * window


@dataclass(frozen=True, slots=True)
class _Plan:
    up: int  # L
    down: int  # M
    half: int  # J: taps reach J input samples either side of q
    scale: float
    half_width: float
    table: F64 | None  # (L, 2J+1): weight of x_pad[q + c] for phase r; None when too large
    group: int  # G: block-mode rows hold G·L outputs and advance G·M inputs
    span: int  # inputs per block-mode row
    block: F64 | None  # (span, G·L) matrix of block mode; None selects gather mode

    @property
    def taps(self) -> int:
        return 2 * self.half + 1

    def weights(self, phases: npt.NDArray[np.int64]) -> F64:
        """Weight rows for the given phases (table lookup, or computed when no table fits)."""
        if self.table is not None:
            return self.table[phases]
        return _phase_weights(phases, self.up, self.half, self.scale, self.half_width)


def _phase_weights(
    phases: npt.NDArray[np.int64], up: int, half: int, scale: float, half_width: float
) -> F64:
    c = np.arange(2 * half + 1, dtype=np.float64)
    # x_pad[q + c] is input sample q + c − J, at distance t_n − k = r/L + J − c from t_n.
    t = phases[:, None].astype(np.float64) / up + half - c[None, :]
    w = _kernel(t, scale, half_width)
    # Unit DC gain for every phase: otherwise the phases' slightly different sums would
    # modulate a constant signal into a tone at the phase rate.
    w /= w.sum(axis=1, keepdims=True)
    return w


@functools.lru_cache(maxsize=32)
def _plan(up: int, down: int) -> _Plan:
    scale = _ROLLOFF * min(1.0, up / down)
    half_width = _ZEROS / scale
    half = math.ceil(half_width)
    taps = 2 * half + 1
    table = (
        _phase_weights(np.arange(up, dtype=np.int64), up, half, scale, half_width)
        if up * taps <= _MAX_TABLE
        else None
    )
    # Block mode turns the convolution into one matmul per batch of rows. G·M ≈ 2J balances the
    # overlap between rows (input copied span/(G·M) times) against the zeros in the block matrix
    # (span/taps times the needed multiplies).
    group = max(1, math.ceil(2 * half / down))
    width = group * up
    i = np.arange(width, dtype=np.int64)
    q = i * down // up
    span = int(q[-1]) + taps
    block: F64 | None = None
    if table is not None and span * width <= _MAX_BLOCK_MATRIX:
        block = np.zeros((span, width), dtype=np.float64)
        rows = q[None, :] + np.arange(taps)[:, None]
        block[rows, np.broadcast_to(i, rows.shape)] = table[i * down % up].T
    return _Plan(up, down, half, scale, half_width, table, group, span, block)


class Resampler:
    """Stateful band-limited polyphase resampler (Kaiser windowed sinc).

    Feed any number of chunks to :meth:`process`, then call :meth:`flush`; the concatenated
    output equals :func:`resample` of the whole signal (to float32 rounding) and has
    ``ceil(N·out_rate/in_rate)`` samples. After :meth:`flush` the object is ready for a new
    stream. Output lags input by the look-ahead a zero-phase filter needs (32 zero crossings,
    2–4 ms) plus at most one block of outputs computed together: 6 ms (24/32/48 kHz) to 43 ms
    (11.025 kHz) at common rates. Not thread-safe: one instance per stream.
    """

    __slots__ = ("_base", "_buf", "_n_in", "_n_out", "_plan", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int = MODEL_RATE) -> None:
        in_rate, out_rate = operator.index(in_rate), operator.index(out_rate)
        if in_rate < 1 or out_rate < 1:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = math.gcd(in_rate, out_rate)
        self._plan = None if in_rate == out_rate else _plan(out_rate // g, in_rate // g)
        self._reset()

    def _reset(self) -> None:
        half = 0 if self._plan is None else self._plan.half
        # Inputs are kept "padded": J zeros in front stand for the silence before the start.
        self._buf: F32 = np.zeros(half, dtype=np.float32)
        self._base = 0  # padded index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    def process(self, x: npt.ArrayLike) -> F32:
        """Consume a chunk (any length, 0 included); return the output that is now complete."""
        chunk = _as_signal(x)
        if self._plan is None:
            self._n_in += chunk.size
            return chunk.copy()
        if chunk.size:
            self._buf = np.concatenate((self._buf, chunk))
            self._n_in += chunk.size
        return self._emit(self._plan, self._plan.half + self._n_in)

    def flush(self) -> F32:
        """Finish the stream: emit the tail (the input is taken as zero past its end)."""
        plan = self._plan
        if plan is None:
            self._reset()
            return np.zeros(0, dtype=np.float32)
        target = -(-self._n_in * plan.up // plan.down)
        out = np.zeros(0, dtype=np.float32)
        if target > self._n_out:
            last = target - 1
            if plan.block is not None:
                width = plan.group * plan.up
                need = (last // width) * plan.group * plan.down + plan.span
            else:
                need = last * plan.down // plan.up + plan.taps
            missing = need - (self._base + self._buf.size)
            if missing > 0:
                self._buf = np.concatenate((self._buf, np.zeros(missing, dtype=np.float32)))
            wanted = target - self._n_out
            out = self._emit(plan, need)[:wanted]
        self._reset()
        return out

    def _emit(self, plan: _Plan, end: int) -> F32:
        """Compute every output whose inputs all lie before padded index ``end``."""
        if plan.block is not None:
            return self._emit_block(plan, plan.block, end)
        return self._emit_gather(plan, end)

    def _emit_block(self, plan: _Plan, block: F64, end: int) -> F32:
        stride = plan.group * plan.down
        width = plan.group * plan.up
        first = self._n_out // width
        stop = (end - plan.span) // stride + 1 if end >= plan.span else 0
        rows = stop - first
        if rows <= 0:
            return np.zeros(0, dtype=np.float32)
        out = np.empty((rows, width), dtype=np.float32)
        buf = self._buf
        start = first * stride - self._base
        batch = max(1, _BATCH_ENTRIES // plan.span)
        for r0 in range(0, rows, batch):
            r1 = min(rows, r0 + batch)
            seg = buf[start + r0 * stride : start + (r1 - 1) * stride + plan.span]
            view = np.lib.stride_tricks.as_strided(
                seg, shape=(r1 - r0, plan.span), strides=(stride * 4, 4), writeable=False
            )
            # Overlapping rows are not BLAS-compatible, so copy (to float64: the float64 sum
            # makes every output independent of how the stream was chunked, to the last bit
            # in all but rare rounding ties).
            out[r0:r1] = np.ascontiguousarray(view, dtype=np.float64) @ block
        self._n_out += rows * width
        self._drop_before(stop * stride)
        return out.reshape(-1)

    def _emit_gather(self, plan: _Plan, end: int) -> F32:
        # Output n needs x_pad[q_n .. q_n + 2J]: n < ceil((end − 2J)·L/M).
        avail = end - 2 * plan.half
        stop = -(-avail * plan.up // plan.down) if avail > 0 else 0
        count = stop - self._n_out
        if count <= 0:
            return np.zeros(0, dtype=np.float32)
        out = np.empty(count, dtype=np.float32)
        taps = np.arange(plan.taps, dtype=np.int64)
        batch = max(1, _BATCH_ENTRIES // plan.taps)
        for b0 in range(0, count, batch):
            n = np.arange(self._n_out + b0, self._n_out + min(count, b0 + batch), dtype=np.int64)
            q = n * plan.down // plan.up
            x = self._buf[(q - self._base)[:, None] + taps[None, :]].astype(np.float64)
            w = plan.weights(n * plan.down % plan.up)
            out[b0 : b0 + n.size] = np.einsum("ij,ij->i", x, w)
        self._n_out = stop
        self._drop_before(stop * plan.down // plan.up)
        return out

    def _drop_before(self, index: int) -> None:
        cut = index - self._base
        if cut > 0:
            self._buf = self._buf[cut:]
            self._base = index


def _as_signal(x: npt.ArrayLike) -> F32:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {arr.shape}")
    return arr


def resample(x: npt.ArrayLike, in_rate: int, out_rate: int = MODEL_RATE) -> F32:
    """Resample a whole signal (process + flush); a float32 copy when the rates are equal."""
    signal = _as_signal(x)
    if in_rate == out_rate:
        return signal.copy()
    r = Resampler(in_rate, out_rate)
    head = r.process(signal)
    return np.concatenate((head, r.flush()))
