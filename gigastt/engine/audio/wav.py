"""The WAV reader: RIFF, RF64 and BW64 chunks walked by our own rules, the 'fmt ' chunk checked
field by field, samples converted block by block; memory never follows a size the header claims."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gigastt.engine.audio.core import (
    F32,
    FORMATS_EXTRA,
    MAX_AUDIO_SECONDS,
    AudioSource,
    DecodedAudio,
    EmptyAudioError,
    MalformedWavError,
    UnsupportedFormatError,
    check_duration,
    check_rate,
    install_hint,
)
from gigastt.engine.audio.pcm import byte_view, interleaved_to_mono

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

RIFF_MAGICS = (b"RIFF", b"RF64", b"BW64")
# Bytes converted at a time: 32 s of 16 kHz mono PCM16, a fraction of a second of a studio
# master; one block is all a WAV costs in memory.
BLOCK_BYTES = 1 << 20
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
    check_rate(rate, "WAV")
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
            f"supported by the built-in decoder; `{install_hint(FORMATS_EXTRA)}` decodes it",
            extra=FORMATS_EXTRA,
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


class WavSource(AudioSource):
    """A checked WAV: its format and where its samples lie, in bytes held or in a file on disk
    (read block by block, never whole: a WAV on disk costs one block of memory)."""

    def __init__(self, fmt: _WavFormat, offset: int, size: int, *,
                 data: memoryview | None = None, path: Path | None = None) -> None:
        self.rate = fmt.rate
        self.channels = fmt.channels
        self.frames = size // fmt.block_align
        self._fmt = fmt
        self._offset = offset
        self._size = size
        self._data = data
        self._path = path

    def blocks(self) -> Iterator[F32]:
        if self._data is not None:
            data = self._data
            yield from self._convert(lambda at, n: data[at : at + n])
            return
        assert self._path is not None
        with open(self._path, "rb") as handle:
            fd = handle.fileno()

            def read(at: int, n: int) -> memoryview:
                chunk = os.pread(fd, n, at)
                if len(chunk) != n:
                    raise MalformedWavError("the WAV file was truncated while it was being read")
                return memoryview(chunk)

            yield from self._convert(read)

    def _convert(self, read: Callable[[int, int], memoryview]) -> Iterator[F32]:
        fmt = self._fmt
        step = max(1, BLOCK_BYTES // fmt.block_align) * fmt.block_align
        for at in range(0, self._size, step):
            n = min(step, self._size - at)
            # The byte before the block comes too: the 24-bit conversion reads it (pcm.py).
            yield interleaved_to_mono(
                read(self._offset + at - 1, n + 1), 1, n, bits=fmt.bits,
                is_float=fmt.tag == _TAG_FLOAT, channels=fmt.channels, rate=fmt.rate,
                first_frame=at // fmt.block_align,
            )


def _checked(buf: memoryview, max_seconds: float) -> tuple[_WavFormat, int, int]:
    """The format and the audio bytes' (offset, size) of a whole WAV file, every rule applied."""
    if len(buf) == 0:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    magic = bytes(buf[:4])
    if magic not in RIFF_MAGICS:
        raise MalformedWavError(f"not a WAV file: it starts with {magic!r}, not 'RIFF' or 'RF64'")
    fmt, offset, size = _walk_chunks(buf)
    if size % fmt.block_align:
        raise MalformedWavError(
            f"'data' chunk is {size} bytes, not a whole number of {fmt.block_align}-byte frames"
        )
    check_duration(size // fmt.block_align, fmt.rate, max_seconds)
    return fmt, offset, size


def open_wav(
    data: bytes | bytearray | memoryview | Path, *, max_seconds: float = MAX_AUDIO_SECONDS
) -> WavSource:
    """Check a RIFF/RF64/BW64 WAV file (PCM 8/16/24/32, float 32/64, extensible) held in memory
    or on disk; its samples are decoded by ``blocks()``.

    Args:
        data: the whole file, or the path of one (its header is read through a memory map,
            which touches the header's pages only).
        max_seconds: reject longer audio; checked from the header before any sample is read.

    Raises:
        EmptyAudioError, MalformedWavError, UnsupportedFormatError (non-WAV or a WAV codec
        other than PCM/float), UnsupportedSampleRateError, AudioTooLongError, OSError (a path
        that cannot be read); ``blocks()`` raises NonFiniteSampleError.
    """
    if not isinstance(data, Path):
        buf = byte_view(data)
        return WavSource(*_checked(buf, max_seconds), data=buf)
    with open(data, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise EmptyAudioError("the audio is empty (0 bytes)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                fmt, offset, size = _checked(view, max_seconds)
            finally:
                # An error's traceback still references the view: release it, or the map
                # could not close.
                view.release()
    return WavSource(fmt, offset, size, path=data)


def read_wav(
    data: bytes | bytearray | memoryview, *, max_seconds: float = MAX_AUDIO_SECONDS
) -> DecodedAudio:
    """:func:`open_wav`, then every sample at once."""
    return open_wav(data, max_seconds=max_seconds).read()
