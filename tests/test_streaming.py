"""The streaming recognizer as a pure state machine, driven by hand with a real Recognizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gigastt.engine.model import GigaamModel
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.streaming import MAX_PARTIAL_STEP, Pass, Segment, StreamingRecognizer
from gigastt.testing.audio import silence, tone_sequence

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]


@pytest.fixture(scope="module")
def tone(tone_model: Path) -> Recognizer:
    return Recognizer(GigaamModel(tone_model))


def run(recognizer: Recognizer, audio: np.ndarray, chunk: int, *, rate: int = 16000,
        lag: int = 0, lengths: list[int] | None = None) -> list[Segment]:
    """Feed ``audio`` in chunks; a pass finishes ``lag`` chunks after it starts (executor delay).

    ``lengths`` collects the length of every pass, in samples.
    """
    s = StreamingRecognizer(recognizer.model.vocab, input_rate=rate)

    def recognise(job: Pass) -> list[Segment]:
        if lengths is not None:
            lengths.append(job.samples.shape[0])
        return s.on_result(job, recognizer.tokens(job.samples))

    out: list[Segment] = []
    pending: list[tuple[int, Pass]] = []
    for n, start in enumerate(range(0, len(audio), chunk)):
        s.feed(audio[start : start + chunk])
        while pending and pending[0][0] <= n:
            out += recognise(pending.pop(0)[1])
        if not pending and (job := s.next_pass()) is not None:
            pending.append((n + lag, job))
    for _, job in pending:
        out += recognise(job)
    while (job := s.next_pass()) is not None:
        out += recognise(job)
    s.finish()
    while (job := s.next_pass()) is not None:
        out += recognise(job)
    return out


def finals(segments: list[Segment]) -> list[str]:
    return [" ".join(w.word for w in s.words) for s in segments if s.kind == "final"]


@pytest.mark.parametrize("chunk", [320, 1600, 16000, 100_000])
@pytest.mark.parametrize("lag", [0, 3])
def test_endpoint_finals_do_not_depend_on_chunk_size(tone: Recognizer, chunk: int,
                                                     lag: int) -> None:
    audio = np.concatenate([tone_sequence(HELLO), silence(1.5), tone_sequence(HOW)])
    segments = run(tone, audio, chunk, lag=lag)
    assert finals(segments) == ["Привет, мир.", "как дела?"]
    words = [w for s in segments if s.kind == "final" for w in s.words]
    assert [w.start for w in words] == [0.32, 0.92, 3.4, 3.6]
    assert [w.start for w in words] == [w.start for w in tone.transcribe(audio).words]


def test_partials_carry_all_words_since_the_last_final(tone: Recognizer) -> None:
    segments = run(tone, np.concatenate([tone_sequence(HELLO), silence(1.0)]), 1600)
    partials = [s for s in segments if s.kind == "partial"]
    assert partials and all(p.words[0].word.startswith("При") for p in partials)
    assert finals(segments)[0] == "Привет, мир."


def test_silence_only_gives_no_partials_and_one_empty_final(tone: Recognizer) -> None:
    segments = run(tone, silence(30.0), 1600)
    assert [(s.kind, s.words, s.reason) for s in segments] == [("final", (), "stop")]


def test_long_silence_keeps_the_buffer_small(tone: Recognizer) -> None:
    s = StreamingRecognizer(tone.model.vocab)
    for _ in range(60):
        s.feed(silence(1.0))
        if (job := s.next_pass()) is not None:
            assert s.on_result(job, tone.tokens(job.samples)) == []
    assert s.buffered_seconds <= 2.0


def test_word_times_are_from_the_start_of_the_stream(tone: Recognizer) -> None:
    audio = np.concatenate([silence(7.0), tone_sequence(HELLO), silence(1.0)])
    segments = run(tone, audio, 4000)
    (first, *_) = [s for s in segments if s.kind == "final"]
    assert first.words[0].start == pytest.approx(7.32)


def test_resampled_input_gives_the_same_finals(tone: Recognizer) -> None:
    from gigastt.engine.audio import resample

    audio = np.concatenate([tone_sequence(HELLO), silence(1.0), tone_sequence(HOW)])
    audio48 = resample(audio, 16000, 48000)
    assert finals(run(tone, audio48, 4800, rate=48000)) == ["Привет, мир.", "как дела?"]


def test_utterance_cap_finalises_without_losing_the_tail(tone: Recognizer) -> None:
    # 25 s of tones with no pause long enough for an endpoint: the 20 s cap must cut.
    tokens = (HELLO + HOW) * 4
    audio = tone_sequence(tokens, tone_s=0.2, gap_s=0.5, lead_s=0.3)
    assert len(audio) > 20 * 16000
    segments = run(tone, audio, 8000)
    text = " ".join(finals(segments))
    whole = tone.transcribe(audio).text
    assert len([s for s in segments if s.kind == "final"]) >= 2
    assert text.replace(" ", "") == whole.replace(" ", "")


def test_a_backlog_is_caught_up_in_passes_of_bounded_length(tone: Recognizer) -> None:
    # A client far ahead of the server (or a saturated server) leaves a minute of audio waiting;
    # each pass still covers at most the cap plus one interval, and nothing is lost.
    audio = tone_sequence((HELLO + HOW) * 14, tone_s=0.2, gap_s=0.3, lead_s=0.3)
    assert len(audio) > 60 * 16000
    lengths: list[int] = []
    segments = run(tone, audio, len(audio), lengths=lengths)
    assert max(lengths) <= 20.5 * 16000
    assert len(lengths) >= 4
    text = " ".join(finals(segments))
    assert text.replace(" ", "") == tone.transcribe(audio).text.replace(" ", "")


def test_backlogged_while_a_whole_pass_waits_beyond_the_one_in_flight(tone: Recognizer) -> None:
    # The server stops taking a session's audio while this holds (back-pressure); the next pass
    # takes a whole catch-up step of new audio (plus the window's left context), which ends it.
    s = StreamingRecognizer(tone.model.vocab)
    s.feed(np.zeros(16000, np.float32))
    first = s.next_pass()
    assert first is not None and not s.backlogged
    s.feed(np.zeros(int(MAX_PARTIAL_STEP * 16000) - 1, np.float32))
    assert not s.backlogged
    s.feed(np.zeros(1, np.float32))
    assert s.backlogged
    assert s.on_result(first, []) == [] and s.backlogged
    second = s.next_pass()
    assert second is not None
    assert second.start + second.samples.shape[0] == (1 + MAX_PARTIAL_STEP) * 16000
    assert not s.backlogged
