"""Audio decoding: the WAV/RF64 parser (every width, layout and malformed header), the optional
soundfile/PyAV decoders and their absence, the duration cap, and the real Golos clips.
"""

from __future__ import annotations

import io
import struct
import types
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gigastt.engine.audio import (
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    MalformedWavError,
    NonFiniteSampleError,
    UnsupportedFormatError,
    UnsupportedSampleRateError,
    containers,
    decode_audio,
    load_audio,
    pcm16_to_float,
    read_wav,
    supported_formats,
    to_model_rate,
)
from gigastt.engine.audio import wav as wav_reader

GOLOS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "golos"
GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
FORMATS_HINT = "pip install 'gigastt-server[formats]'"
M4A_HINT = "pip install 'gigastt-server[m4a]'"

try:
    import soundfile as sf
except (ImportError, OSError):  # pragma: no cover - the extra is part of the test dependencies
    sf = None

requires_soundfile = pytest.mark.skipif(sf is None, reason="soundfile (extra 'formats') missing")


# --- WAV builders: every field can be set, so every field can lie ----------------------------


def chunk(cid: bytes, body: bytes, *, size: int | None = None, pad: bool = True) -> bytes:
    """One RIFF chunk; ``size`` overrides the declared size, ``pad`` adds the even-size pad."""
    declared = len(body) if size is None else size
    tail = b"\x00" if pad and len(body) % 2 else b""
    return cid + struct.pack("<I", declared) + body + tail


def fmt_body(
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    block_align: int | None = None,
    byte_rate: int | None = None,
    sub_tag: int | None = None,
    valid_bits: int | None = None,
    cb_size: int = 22,
    guid_tail: bytes = GUID_TAIL,
) -> bytes:
    """A 'fmt ' body; with ``sub_tag`` it is WAVE_FORMAT_EXTENSIBLE (40 bytes)."""
    align = channels * (bits // 8) if block_align is None else block_align
    rate_bytes = rate * align if byte_rate is None else byte_rate
    if sub_tag is not None:
        tag = 0xFFFE
    body = struct.pack("<HHIIHH", tag, channels, rate, rate_bytes, align, bits)
    if sub_tag is not None:
        vb = bits if valid_bits is None else valid_bits
        body += struct.pack("<HHI", cb_size, vb, 0) + struct.pack("<H", sub_tag) + guid_tail
    return body


def riff(
    *chunks: bytes, magic: bytes = b"RIFF", size: int | None = None, form: bytes = b"WAVE"
) -> bytes:
    payload = form + b"".join(chunks)
    return magic + struct.pack("<I", len(payload) if size is None else size) + payload


def wav(data: bytes, **fmt: int) -> bytes:
    return riff(chunk(b"fmt ", fmt_body(**fmt)), chunk(b"data", data))


def ds64(riff_size: int, data_size: int, sample_count: int = 0) -> bytes:
    return chunk(b"ds64", struct.pack("<QQQI", riff_size, data_size, sample_count, 0))


def pcm16(values: list[int]) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


# --- PCM and float widths --------------------------------------------------------------------


def test_pcm8_is_unsigned_with_offset() -> None:
    got = read_wav(wav(bytes([0, 64, 128, 255]), bits=8))
    assert got.samples.dtype == np.float32
    assert got.samples.tolist() == [-1.0, -0.5, 0.0, 127 / 128]


def test_pcm16_is_exactly_divided_by_32768() -> None:
    values = [-32768, -1, 0, 1, 12345, 32767]
    got = read_wav(wav(pcm16(values), rate=8000))
    assert got.rate == 8000 and got.channels == 1
    expected = np.array(values, dtype=np.float32) / np.float32(32768)
    assert np.array_equal(got.samples, expected)


def test_pcm24_sign_extension_and_scale() -> None:
    values = [-(2**23), -(2**22), -1, 0, 1, 0x123456, 2**23 - 1]
    raw = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    got = read_wav(wav(raw, bits=24))
    expected = (np.array(values, dtype=np.float64) / 2**23).astype(np.float32)
    assert np.array_equal(got.samples, expected)


def test_pcm32_scale() -> None:
    values = [-(2**31), -(2**16), 0, 2**16, 2**31 - 1]
    got = read_wav(wav(np.array(values, dtype="<i4").tobytes(), bits=32))
    expected = (np.array(values, dtype=np.float64) / 2**31).astype(np.float32)
    assert np.array_equal(got.samples, expected)


@pytest.mark.parametrize(("bits", "dtype"), [(32, "<f4"), (64, "<f8")])
def test_ieee_float_is_taken_as_is(bits: int, dtype: str) -> None:
    values = np.array([-1.0, -0.25, 0.0, 0.123456789, 0.999, 1.5], dtype=dtype)
    got = read_wav(wav(values.tobytes(), tag=3, bits=bits))
    assert np.array_equal(got.samples, values.astype(np.float32))


@pytest.mark.parametrize(("bits", "valid"), [(16, 16), (24, 20), (32, 24)])
def test_extensible_pcm(bits: int, valid: int) -> None:
    # 20 valid bits in a 24-bit container are left-justified: decoding by container is exact.
    values = [-(2 ** (bits - 1)), 0, 2 ** (bits - 2)]
    raw = b"".join(v.to_bytes(bits // 8, "little", signed=True) for v in values)
    got = read_wav(wav(raw, bits=bits, sub_tag=1, valid_bits=valid))
    assert got.samples.tolist() == [-1.0, 0.0, 0.5]


@pytest.mark.parametrize(("bits", "dtype"), [(32, "<f4"), (64, "<f8")])
def test_extensible_float(bits: int, dtype: str) -> None:
    values = np.array([0.5, -0.75], dtype=dtype)
    got = read_wav(wav(values.tobytes(), bits=bits, sub_tag=3))
    assert got.samples.tolist() == [0.5, -0.75]


def test_stereo_is_the_mean_of_channels() -> None:
    frames = [(32767, -32768), (1000, 3000), (-2, 0)]
    raw = pcm16([v for frame in frames for v in frame])
    got = read_wav(wav(raw, channels=2))
    assert got.channels == 2
    expected = np.array([np.mean(f) / 32768 for f in frames], dtype=np.float32)
    assert np.allclose(got.samples, expected, atol=1e-7)


def test_six_channels_are_averaged() -> None:
    rng = np.random.default_rng(6)
    frames = rng.integers(-(2**23), 2**23, size=(50, 6))
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in frames.reshape(-1))
    got = read_wav(wav(raw, channels=6, bits=24, rate=48000))
    assert got.channels == 6 and got.rate == 48000 and got.samples.shape == (50,)
    assert np.allclose(got.samples, frames.mean(axis=1) / 2**23, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 8001, 11025, 383999, 384000])
def test_any_rate_in_range_is_accepted(rate: int) -> None:
    got = read_wav(wav(pcm16([1, 2, 3]), rate=rate))
    assert got.rate == rate and got.duration == 3 / rate


# --- layout: padding, unknown chunks, order, RF64, streaming sizes ----------------------------


def test_odd_chunks_are_padded_and_unknown_chunks_skipped() -> None:
    data = riff(
        chunk(b"LIST", b"INFOx"),  # odd: one pad byte follows
        chunk(b"fmt ", fmt_body(bits=8)),
        chunk(b"fact", struct.pack("<I", 3)),
        chunk(b"data", bytes([0, 128, 255])),  # odd data chunk, padded
        chunk(b"JUNK", b"abc"),
        chunk(b"id3 ", b"\x00" * 7),
    )
    got = read_wav(data)
    assert got.samples.tolist() == [-1.0, 0.0, 127 / 128]


def test_data_before_fmt_is_accepted() -> None:
    data = riff(chunk(b"data", pcm16([16384])), chunk(b"fmt ", fmt_body()))
    assert read_wav(data).samples.tolist() == [0.5]


def test_missing_final_pad_byte_is_tolerated() -> None:
    data = riff(chunk(b"fmt ", fmt_body(bits=8)), chunk(b"data", b"\x80\x80\x80", pad=False))
    assert read_wav(data).samples.tolist() == [0.0, 0.0, 0.0]


def test_trailing_junk_after_a_complete_wav_is_ignored() -> None:
    body = wav(pcm16([100, 200]))
    # An appended tag whose "size" runs past the end of the file, outside the RIFF extent.
    assert read_wav(body + b"TAG!\xff\xff\xff\x7fjunk").samples.size == 2
    # An overrunning chunk inside the RIFF extent, after fmt and data, is trailing junk too.
    inner = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", pcm16([7])), b"LIST\xff\x00\x00\x00")
    assert read_wav(inner).samples.size == 1


def test_riff_size_field_is_advisory() -> None:
    for size in (0, 4, 0xFFFFFFFF, 10**9):
        data = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", pcm16([1, 2])), size=size)
        assert read_wav(data).samples.size == 2


def test_rf64_with_ds64_sizes() -> None:
    samples = pcm16([-16384, 16384, 0])
    body = (
        ds64(0, len(samples))
        + chunk(b"fmt ", fmt_body())
        + chunk(b"data", samples, size=0xFFFFFFFF)
    )
    got = read_wav(riff(body, magic=b"RF64", size=0xFFFFFFFF))
    assert got.samples.tolist() == [-0.5, 0.5, 0.0]


def test_bw64_is_read_like_rf64() -> None:
    samples = pcm16([8192])
    body = ds64(0, 2) + chunk(b"fmt ", fmt_body()) + chunk(b"data", samples, size=0xFFFFFFFF)
    assert read_wav(riff(body, magic=b"BW64", size=0xFFFFFFFF)).samples.tolist() == [0.25]


def test_rf64_with_a_32_bit_data_size_uses_it() -> None:
    samples = pcm16([8192, 8192])
    body = ds64(0, 999) + chunk(b"fmt ", fmt_body()) + chunk(b"data", samples)
    assert read_wav(riff(body, magic=b"RF64", size=0xFFFFFFFF)).samples.size == 2


def test_streaming_writer_data_size_runs_to_end_of_file() -> None:
    samples = pcm16(list(range(10)))
    data = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", b""), size=0xFFFFFFFF)
    data = data[:-4] + struct.pack("<I", 0xFFFFFFFF) + samples
    got = read_wav(data)
    assert got.samples.size == 10 and got.samples[-1] == 9 / 32768


def test_streaming_writer_cut_mid_frame_is_an_error() -> None:
    data = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", b""), size=0xFFFFFFFF)
    data = data[:-4] + struct.pack("<I", 0xFFFFFFFF) + b"\x01\x00\x02"
    with pytest.raises(MalformedWavError, match="not a whole number of 2-byte frames"):
        read_wav(data)


def test_zero_frames_decode_to_no_samples() -> None:
    got = read_wav(wav(b""))
    assert got.samples.shape == (0,) and got.samples.dtype == np.float32


def test_all_byte_like_inputs_are_accepted() -> None:
    data = wav(pcm16([16384]))
    for item in (data, bytearray(data), memoryview(data)):
        assert decode_audio(item).samples.tolist() == [0.5]


def test_result_does_not_alias_a_mutable_input() -> None:
    data = bytearray(wav(pcm16([16384]), tag=1))
    got = read_wav(data)
    data[-2:] = b"\x00\x00"
    assert got.samples.tolist() == [0.5]


# --- malformed WAV: one case each -------------------------------------------------------------

FMT = chunk(b"fmt ", fmt_body())
DATA = chunk(b"data", pcm16([1, 2]))

MALFORMED: dict[str, tuple[bytes, type[AudioError], str]] = {
    "missing fmt": (riff(DATA), MalformedWavError, "no 'fmt ' chunk"),
    "missing data": (riff(FMT), MalformedWavError, "no 'data' chunk"),
    "duplicate fmt": (riff(FMT, FMT, DATA), MalformedWavError, "duplicate 'fmt ' chunk at byte 36"),
    "duplicate data": (riff(FMT, DATA, DATA), MalformedWavError, "duplicate 'data' chunk"),
    "fmt too short": (
        riff(chunk(b"fmt ", fmt_body()[:14]), DATA),
        MalformedWavError,
        "'fmt ' chunk is 14 bytes; at least 16",
    ),
    "fmt truncated": (
        riff(chunk(b"fmt ", fmt_body()[:10], size=16)),
        MalformedWavError,
        "'fmt ' chunk declares 16 bytes but only 10 remain",
    ),
    "data truncated": (
        riff(FMT, chunk(b"data", pcm16([1, 2, 3]), size=100)),
        MalformedWavError,
        "'data' chunk declares 100 bytes but only 6 remain in the file: the file is truncated",
    ),
    "absurd data size": (
        riff(FMT, chunk(b"data", b"\x00" * 4, size=0x7FFFFFFF)),
        MalformedWavError,
        "declares 2147483647 bytes but only 4 remain",
    ),
    "data not whole frames": (
        riff(FMT, chunk(b"data", b"\x01\x02\x03")),
        MalformedWavError,
        "'data' chunk is 3 bytes, not a whole number of 2-byte frames",
    ),
    "block align mismatch": (
        wav(pcm16([1, 2]), channels=2, block_align=2),
        MalformedWavError,
        "block align is 2 bytes, but 2 channel(s) of 16-bit samples need 4",
    ),
    "zero channels": (wav(b"", channels=0), MalformedWavError, "declares 0 channels"),
    "zero rate": (wav(pcm16([1]), rate=0), MalformedWavError, "sample rate of 0 Hz"),
    "rate below range": (
        wav(pcm16([1]), rate=7999),
        UnsupportedSampleRateError,
        "WAV sample rate 7999 Hz is outside the supported range 8000–384000 Hz",
    ),
    "rate above range": (
        wav(pcm16([1]), rate=0xFFFFFFFB, byte_rate=0),
        UnsupportedSampleRateError,
        "WAV sample rate 4294967291 Hz is outside the supported range 8000–384000 Hz",
    ),
    "odd pcm bits": (
        wav(pcm16([1]), bits=12, block_align=2),
        MalformedWavError,
        "PCM WAV with 12 bits per sample is not supported",
    ),
    "zero bits": (wav(b"", bits=0, block_align=0), MalformedWavError, "0 bits per sample"),
    "float16": (wav(pcm16([1]), tag=3, bits=16), MalformedWavError, "IEEE float WAV with 16 bits"),
    "extensible fmt too short": (
        riff(chunk(b"fmt ", fmt_body(sub_tag=1)[:18]), DATA),
        MalformedWavError,
        "WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is 18 bytes; 40 are required",
    ),
    "extensible cb size": (
        wav(pcm16([1]), sub_tag=1, cb_size=0),
        MalformedWavError,
        "extension size is 0",
    ),
    "extensible valid bits": (
        wav(pcm16([1]), sub_tag=1, valid_bits=20),
        MalformedWavError,
        "20 valid bits in a 16-bit container",
    ),
    "extensible unknown guid": (
        wav(pcm16([1]), sub_tag=1, guid_tail=b"\x11" * 14),
        UnsupportedFormatError,
        "is not PCM or IEEE float",
    ),
    "unknown chunk overruns before data": (
        riff(FMT, chunk(b"LIST", b"abcd", size=5000)),
        MalformedWavError,
        "chunk b'LIST' at byte 36 declares 5000 bytes but only 4 remain",
    ),
    "rf64 without ds64": (
        riff(FMT, DATA, magic=b"RF64"),
        MalformedWavError,
        "the first chunk must be 'ds64', found b'fmt '",
    ),
    "rf64 header only": (riff(magic=b"RF64"), MalformedWavError, "has no 'ds64' chunk"),
    "ds64 too short": (
        riff(chunk(b"ds64", b"\x00" * 16), FMT, DATA, magic=b"RF64"),
        MalformedWavError,
        "'ds64' chunk is 16 bytes",
    ),
    "ds64 truncated": (
        riff(chunk(b"ds64", b"\x00" * 20, size=28), magic=b"RF64"),
        MalformedWavError,
        "'ds64' chunk declares 28 bytes but only 20 remain",
    ),
    "rf64 absurd data size": (
        riff(ds64(0, 2**62), FMT, chunk(b"data", b"\x00\x00", size=0xFFFFFFFF), magic=b"RF64"),
        MalformedWavError,
        f"'data' chunk declares {2**62} bytes but only 2 remain",
    ),
    "short header": (b"RIFF\x00\x00", MalformedWavError, "file is 6 bytes"),
    "riff but not wave": (riff(form=b"AVI "), UnsupportedFormatError, "form b'AVI ' is not WAVE"),
    "mu-law": (wav(b"\x00", tag=7, bits=8), UnsupportedFormatError, "µ-law encoding"),
    "ima adpcm": (
        wav(b"\x00" * 4, tag=0x11, bits=4, block_align=4),
        UnsupportedFormatError,
        "IMA ADPCM",
    ),
    "mp3 in wav": (
        wav(b"\x00", tag=0x55, bits=0, block_align=1),
        UnsupportedFormatError,
        "MPEG Layer 3 encoding (format tag 0x0055)",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_wav(case: str) -> None:
    data, error, message = MALFORMED[case]
    with pytest.raises(error) as info:
        read_wav(data)
    assert message in str(info.value)


def test_not_riff_is_not_a_wav() -> None:
    with pytest.raises(MalformedWavError, match="not a WAV file"):
        read_wav(b"fLaC\x00\x00\x00\x22")


def test_unsupported_wav_codecs_name_the_extra_only_when_it_helps() -> None:
    with pytest.raises(UnsupportedFormatError) as mulaw:
        read_wav(MALFORMED["mu-law"][0])
    assert mulaw.value.extra == "formats" and FORMATS_HINT in str(mulaw.value)
    with pytest.raises(UnsupportedFormatError) as mp3:
        read_wav(MALFORMED["mp3 in wav"][0])
    assert mp3.value.extra is None and "convert it to PCM" in str(mp3.value)


def test_messages_carry_no_paths() -> None:
    for data, _error, _message in MALFORMED.values():
        with pytest.raises(AudioError) as info:
            read_wav(data)
        assert "/" not in str(info.value) and "\\" not in str(info.value)


# --- duration cap, non-finite samples, empty and foreign input --------------------------------


def _refuse_conversion(*_args: object) -> None:
    raise AssertionError("samples were converted although the header already says too long")


def test_too_long_is_rejected_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    data = wav(bytes(601 * 8000 * 2), rate=8000)  # a real 601 s file, 9.6 MB
    monkeypatch.setattr(wav_reader, "interleaved_to_mono", _refuse_conversion)
    with pytest.raises(AudioTooLongError, match=r"audio is 601\.0 s long; the maximum is 600 s"):
        decode_audio(data, max_seconds=600)


def test_huge_declared_length_on_a_tiny_file_is_truncation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wav_reader, "interleaved_to_mono", _refuse_conversion)
    data = riff(chunk(b"fmt ", fmt_body(rate=8000)), chunk(b"data", bytes(16), size=601 * 16000))
    with pytest.raises(MalformedWavError, match="the file is truncated"):
        read_wav(data)


def test_duration_cap_boundary() -> None:
    exact = wav(bytes(8000 * 2), rate=8000)
    assert read_wav(exact, max_seconds=1.0).samples.size == 8000
    with pytest.raises(AudioTooLongError):
        read_wav(wav(bytes(8001 * 2), rate=8000), max_seconds=1.0)
    assert read_wav(exact, max_seconds=float("inf")).samples.size == 8000


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("bits", "dtype"), [(32, "<f4"), (64, "<f8")])
def test_non_finite_float_samples(bad: float, bits: int, dtype: str) -> None:
    values = np.array([0.0, 0.5, 0.1, bad, 0.2, bad], dtype=dtype)
    with pytest.raises(NonFiniteSampleError,
                       match=r"non-finite samples \(NaN or ±Inf\); the first is at frame 1 "):
        read_wav(wav(values.tobytes(), tag=3, bits=bits, channels=2))


def test_float64_beyond_float32_range_is_non_finite() -> None:
    values = np.array([0.0, 1e300], dtype="<f8")
    with pytest.raises(NonFiniteSampleError):
        read_wav(wav(values.tobytes(), tag=3, bits=64))


@pytest.mark.parametrize("func", [decode_audio, read_wav, load_audio])
def test_empty_bytes(func: Callable[[bytes], object]) -> None:
    with pytest.raises(EmptyAudioError, match="empty"):
        func(b"")


@pytest.fixture
def no_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "_load_soundfile", lambda: None)
    monkeypatch.setattr(containers, "_load_av", lambda: None)


def _random_bytes() -> bytes:
    data = np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert containers._sniff(data[:16]) is None
    return data


@pytest.mark.usefixtures("no_extras")
def test_random_bytes_without_extras() -> None:
    with pytest.raises(UnsupportedFormatError, match="unrecognised audio format") as info:
        decode_audio(_random_bytes())
    assert FORMATS_HINT in str(info.value) and M4A_HINT in str(info.value)


@requires_soundfile
def test_random_bytes_with_soundfile() -> None:
    with pytest.raises(UnsupportedFormatError, match="unrecognised audio format"):
        decode_audio(_random_bytes())


SNIFFED = {
    "flac": (b"fLaC\x00\x00\x00\x22" + bytes(40), "FLAC", "formats"),
    "ogg": (b"OggS\x00\x02" + bytes(40), "OGG", "formats"),
    "mp3 id3": (b"ID3\x04\x00\x00" + bytes(40), "MP3", "formats"),
    "mp3 frame sync": (b"\xff\xfb\x90\x64" + bytes(40), "MP3", "formats"),
    "m4a": (b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + bytes(40), "M4A", "m4a"),
    "aac adts": (b"\xff\xf1\x50\x80" + bytes(40), "AAC", "m4a"),
}


@pytest.mark.usefixtures("no_extras")
@pytest.mark.parametrize("case", SNIFFED)
def test_other_formats_name_the_missing_extra(case: str) -> None:
    data, label, extra = SNIFFED[case]
    with pytest.raises(UnsupportedFormatError) as info:
        decode_audio(data)
    assert info.value.extra == extra
    assert label in str(info.value)
    assert f"pip install 'gigastt-server[{extra}]'" in str(info.value)


@requires_soundfile
def test_m4a_names_its_extra_even_with_soundfile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "_load_av", lambda: None)
    with pytest.raises(UnsupportedFormatError, match=r"gigastt-server\[m4a\]"):
        decode_audio(SNIFFED["m4a"][0])


@pytest.mark.usefixtures("no_extras")
def test_supported_formats_without_extras() -> None:
    assert supported_formats() == ["wav"]


@requires_soundfile
def test_supported_formats_with_soundfile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "_load_av", lambda: None)
    assert sf is not None
    expected = ["wav"] + [
        name
        for name, key in (("mp3", "MP3"), ("ogg", "OGG"), ("flac", "FLAC"))
        if key in sf.available_formats()
    ]
    assert supported_formats() == expected


def test_supported_formats_with_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "_load_soundfile", lambda: None)
    monkeypatch.setattr(containers, "_load_av", lambda: types.ModuleType("av"))
    assert supported_formats() == ["wav", "mp3", "m4a", "ogg", "flac"]


# --- decoding through soundfile ----------------------------------------------------------------


def _sf_bytes(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    assert sf is not None
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def _stereo(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)], 1)


@requires_soundfile
def test_flac_decodes_with_soundfile() -> None:
    pcm = np.round(_stereo(22050, 0.5) * 32767).astype(np.int16)
    got = decode_audio(_sf_bytes(pcm, 22050, "FLAC", "PCM_16"))
    assert got.rate == 22050 and got.channels == 2 and got.samples.dtype == np.float32
    expected = pcm.astype(np.float64).mean(axis=1) / 32768
    assert np.allclose(got.samples, expected, atol=1e-6)
    assert load_audio(_sf_bytes(pcm, 22050, "FLAC", "PCM_16")).size == 8000


@requires_soundfile
def test_ogg_vorbis_decodes_with_soundfile() -> None:
    got = decode_audio(_sf_bytes(_stereo(48000, 0.5).astype(np.float32), 48000, "OGG", "VORBIS"))
    assert got.rate == 48000 and got.channels == 2 and got.samples.size == 24000


@requires_soundfile
def test_mp3_decodes_with_soundfile() -> None:
    assert sf is not None
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3")
    got = decode_audio(_sf_bytes(_stereo(44100, 1.0).astype(np.float32), 44100, "MP3"))
    assert got.rate == 44100 and got.channels == 2
    assert abs(got.samples.size - 44100) < 44100 * 0.1  # encoder delay/padding


@requires_soundfile
def test_soundfile_respects_the_duration_cap() -> None:
    data = _sf_bytes(np.zeros(16000 * 2, dtype=np.int16), 16000, "FLAC", "PCM_16")
    with pytest.raises(AudioTooLongError, match=r"2\.0 s long; the maximum is 1 s"):
        decode_audio(data, max_seconds=1.0)


@requires_soundfile
def test_corrupt_flac_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormatError, match="could not decode FLAC audio"):
        decode_audio(SNIFFED["flac"][0])


@requires_soundfile
def test_mu_law_wav_falls_back_to_soundfile() -> None:
    pcm = np.round(_stereo(8000, 0.25)[:, 0] * 32767).astype(np.int16)
    data = _sf_bytes(pcm, 8000, "WAV", "ULAW")
    got = decode_audio(data)
    assert got.rate == 8000 and got.samples.size == pcm.size
    assert np.max(np.abs(got.samples - pcm / 32768)) < 0.02  # µ-law quantisation


@pytest.mark.usefixtures("no_extras")
def test_mu_law_wav_without_soundfile_names_the_extra() -> None:
    with pytest.raises(UnsupportedFormatError, match=r"µ-law.*gigastt-server\[formats\]"):
        decode_audio(MALFORMED["mu-law"][0])


def test_m4a_decodes_with_pyav() -> None:
    av = pytest.importorskip("av")
    rate = 44100
    signal = _stereo(rate, 1.0).astype(np.float32)
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(signal.T), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    got = decode_audio(out.getvalue())
    assert got.rate == rate and got.channels == 2
    assert abs(got.samples.size - rate) < rate * 0.1


# --- helpers: PCM16 frames, model rate ---------------------------------------------------------


def test_pcm16_to_float() -> None:
    raw = pcm16([-32768, 0, 16384, 32767])
    assert pcm16_to_float(raw).tolist() == [-1.0, 0.0, 0.5, 32767 / 32768]
    assert pcm16_to_float(bytearray(raw)).dtype == np.float32
    assert pcm16_to_float(b"").shape == (0,)
    with pytest.raises(ValueError, match="even number of bytes, got 3"):
        pcm16_to_float(b"\x00\x01\x02")


def test_to_model_rate() -> None:
    at16 = read_wav(wav(pcm16([1, 2, 3])))
    assert to_model_rate(at16) is at16.samples
    at8 = read_wav(wav(pcm16(list(range(101))), rate=8000))
    assert to_model_rate(at8).size == 202
    assert load_audio(wav(pcm16(list(range(441))), rate=44100)).size == 160


# --- the real Golos clips -----------------------------------------------------------------------


def _golos_clips() -> list[Path]:
    return sorted(GOLOS.glob("golos_*.wav")) if GOLOS.is_dir() else []


@pytest.mark.skipif(not _golos_clips(), reason="shared/fixtures/golos not present")
def test_golos_clips_match_the_standard_library() -> None:
    for path in _golos_clips():
        data = path.read_bytes()
        got = decode_audio(data)
        with wave.open(str(path)) as w:
            frames = w.readframes(w.getnframes())
            assert w.getnchannels() == 1 and w.getsampwidth() == 2
        assert got.rate == 16000 and got.channels == 1
        expected = np.frombuffer(frames, "<i2").astype(np.float32) / np.float32(32768)
        assert np.array_equal(got.samples, expected), path.name
        assert load_audio(data) is not None and load_audio(data).size == expected.size
