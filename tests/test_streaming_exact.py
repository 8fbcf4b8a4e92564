"""Live recognition's contract (D26): exact finals, stable commits, endpointing and bounded cost.

The StreamingRecognizer is driven by hand with a real Recognizer on generated models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gigastt.engine.model import GigaamModel
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.streaming import (
    PARTIAL_STRIDE,
    PARTIAL_WINDOW,
    Pass,
    Segment,
    StreamingRecognizer,
)
from gigastt.testing.audio import silence, speech_like, tone_sequence

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]
RATE = 16000
FRAMES = {"20ms": 320, "100ms": 1600, "1s": 16000}


@pytest.fixture(scope="module")
def tone(tone_model: Path) -> Recognizer:
    return Recognizer(GigaamModel(tone_model))


@pytest.fixture(scope="module")
def small(small_model: Path) -> Recognizer:
    return Recognizer(GigaamModel(small_model))


def stream(recognizer: Recognizer, audio: np.ndarray, chunk: int, *, lag: int = 0,
           **settings: Any) -> tuple[list[Segment], StreamingRecognizer]:
    """Feed ``audio`` in chunks like a session; a pass finishes ``lag`` chunks after it starts."""
    s = StreamingRecognizer(recognizer.model.vocab, **settings)
    out: list[Segment] = []
    pending: list[tuple[int, Pass]] = []

    def recognise(job: Pass) -> None:
        out.extend(s.on_result(job, recognizer.tokens(job.samples)))

    for n, start in enumerate(range(0, len(audio), chunk)):
        s.feed(audio[start : start + chunk])
        while pending and pending[0][0] <= n:
            recognise(pending.pop(0)[1])
            if (job := s.next_pass()) is not None:
                pending.append((n + lag, job))
        if not pending and (job := s.next_pass()) is not None:
            pending.append((n + lag, job))
    for _, job in pending:
        recognise(job)
    while (job := s.next_pass()) is not None:
        recognise(job)
    s.finish()
    while (job := s.next_pass()) is not None:
        assert job.final
        recognise(job)
    return out, s


def finals(segments: list[Segment]) -> list[Segment]:
    return [s for s in segments if s.kind == "final"]


def text(words: Any) -> str:
    return " ".join(w.word for w in words)


def assert_finals_are_exact(recognizer: Recognizer, audio: np.ndarray,
                            segments: list[Segment]) -> None:
    """Each final is the file transcript of exactly its audio, timed from the stream start."""
    last_end = 0
    for final in finals(segments):
        assert final.span is not None
        start, end = final.span
        assert start % 640 == 0 and last_end <= start < end <= len(audio)
        assert end - start <= 20 * RATE
        last_end = end
        expected = recognizer.transcribe(audio[start:end])
        assert text(final.words) == text(expected.words)
        for got, want in zip(final.words, expected.words, strict=True):
            assert got.start == pytest.approx(want.start + start / RATE, abs=1e-9)
            assert got.end == pytest.approx(want.end + start / RATE, abs=1e-9)
        assert final.committed == len(final.words)


def assert_commits_are_stable(segments: list[Segment]) -> None:
    """Within an utterance committed words only grow and the final never contradicts them."""
    committed: tuple[str, ...] = ()
    for segment in segments:
        words = tuple(w.word for w in segment.words)
        assert words[: len(committed)] == committed, (committed, words)
        if segment.kind == "final":
            committed = ()
        else:
            assert segment.committed >= len(committed)
            committed = words[: segment.committed]


def tone_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Tone phrases joined by pauses of 0.1-1.5 s, ``seconds`` long in all."""
    rng = np.random.default_rng(seed)
    phrases = [HELLO, HOW, HELLO + HOW]
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * RATE:
        phrase = phrases[int(rng.integers(len(phrases)))]
        parts.append(tone_sequence(phrase, gap_s=float(rng.uniform(0.0, 0.3)), lead_s=0.0,
                                   tail_s=0.0))
        parts.append(silence(float(rng.uniform(0.1, 1.5))))
        total += len(parts[-2]) + len(parts[-1])
    return np.concatenate(parts)


def speech_clips(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = [silence(0.3)]
    total = 0
    i = 0
    while total < seconds * RATE:
        parts.append(speech_like(float(rng.uniform(1.0, 4.0)), seed=seed * 100 + i))
        parts.append(silence(float(rng.uniform(0.2, 1.2))))
        total += len(parts[-2]) + len(parts[-1])
        i += 1
    return np.concatenate(parts)


@pytest.mark.parametrize("frame", FRAMES.values(), ids=FRAMES.keys())
def test_tone_finals_equal_the_file_transcript_of_their_audio(tone: Recognizer,
                                                               frame: int) -> None:
    audio = tone_speech(40.0)
    segments, _ = stream(tone, audio, frame)
    assert len(finals(segments)) >= 5
    assert_finals_are_exact(tone, audio, segments)
    # The tone model does not depend on context, so no word is lost between utterances either
    # (the file transcript's own 20 s windows may split a word: compare without spaces).
    streamed = text(w for f in finals(segments) for w in f.words)
    assert streamed.replace(" ", "") == tone.transcribe(audio).text.replace(" ", "")
    assert_commits_are_stable(segments)


@pytest.mark.parametrize("frame", FRAMES.values(), ids=FRAMES.keys())
def test_context_dependent_finals_equal_the_file_transcript_of_their_audio(
        small: Recognizer, frame: int) -> None:
    # The small model judges loudness relative to the whole input (per-clip normalisation), so a
    # window and the whole utterance recognise differently: only a pass over exactly the
    # utterance's audio gives its file transcript.
    audio = speech_clips(25.0)
    segments, _ = stream(small, audio, frame)
    assert finals(segments) and any(f.words for f in finals(segments))
    assert_finals_are_exact(small, audio, segments)


@pytest.mark.parametrize("lag", [0, 2])
def test_commits_only_grow_on_a_long_stream(tone: Recognizer, lag: int) -> None:
    audio = tone_speech(60.0, seed=1)
    segments, _ = stream(tone, audio, 1600, lag=lag)
    partials = [s for s in segments if s.kind == "partial"]
    assert partials and any(p.committed for p in partials)
    assert_commits_are_stable(segments)
    assert_finals_are_exact(tone, audio, segments)


def test_dictation_is_capped_exactly_and_commits_hold(tone: Recognizer) -> None:
    # 65 s without a pause long enough for an endpoint: the 20 s cap ends the utterances.
    audio = tone_sequence((HELLO + HOW) * 18, tone_s=0.2, gap_s=0.2, lead_s=0.3)
    segments, _ = stream(tone, audio, 1600)
    reasons = [f.reason for f in finals(segments)]
    assert reasons.count("cap") >= 2 and reasons[-1] == "stop"
    assert_finals_are_exact(tone, audio, segments)
    assert_commits_are_stable(segments)


def test_manual_endpointing_gives_no_final_before_stop(tone: Recognizer) -> None:
    audio = np.concatenate([tone_sequence(HELLO), silence(2.0), tone_sequence(HOW)])
    segments, _ = stream(tone, audio, 1600, endpoint_mode="manual")
    assert [s.kind for s in segments].count("final") == 1
    assert segments[-1].kind == "final" and segments[-1].reason == "stop"
    assert text(segments[-1].words) == "Привет, мир. как дела?"
    assert any(s.kind == "partial" for s in segments)


def test_assistant_endpointing_without_a_vad_is_manual(tone: Recognizer) -> None:
    audio = np.concatenate([tone_sequence(HELLO), silence(2.0), tone_sequence(HOW)])
    segments, _ = stream(tone, audio, 1600, endpoint_mode="assistant")
    assert [(s.kind, s.reason) for s in finals(segments)] == [("final", "stop")]


@pytest.mark.parametrize(("silence_ms", "expected"), [(300, 2), (2000, 1)])
def test_min_silence_decides_the_endpoint(tone: Recognizer, silence_ms: int,
                                          expected: int) -> None:
    audio = np.concatenate([tone_sequence(HELLO, tail_s=0.0), silence(0.8),
                            tone_sequence(HOW, lead_s=0.0), silence(0.4)])
    s_segments, _ = stream(tone, audio, 1600, min_silence_ms=silence_ms)
    worded = [f for f in finals(s_segments) if f.words]
    assert len(worded) == expected
    assert text(w for f in worded for w in f.words) == "Привет, мир. как дела?"
    assert_finals_are_exact(tone, audio, s_segments)


def test_configure_before_audio_applies(tone: Recognizer) -> None:
    audio = np.concatenate([tone_sequence(HELLO), silence(2.0), tone_sequence(HOW)])
    s = StreamingRecognizer(tone.model.vocab)
    s.configure(endpoint_mode="manual")
    s.feed(audio)
    while (job := s.next_pass()) is not None:
        assert not [x for x in s.on_result(job, tone.tokens(job.samples)) if x.kind == "final"]
    with pytest.raises(ValueError):
        s.configure(endpoint_mode="sometimes")
    with pytest.raises(ValueError):
        s.configure(commit_policy="eager")


def test_blank_endpoints_give_blank_finals_and_stop_passes_truncated(tone: Recognizer) -> None:
    audio = np.concatenate([tone_sequence(HELLO), silence(1.5), tone_sequence(HOW, tail_s=0.0)])
    s = StreamingRecognizer(tone.model.vocab)
    out: list[Segment] = []
    s.feed(audio)
    while (job := s.next_pass()) is not None:
        out += s.on_result(job, tone.tokens(job.samples))
    s.finish("stop", truncated=True)
    while (job := s.next_pass()) is not None:
        out += s.on_result(job, tone.tokens(job.samples))
    assert [(f.reason, f.truncated, text(f.words)) for f in finals(out)] == [
        ("blank", False, "Привет, мир."), ("stop", True, "как дела?")]


def test_on_finalize_commits_nothing(tone: Recognizer) -> None:
    audio = tone_speech(20.0)
    segments, _ = stream(tone, audio, 1600, commit_policy="on_finalize")
    partials = [s for s in segments if s.kind == "partial"]
    assert partials and all(p.committed == 0 for p in partials)
    assert all(f.committed == len(f.words) for f in finals(segments))


def test_a_final_pass_goes_before_a_partial_pass(tone: Recognizer) -> None:
    s = StreamingRecognizer(tone.model.vocab)
    s.feed(np.concatenate([tone_sequence(HELLO), silence(1.0)]))
    finals_seen = 0
    while (job := s.next_pass()) is not None:
        if not job.final:
            s.feed(silence(PARTIAL_STRIDE))  # a partial is always due when the final is asked
        finals_seen += job.final
        s.on_result(job, tone.tokens(job.samples))
        if finals_seen:
            break
    assert finals_seen == 1


def test_encoder_work_per_second_is_bounded_whatever_the_utterance_length(
        tone: Recognizer) -> None:
    # Dictation: one long utterance after another (manual endpointing: only the cap ends one).
    # Each second of live audio is encoded by about WINDOW / STRIDE partial passes plus once by
    # its final pass; re-recognising the whole utterance would cost ~10x at 20 s.
    audio = tone_sequence((HELLO + HOW) * 18, tone_s=0.2, gap_s=0.2, lead_s=0.3)
    _, s = stream(tone, audio, 1600, endpoint_mode="manual")
    assert s.audio_samples == len(audio)
    factor = s.encoded_samples / s.audio_samples
    assert factor <= PARTIAL_WINDOW / PARTIAL_STRIDE + 1.3


def test_a_fast_client_loses_nothing(tone: Recognizer) -> None:
    audio = tone_speech(60.0, seed=2)
    segments, s = stream(tone, audio, len(audio))
    assert_finals_are_exact(tone, audio, segments)
    # (the file transcript's own 20 s windows may split a word: compare without spaces)
    streamed = text(w for f in finals(segments) for w in f.words)
    assert streamed.replace(" ", "") == tone.transcribe(audio).text.replace(" ", "")
    assert s.encoded_samples / s.audio_samples < 2.5


def test_an_endpoint_is_looked_for_as_soon_as_the_pause_is_long_enough(tone: Recognizer) -> None:
    # Not only at the next stride: the final pass is asked for within a frame or two of the
    # moment the pause after the last word reaches min_silence_ms (600 ms).
    audio = np.concatenate([tone_sequence(HELLO, tail_s=0.0), silence(2.0)])
    s = StreamingRecognizer(tone.model.vocab)
    asked_at = None
    final: list[Segment] = []
    for i in range(0, len(audio), 320):
        s.feed(audio[i : i + 320])
        while (job := s.next_pass()) is not None:
            if job.final and asked_at is None:
                asked_at = (i + 320) / RATE
            segments = s.on_result(job, tone.tokens(job.samples))
            final += [x for x in segments if x.kind == "final"]
    assert asked_at is not None and text(final[0].words) == "Привет, мир."
    assert asked_at <= final[0].words[-1].end + 0.6 + 0.1


def test_the_cap_cuts_as_soon_as_the_utterance_reaches_it(tone: Recognizer) -> None:
    # The cap's final pass is asked for within a 20 ms chunk of the utterance reaching 20 s, not
    # at the next stride (up to 0.8 s later); the final stays exact.
    # (the lead silence puts the utterance's start off the stride grid)
    audio = tone_sequence((HELLO + HOW) * 8, tone_s=0.2, gap_s=0.2, lead_s=2.0)
    s = StreamingRecognizer(tone.model.vocab, endpoint_mode="manual")
    asked_at = None
    segments: list[Segment] = []
    for i in range(0, len(audio), 320):
        s.feed(audio[i : i + 320])
        while (job := s.next_pass()) is not None:
            if job.final and asked_at is None:
                asked_at = i + 320
            segments += s.on_result(job, tone.tokens(job.samples))
    cap = finals(segments)[0]
    assert cap.reason == "cap" and cap.span is not None
    assert asked_at is not None and 0 <= asked_at - (cap.span[0] + 20 * RATE) <= 320
    assert_finals_are_exact(tone, audio, segments)


def test_without_blank_endpoints_finish_needs_no_partial_pass(tone: Recognizer) -> None:
    # A session whose endpoints come from no partial pass (manual, assistant without a VAD) ends
    # with its final passes at once; under auto the passes still due run first.
    audio = np.concatenate([tone_sequence(HELLO), silence(0.5), tone_sequence(HOW)])
    for mode, expected in (("manual", False), ("assistant", False), ("auto", True)):
        s = StreamingRecognizer(tone.model.vocab, endpoint_mode=mode)
        assert s.endpoints_from_passes is expected
    s = StreamingRecognizer(tone.model.vocab, endpoint_mode="manual")
    s.feed(audio)  # a partial pass is due, never run
    assert s.next_pass(partials=False) is None
    s.finish()
    jobs = []
    while (job := s.next_pass()) is not None:
        jobs.append(job)
    assert [j.final for j in jobs] == [True]
    assert text(s.on_result(jobs[0], tone.tokens(jobs[0].samples))[0].words) == \
        "Привет, мир. как дела?"
