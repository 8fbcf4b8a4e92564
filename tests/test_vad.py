"""Silero VAD (gigastt/engine/vad.py) against onnx-asr's SileroVad, the reference (D28):
per-chunk probabilities, segments, streaming in odd pieces, batching, the segmenter's hysteresis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from gigastt.engine.vad import (
    HOP,
    SileroVad,
    SpeechEnd,
    SpeechSegmenter,
    SpeechStart,
    VadError,
    VadParams,
    VadStream,
    file_probabilities,
    run_streams,
    speech_segments,
)
from tests.conftest import SHARED, golos_clips, read_pcm16

VAD_PATH = SHARED / "fixtures" / "vad" / "silero_vad.onnx"
requires_vad = pytest.mark.skipif(not VAD_PATH.is_file() or not golos_clips(),
                                  reason="shared/fixtures/vad or golos not present")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    if not VAD_PATH.is_file():
        pytest.skip("shared/fixtures/vad/silero_vad.onnx not present")
    return SileroVad(VAD_PATH)


@pytest.fixture(scope="module")
def reference() -> Any:
    from onnx_asr.models.silero import SileroVad as RefVad

    if not VAD_PATH.is_file():
        pytest.skip("shared/fixtures/vad/silero_vad.onnx not present")
    return RefVad({"model": VAD_PATH}, {})


def ref_probs(reference: Any, samples: np.ndarray, rate: int) -> np.ndarray:
    hop = HOP[rate]
    encoded = reference._encode(samples[None], rate, hop, hop // 8)
    return np.array([p[0] for p in encoded], dtype=np.float32)


def ref_segments(reference: Any, samples: np.ndarray, rate: int,
                 **params: Any) -> list[tuple[int, int]]:
    (segments,) = reference.segment_batch(samples[None], np.array([len(samples)]), rate, **params)
    return [(int(a), int(b)) for a, b in segments]


def mix_60s() -> np.ndarray:
    """60 s: Golos clips separated by silences of 0.3-5 s (a fixed pattern), then silence."""
    rng = np.random.default_rng(7)
    parts: list[np.ndarray] = []
    total = 0
    clips = golos_clips()
    i = 0
    while total < 55 * 16_000:
        gap = np.zeros(int(rng.uniform(0.3, 5.0) * 16_000), np.float32)
        gap += rng.normal(0, 1e-3, gap.shape).astype(np.float32)  # a faint noise floor
        clip = read_pcm16(clips[i % len(clips)])
        parts += [gap, clip]
        total += len(gap) + len(clip)
        i += 1
    out = np.concatenate(parts)[: 60 * 16_000]
    return np.pad(out, (0, 60 * 16_000 - len(out)))


def recordings() -> Iterator[tuple[str, np.ndarray]]:
    for path in golos_clips():
        yield path.name, read_pcm16(path)
    yield "mix60", mix_60s()


# --- probabilities ------------------------------------------------------------------------------


@requires_vad
@pytest.mark.parametrize("rate", [16_000, 8_000])
def test_probabilities_equal_onnx_asr(vad: SileroVad, reference: Any, rate: int) -> None:
    """Every Golos clip and the 60 s mix: our per-chunk probabilities are onnx-asr's."""
    worst = 0.0
    for name, samples in recordings():
        audio = samples if rate == 16_000 else np.ascontiguousarray(samples[::2])
        ours = file_probabilities(vad, audio, rate)
        theirs = ref_probs(reference, audio, rate)
        assert ours.shape == theirs.shape, name
        worst = max(worst, float(np.abs(ours - theirs).max()))
    print(f"max abs difference at {rate} Hz: {worst:.3g}")
    assert worst <= TOLERANCE


@requires_vad
def test_streaming_in_odd_pieces_equals_one_shot(vad: SileroVad) -> None:
    samples = mix_60s()[: 20 * 16_000 + 123]
    whole = file_probabilities(vad, samples)
    stream = VadStream()
    pieces: list[np.ndarray] = []
    rng = np.random.default_rng(1)
    at = 0
    while at < len(samples):
        size = int(rng.choice([1, 7, 63, 511, 513, 1000, 4097]))
        pieces.append(stream.feed(vad, samples[at: at + size]))
        at += size
    pieces.append(stream.finish(vad))
    assert stream.leftover == 0 and stream.samples == len(samples)
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


@requires_vad
def test_batched_sessions_equal_single_sessions(vad: SileroVad) -> None:
    """Three sessions (one at 8 kHz) stepped together equal each stepped alone."""
    audio = mix_60s()
    inputs = [(audio[:50_000], 16_000), (audio[100_000:130_000], 16_000),
              (np.ascontiguousarray(audio[200_000:260_000:2]), 8_000)]
    streams = [VadStream(rate) for _, rate in inputs]
    together = [np.zeros(0, np.float32) for _ in inputs]
    for at in range(0, 50_000, 3_000):  # fed in rounds, as a live lane would
        frames = [s.frames(a[at: at + 3_000]) for s, (a, _) in zip(streams, inputs, strict=True)]
        for j, probs in enumerate(run_streams(vad, streams, frames)):
            together[j] = np.concatenate([together[j], probs])
    for j, (a, rate) in enumerate(inputs):
        alone = VadStream(rate).feed(vad, a[:50_000])
        np.testing.assert_allclose(together[j], alone, atol=TOLERANCE, rtol=0)


# --- segments -----------------------------------------------------------------------------------

PARAMS = [
    {},
    {"threshold": 0.6, "neg_threshold": 0.2, "min_silence_duration_ms": 300,
     "speech_pad_ms": 100, "min_speech_duration_ms": 100},
    {"max_speech_duration_s": 1.5, "min_silence_duration_ms": 500},  # cuts long speech
    {"threshold": 0.3, "min_silence_duration_ms": 2000, "max_speech_duration_s": 8},
]


@requires_vad
@pytest.mark.parametrize("params", PARAMS)
def test_segments_equal_onnx_asr(vad: SileroVad, reference: Any, params: dict[str, Any]) -> None:
    for name, samples in recordings():
        ours = speech_segments(file_probabilities(vad, samples), len(samples),
                               VadParams(**params))
        assert ours == ref_segments(reference, samples, 16_000, **params), name


@requires_vad
def test_segments_equal_onnx_asr_8k(vad: SileroVad, reference: Any) -> None:
    samples = np.ascontiguousarray(mix_60s()[::2])
    ours = speech_segments(file_probabilities(vad, samples, 8_000), len(samples),
                           sample_rate=8_000)
    assert ours and ours == ref_segments(reference, samples, 8_000)


def _ref_merge(probs: list[float], total: int, **params: Any) -> list[tuple[int, int]]:
    """onnx-asr's segmentation of given probabilities (its own functions, no model)."""
    from onnx_asr.models.silero import SileroVad as RefVad

    ref = RefVad.__new__(RefVad)
    raw = ref._find_segments((np.float32(p) for p in probs), 512, **params)
    return [(int(a), int(b)) for a, b in ref._merge_segments(raw, total, 16_000, **params)]


@given(
    probs=st.lists(st.sampled_from([0.0, 0.1, 0.34, 0.35, 0.4, 0.49, 0.5, 0.6, 0.9, 1.0]),
                   max_size=400),
    tail=st.integers(0, 511),
    params=st.fixed_dictionaries({}, optional={
        "threshold": st.sampled_from([0.5, 0.6]),
        "min_silence_duration_ms": st.sampled_from([0, 40, 100, 300]),
        "min_speech_duration_ms": st.sampled_from([0, 64, 250, 600]),
        "speech_pad_ms": st.sampled_from([0, 30, 100]),
        "max_speech_duration_s": st.sampled_from([0.5, 1.0, 3.0, 20.0]),
    }),
)
def test_segmenter_equals_onnx_asr_merge(probs: list[float], tail: int,
                                         params: dict[str, Any]) -> None:
    """On arbitrary probability sequences the incremental segmenter gives onnx-asr's segments,
    and every segment's start event comes before (or with) its end event."""
    total = max(0, len(probs) * 512 - tail) if probs else 0
    if probs and total <= (len(probs) - 1) * 512:
        total = (len(probs) - 1) * 512 + 1
    segmenter = SpeechSegmenter(VadParams(**params))
    events = segmenter.feed_many(probs) + segmenter.finish(total)
    ends = [(e.start, e.end) for e in events if isinstance(e, SpeechEnd)]
    assert ends == _ref_merge(probs, total, **params)
    open_start: int | None = None
    for event in events:
        if isinstance(event, SpeechStart):
            assert open_start is None
            open_start = event.start
        else:
            assert open_start == event.start
            open_start = None
    assert open_start is None


def test_hysteresis_between_thresholds() -> None:
    """0.4 (between neg 0.35 and 0.5) neither starts nor ends speech."""
    params = VadParams(min_speech_duration_ms=0, speech_pad_ms=0, min_silence_duration_ms=0,
                       max_speech_duration_s=None)
    probs = [0.4] * 5 + [0.5] + [0.4] * 10 + [0.34] + [0.4] * 5
    assert speech_segments(probs, len(probs) * 512, params) == [(5 * 512, 16 * 512)]


def test_short_blip_is_dropped_and_short_pause_merged() -> None:
    params = VadParams()  # 250 ms min speech, 100 ms min silence, 30 ms pad
    blip = [0.0] * 10 + [0.9] * 3 + [0.0] * 40  # 96 ms of speech
    assert speech_segments(blip, len(blip) * 512, params) == []
    two = [0.0] * 10 + [0.9] * 20 + [0.0] * 2 + [0.9] * 20 + [0.0] * 40  # 64 ms pause
    assert speech_segments(two, len(two) * 512, params) == [(10 * 512 - 480, 52 * 512 + 480)]
    apart = [0.0] * 10 + [0.9] * 20 + [0.0] * 20 + [0.9] * 20 + [0.0] * 40
    assert len(speech_segments(apart, len(apart) * 512, params)) == 2


def test_events_are_incremental() -> None:
    """Start once the speech is longer than min_speech; end once the silence is long enough,
    without waiting for the end of the audio (what the live path needs)."""
    params = VadParams(max_speech_duration_s=None)
    segmenter = SpeechSegmenter(params)
    seen: list[tuple[int, object]] = []
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * 50
    for i, p in enumerate(probs):
        seen += [(i, e) for e in segmenter.feed(p)]
    assert [type(e) for _, e in seen] == [SpeechStart, SpeechEnd]
    (i_start, start), (i_end, end) = seen
    assert isinstance(start, SpeechStart) and isinstance(end, SpeechEnd)
    assert start.start == 10 * 512 - 480 and end.end == 40 * 512 + 480
    assert 10 < i_start < 40 and 40 < i_end < 60  # decided early, not at the end
    assert start.chunk == i_start and end.chunk == i_end
    assert segmenter.finish(len(probs) * 512) == []


def test_8k_uses_256_sample_chunks() -> None:
    params = VadParams(min_speech_duration_ms=0, speech_pad_ms=0, min_silence_duration_ms=0)
    probs = [0.0, 0.9, 0.9, 0.0]
    assert speech_segments(probs, 4 * 256, params, sample_rate=8_000) == [(256, 768)]


@pytest.mark.parametrize("bad", [
    {"threshold": 0.0}, {"threshold": 1.5}, {"neg_threshold": 0.9}, {"speech_pad_ms": -1},
    {"min_silence_duration_ms": float("nan")}, {"max_speech_duration_s": 0},
])
def test_bad_params_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="VAD"):
        VadParams(**bad)


def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError, match="16000 or 8000"):
        VadStream(44_100)
    segmenter = SpeechSegmenter()
    segmenter.feed_many([0.0, 0.0])
    with pytest.raises(ValueError, match="do not make 2 chunks"):
        segmenter.finish(5000)


# --- the file's interface -----------------------------------------------------------------------


def _identity_model(path: Path, inputs: list[tuple[str, int]], outputs: list[str]) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", [inputs[0][0]], [name]) for name in outputs],
        "wrong",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_wrong_interface_is_refused_by_name(tmp_path: Path) -> None:
    path = _identity_model(tmp_path / "silero_vad.onnx",
                           [("x", TensorProto.FLOAT)], ["output", "stateN"])
    with pytest.raises(VadError, match=r"silero_vad\.onnx has the wrong interface"):
        SileroVad(path)
    typed = _identity_model(tmp_path / "typed.onnx",
                            [("input", TensorProto.FLOAT), ("state", TensorProto.FLOAT),
                             ("sr", TensorProto.FLOAT)], ["output", "stateN"])
    with pytest.raises(VadError, match=r"typed\.onnx has the wrong interface"):
        SileroVad(typed)


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    """The right names, but outputs that are not [B, 1] / the state's shape."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"]),
         helper.make_node("Identity", ["state"], ["stateN"])],
        "shapes",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("sr", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, None)])
    path = tmp_path / "shapes.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(VadError, match=r"shapes\.onnx gives output"):
        SileroVad(path)


def test_not_a_model_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(VadError, match=r"junk\.onnx cannot be loaded"):
        SileroVad(junk)
    with pytest.raises(VadError, match=r"absent\.onnx does not exist"):
        SileroVad(tmp_path / "absent.onnx")
