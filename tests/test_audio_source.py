"""D30's flat-memory pipeline below the server: files decoded block by block (bytes or a file on
disk), resampled as a stream, and cut into the same windows as the whole recording would be.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigastt.engine.audio import (
    EmptyAudioError,
    MalformedWavError,
    NonFiniteSampleError,
    expected_samples,
    load_audio,
    model_blocks,
    open_audio,
)
from gigastt.engine.files import rechunk
from gigastt.engine.recognizer import FRAME_SAMPLES, WindowCutter, split_windows
from gigastt.engine.windows import FileWindows, plan_spans, plan_windows
from gigastt.testing import audio

try:
    import soundfile as sf
except (ImportError, OSError):  # pragma: no cover - the extra is part of the test dependencies
    sf = None

requires_soundfile = pytest.mark.skipif(sf is None, reason="soundfile (extra 'formats') missing")


def joined(blocks: object) -> np.ndarray:
    parts = list(blocks)  # type: ignore[call-overload]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def stereo(seconds: float, rate: int) -> np.ndarray:
    return np.stack([audio.speech_like(seconds, seed=1, rate=rate),
                     audio.speech_like(seconds, seed=2, rate=rate)], 1) * 0.7


# --- sources: the same samples as decoding the whole file, a block at a time ------------------


@pytest.mark.parametrize(("rate", "channels", "fmt"), [
    (16000, 1, "pcm16"), (48000, 2, "pcm24"), (44100, 1, "float32"), (8000, 2, "pcm8"),
    (22050, 1, "float64"), (96000, 1, "pcm32"),
])
def test_blocks_from_bytes_and_from_disk_equal_the_whole_decode(
        tmp_path: Path, rate: int, channels: int, fmt: str) -> None:
    seconds = 70 if rate <= 16000 else 40  # more than one 1 MiB block of the file
    x = (stereo(seconds, rate) if channels == 2
         else audio.speech_like(seconds, seed=3, rate=rate))
    data = audio.wav_bytes(x, rate, channels=channels, sample_format=fmt)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    whole = load_audio(data)
    for source in (open_audio(data), open_audio(path)):
        assert len(list(source.blocks())) > 1  # really read in parts
        blocks = list(model_blocks(source))
        assert expected_samples(source) == whole.shape[0]
        streamed = np.concatenate(blocks)
        assert streamed.shape == whole.shape
        # The stream resampler sums in float64, so chunking moves a sample by at most a tie's
        # rounding (docs/architecture.md §11); unchanged rates are bit-exact.
        if rate == 16000:
            assert np.array_equal(streamed, whole)
        else:
            assert np.max(np.abs(streamed - whole)) <= 1e-6


@requires_soundfile
@pytest.mark.parametrize(("fmt", "subtype"), [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_compressed_files_stream_from_bytes_and_disk(tmp_path: Path, fmt: str,
                                                     subtype: str) -> None:
    assert sf is not None
    out = io.BytesIO()
    sf.write(out, stereo(40, 44100).astype(np.float32), 44100, format=fmt, subtype=subtype)
    data = out.getvalue()
    path = tmp_path / f"a.{fmt.lower()}"
    path.write_bytes(data)
    whole = load_audio(data)
    for source in (open_audio(data), open_audio(path)):
        assert source.rate == 44100 and source.channels == 2
        streamed = joined(model_blocks(source))
        assert streamed.shape == whole.shape
        assert np.max(np.abs(streamed - whole)) <= 1e-6
        assert joined(model_blocks(source)).shape == whole.shape  # read again from the start


def test_a_wav_on_disk_costs_a_block_not_the_recording(tmp_path: Path) -> None:
    # 10 minutes at 48 kHz stereo: 115 MB on disk, 38 MB as 16 kHz float32 and 230 MB as
    # float32 at its own rate, so any whole-file copy shows in the traced peak.
    path = tmp_path / "long.wav"
    minute = audio.wav_bytes(stereo(60, 48000), 48000, channels=2)
    header, body = minute[:44], minute[44:]
    with open(path, "wb") as handle:
        size = len(body) * 10
        handle.write(header[:4] + (size + 36).to_bytes(4, "little") + header[8:40]
                     + size.to_bytes(4, "little"))
        for _ in range(10):
            handle.write(body)
    del minute, body
    source = open_audio(path)
    assert source.frames == 48000 * 600
    tracemalloc.start()
    try:
        total = sum(block.shape[0] for block in model_blocks(source))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 16000 * 600
    assert peak < 16 << 20, peak


def test_bad_samples_are_found_where_they_are(tmp_path: Path) -> None:
    x = audio.speech_like(70, seed=4, rate=16000).astype(np.float32)
    x[16000 * 65] = np.nan
    data = audio.wav_bytes(x, 16000, sample_format="float32")
    source = open_audio(data)  # the header is fine
    seen = 0
    with pytest.raises(NonFiniteSampleError, match=r"first is at frame 1040000 \(65\.000 s\)"):
        for block in source.blocks():
            seen += block.shape[0]
    assert seen >= 16000 * 45  # the blocks before it came through


def test_a_file_cut_short_after_opening_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    data = audio.wav_bytes(audio.speech_like(70, seed=5), 16000)
    path.write_bytes(data)
    source = open_audio(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedWavError, match="truncated while it was being read"):
        joined(source.blocks())


def test_paths_that_are_not_audio(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyAudioError):
        open_audio(empty)
    with pytest.raises(FileNotFoundError):
        open_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEdata")
    with pytest.raises(MalformedWavError):
        open_audio(bad)


# --- windows: cut as the blocks arrive, the same as over the whole array ----------------------


def random_blocks(samples: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, at = [], 0
    for size in sizes:
        if at >= samples.shape[0]:
            break
        out.append(samples[at : at + size])
        at += size
    if at < samples.shape[0]:
        out.append(samples[at:])
    return out


@settings(max_examples=40, deadline=None)
@given(seconds=st.floats(0, 75), seed=st.integers(0, 2**16),
       sizes=st.lists(st.integers(1, 400_000), min_size=1, max_size=30),
       window=st.sampled_from([20.0, 9.0, 8.0, 2.5, 1.0]))
def test_the_cutter_fed_in_blocks_cuts_where_split_windows_does(
        seconds: float, seed: int, sizes: list[int], window: float) -> None:
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(int(seconds * 16000))
               * rng.uniform(0, 1, int(seconds * 16000))).astype(np.float32)
    cutter = WindowCutter(0, window)
    got = [w for block in random_blocks(samples, sizes) for w in cutter.feed(block)]
    got.append(cutter.finish())
    windows = [w for w, _ in got]
    assert windows == split_windows(samples, window)
    # The windows' own audio tiles the file; with context no window's audio passes the length.
    assert [w.start for w in windows[1:]] == [w.stop for w in windows[:-1]]
    assert windows[0].start == 0 and windows[-1].stop == samples.shape[0]
    assert windows[0].before == 0 and windows[-1].after == 0
    for w, part in got:
        assert np.array_equal(part, samples[w.audio_start : w.audio_stop])
        assert w.start % FRAME_SAMPLES == 0
        assert part.shape[0] <= max(FRAME_SAMPLES, int(window * 16000))
    # Every encoder frame of the file is owned by exactly one of the windows that hear it.
    owners = np.zeros(-(-samples.shape[0] // FRAME_SAMPLES), dtype=np.int64)
    for w in windows:
        for frame in range(-(-(w.audio_stop - w.audio_start) // FRAME_SAMPLES)):
            if w.owns(frame):
                owners[w.frame_offset + frame] += 1
    assert (owners == 1).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), sizes=st.lists(st.integers(1, 300_000), min_size=1),
       cuts=st.lists(st.integers(0, 60 * 16000), min_size=0, max_size=16))
def test_file_windows_over_spans_equal_the_planned_windows(
        seed: int, sizes: list[int], cuts: list[int]) -> None:
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(60 * 16000).astype(np.float32)
    edges = sorted(cuts)
    segments = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=False) if b > a]
    spans = plan_spans(segments, samples.shape[0])
    windows = FileWindows(random_blocks(samples, sizes), spans)
    got = list(windows)
    assert [w for w, _ in got] == plan_windows(samples, segments)
    # Reading stops once the last span is cut: the rest of the file is never decoded.
    assert (spans[-1][1] if spans else 0) <= windows.samples <= samples.shape[0]
    for w, part in got:
        assert np.array_equal(part, samples[w.audio_start : w.audio_stop])


def test_rechunk_gives_exact_chunks() -> None:
    blocks = [np.arange(n, dtype=np.float32) for n in (5, 17, 0, 3, 40)]
    chunks = list(rechunk(iter(blocks), 10))
    assert [c.shape[0] for c in chunks] == [10] * 6 + [5]
    assert np.array_equal(np.concatenate(chunks), np.concatenate(blocks))


@requires_soundfile
def test_streams_pass_the_whole_array_frame_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # D33: the 2^26-frame cap bounds whole-array decodes by the extras; block by block a
    # compressed recording may last as long as the duration cap allows (hours).
    from gigastt.engine.audio import AudioTooLongError, core, decode_audio

    assert sf is not None
    out = io.BytesIO()
    sf.write(out, (audio.speech_like(3, seed=8) * 32767).astype(np.int16), 16000,
             format="FLAC", subtype="PCM_16")
    monkeypatch.setattr(core, "MAX_DECODED_FRAMES", 20_000)
    with pytest.raises(AudioTooLongError, match="decoded audio exceeds 20000 frames"):
        decode_audio(out.getvalue())
    assert joined(model_blocks(open_audio(out.getvalue()))).shape == (48_000,)
    with pytest.raises(AudioTooLongError, match="the maximum is 2 s"):
        joined(open_audio(out.getvalue(), max_seconds=2).blocks())


def test_a_pipe_is_read_whole(tmp_path: Path) -> None:
    import os
    import threading

    data = audio.wav_bytes(audio.speech_like(3, seed=11), 16000)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        source = open_audio(fifo)
    finally:
        writer.join()
    assert np.array_equal(joined(model_blocks(source)), load_audio(data))
