"""Audio input limits: the sample-rate range (REST, SSE, WebSocket and the CLI, with the
server's peak memory), and compressed files whose headers lie about length, rate or channels.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gigastt.engine.audio import (
    MAX_DECODED_FRAMES,
    AudioError,
    AudioTooLongError,
    TooManyChannelsError,
    UnsupportedSampleRateError,
    decode_audio,
    load_audio,
)
from gigastt.testing.audio import speech_like, tiny_wav, wav_bytes
from tests.conftest import ROOT
from tests.serverproc import ServerProcess
from tests.wsclient import collect, open_session

try:
    import soundfile as sf
except (ImportError, OSError):  # pragma: no cover - the extra is part of the test dependencies
    sf = None

requires_soundfile = pytest.mark.skipif(sf is None, reason="soundfile (extra 'formats') missing")

RANGE = "is outside the supported range 8000–384000 Hz"
REAL_RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400,
              192000, 352800, 384000]


# --- the rate range ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", REAL_RATES)
def test_every_real_rate_is_resampled(rate: int) -> None:
    samples = speech_like(0.05, seed=rate % 7, rate=rate)
    out = load_audio(wav_bytes(samples, rate))
    assert out.dtype == np.float32 and out.size == -(-samples.size * 16000 // rate)


@pytest.mark.parametrize("rate", [1, 7999, 384001, 400_000_000, 0xFFFFFFFB])
def test_rates_outside_the_range_are_refused_from_the_header(rate: int) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedSampleRateError, match=f"WAV sample rate {rate} Hz {RANGE}"):
            load_audio(tiny_wav(rate))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process (Linux /proc), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(scope="module")
def server(small_model: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(small_model)
    yield proc
    assert proc.stop() == 0
    assert "Traceback" not in proc.log


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_server_refuses_absurd_rates_without_spending_memory(server: ServerProcess) -> None:
    # A 64-byte WAV declaring 400 MHz made the resampler plan a 1.7 M-tap filter (+170 MB);
    # 0xFFFFFFFB Hz, 18 M taps (+2 GB).
    warm = server.request("POST", "/v1/transcribe", wav_bytes(speech_like(0.5, seed=1), 48000))
    assert warm.status == 200
    before = vm_hwm_kib(server.proc.pid)
    for rate in (400_000_000, 0xFFFFFFFB, 7999, 384001):
        reply = server.request("POST", "/v1/transcribe", tiny_wav(rate))
        assert reply.status == 422, (rate, reply.body)
        refused = {"code": "unsupported_sample_rate",
                   "error": "Sample rate outside the supported range 8000-384000 Hz"}
        assert reply.json() == refused
        stream = server.request("POST", "/v1/transcribe/stream", tiny_wav(rate))
        assert stream.status == 422, (rate, stream.body)
        assert stream.json() == refused
    grown_mib = (vm_hwm_kib(server.proc.pid) - before) / 1024
    assert grown_mib < 32, f"peak RSS grew by {grown_mib:.0f} MiB"
    # The edges of the range still transcribe, and the server is healthy.
    for rate in (8000, 384000):
        ok = server.request("POST", "/v1/transcribe", wav_bytes(speech_like(0.2, rate=rate), rate))
        assert ok.status == 200
    assert server.request("GET", "/health").status == 200


@pytest.mark.parametrize("rate", [400_000_000, 0xFFFFFFFB])
def test_websocket_configure_keeps_its_rate_list(server: ServerProcess, rate: int) -> None:
    # WS rates come from a fixed list (docs/api.md); an absurd one is refused like any other.
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "configure", "sample_rate": rate}))
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws)

    messages = asyncio.run(main())
    assert messages[0] == {
        "type": "error", "code": "invalid_sample_rate",
        "message": f"Unsupported sample rate: {rate}Hz. Supported: [8000, 16000, 24000, 44100,"
                   " 48000]"}
    assert [m["type"] for m in messages] == ["error", "final"]


def test_cli_refuses_an_absurd_rate(tmp_path: Path, small_model: Path) -> None:
    path = tmp_path / "tiny.wav"
    path.write_bytes(tiny_wav(400_000_000))
    result = subprocess.run(
        [sys.executable, "-m", "gigastt", "transcribe", str(path), "--model-dir", str(small_model)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 1, result.stdout
    assert f"Error: invalid audio: WAV sample rate 400000000 Hz {RANGE}" in result.stderr
    assert result.stdout == ""


# --- compressed files: memory follows the input and the limits, never the header -------------


def flac_bytes(frames: np.ndarray, rate: int) -> bytes:
    assert sf is not None
    out = io.BytesIO()
    sf.write(out, frames, rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def patch_streaminfo(data: bytes, *, rate: int | None = None, channels: int | None = None,
                     total: int | None = None) -> bytes:
    """Rewrite STREAMINFO's 20-bit rate, 3-bit channels − 1 and 36-bit total samples."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first block is STREAMINFO
    packed = int.from_bytes(data[18:26], "big")
    fields = [packed >> 44, (packed >> 41) & 7, (packed >> 36) & 31, packed & (2**36 - 1)]
    if rate is not None:
        fields[0] = rate
    if channels is not None:
        fields[1] = channels - 1
    if total is not None:
        fields[3] = total
    packed = (fields[0] << 44) | (fields[1] << 41) | (fields[2] << 36) | fields[3]
    return data[:18] + packed.to_bytes(8, "big") + data[26:]


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _crc_table()


def patch_vorbis(data: bytes, *, rate: int | None = None, channels: int | None = None,
                 granule: int | None = None) -> bytes:
    """Rewrite the Vorbis identification header and the last page's granule; fix page CRCs."""
    out = bytearray(data)
    pages = []
    pos = 0
    while pos < len(out):
        assert out[pos : pos + 4] == b"OggS"
        segments = out[pos + 26]
        end = pos + 27 + segments + sum(out[pos + 27 : pos + 27 + segments])
        pages.append((pos, end))
        pos = end
    ident = pages[0][0] + 27 + out[pages[0][0] + 26]
    assert out[ident : ident + 7] == b"\x01vorbis"
    if channels is not None:
        out[ident + 11] = channels
    if rate is not None:
        out[ident + 12 : ident + 16] = struct.pack("<I", rate)
    if granule is not None:
        out[pages[-1][0] + 6 : pages[-1][0] + 14] = struct.pack("<q", granule)
    for start, end in pages:
        out[start + 22 : start + 26] = bytes(4)
        crc = 0
        for byte in out[start:end]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ byte]
        out[start + 22 : start + 26] = struct.pack("<I", crc)
    return bytes(out)


def _peak_of(decode: Callable[[], object]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        decode()
        error = None
    except Exception as exc:  # the caller checks the type
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


# One block of decoded samples is 1 MiB; two blocks and their mono mixes fit in 4 MiB.
BLOCK_BOUND = 4 << 20


@requires_soundfile
@pytest.mark.parametrize(
    ("rate", "channels", "seconds", "error"),
    [
        # 599 s is under the duration cap; 8 channels at 384 kHz would be 7 GB preallocated.
        (384_000, 8, 599, AudioTooLongError),  # over MAX_DECODED_FRAMES: refused from the header
        (96_000, 8, 599, AudioError),  # under every cap: read in blocks until the data ends
        (48_000, 2, 599, AudioError),
        (1_048_575, 8, 599, UnsupportedSampleRateError),  # FLAC's largest rate field
    ],
)
def test_flac_header_claims_do_not_size_buffers(
    rate: int, channels: int, seconds: int, error: type[AudioError]
) -> None:
    base = flac_bytes(np.zeros((1600, 2), dtype=np.int16), 16000)
    data = patch_streaminfo(base, rate=rate, channels=channels, total=seconds * rate)
    peak, exc = _peak_of(lambda: decode_audio(data))
    assert isinstance(exc, error), exc
    assert peak < BLOCK_BOUND, f"{peak / 2**20:.0f} MiB"


@requires_soundfile
@pytest.mark.parametrize("total", [0, 1, 2**36 - 1])
def test_flac_decoding_stops_at_the_duration_cap(total: int) -> None:
    # 3 s of real audio; the header claims unknown (0), 1 frame, or 2^36 − 1 frames.
    rng = np.random.default_rng(5)
    data = flac_bytes((rng.uniform(-0.5, 0.5, (48000, 2)) * 32767).astype(np.int16), 16000)
    data = patch_streaminfo(data, total=total)
    peak, exc = _peak_of(lambda: decode_audio(data, max_seconds=2.0))
    if total == 1:
        assert exc is None  # libsndfile ends the stream where the header says
    else:
        assert isinstance(exc, AudioTooLongError), exc
    assert peak < BLOCK_BOUND


@requires_soundfile
@pytest.mark.parametrize(
    ("rate", "channels", "granule"),
    [(384_000, None, 599 * 384_000), (None, 255, None), (2**32 - 1, None, None),
     (None, None, 2**62)],
)
def test_vorbis_header_claims_do_not_size_buffers(
    rate: int | None, channels: int | None, granule: int | None
) -> None:
    assert sf is not None
    out = io.BytesIO()
    sf.write(out, np.zeros((1600, 2), dtype=np.float32), 16000, format="OGG", subtype="VORBIS")
    data = patch_vorbis(out.getvalue(), rate=rate, channels=channels, granule=granule)
    peak, exc = _peak_of(lambda: decode_audio(data))
    assert exc is None or isinstance(exc, AudioError), exc
    assert peak < BLOCK_BOUND


@requires_soundfile
def test_more_than_eight_channels_are_refused_before_decoding() -> None:
    # µ-law WAV goes to libsndfile, which would decode any channel count.
    assert sf is not None
    out = io.BytesIO()
    sf.write(out, np.zeros((800, 9), dtype=np.int16), 8000, format="WAV", subtype="ULAW")
    with pytest.raises(TooManyChannelsError, match="WAV audio has 9 channels; at most 8"):
        decode_audio(out.getvalue())
    out = io.BytesIO()
    sf.write(out, np.zeros((800, 8), dtype=np.int16), 8000, format="WAV", subtype="ULAW")
    assert decode_audio(out.getvalue()).channels == 8


@requires_soundfile
def test_the_frame_cap_holds_without_a_duration_limit() -> None:
    # max_seconds=inf (library callers) still caps a compressed stream at MAX_DECODED_FRAMES.
    base = flac_bytes(np.zeros((1600, 1), dtype=np.int16), 16000)
    data = patch_streaminfo(base, rate=384_000, total=MAX_DECODED_FRAMES + 1)
    with pytest.raises(AudioTooLongError, match=r"decoded audio exceeds 67108864 frames"):
        decode_audio(data, max_seconds=float("inf"))
