"""Live capacity (D27): how many real-time WebSocket sessions this machine's cores carry.

Measured at start-up for ``--pool-size auto``: the encoder's speed on synthetic audio, times the
re-encode factor of the streaming design (docs/runbook.md "Threads, priorities and capacity").
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from gigastt.engine.audio import MODEL_RATE
from gigastt.engine.recognizer import FRAME_SAMPLES, Recognizer
from gigastt.engine.streaming import StreamingRecognizer
from gigastt.engine.tokenizer import Token, Vocabulary

# The worst case is dictation: speech without a pause until the utterance cap, so no endpoint
# ends an utterance early. Two caps' worth shows the design's steady state.
SIMULATED_SECONDS = 40.0
FEED_SECONDS = 0.1
# Wall time spent timing the encoder (after one untimed warm-up run), and the fewest timed runs
# of each length.
MEASURE_BUDGET_SECONDS = 3.0
MIN_RUNS = 1
# The share of the cores that live passes may take: the rest is for the event loop, uploads and
# bursts (a session is admitted for its whole life, at its worst-case cost).
LIVE_UTILISATION = 0.8
_TOKEN_EVERY_FRAMES = 2
MAX_TIMED_LENGTHS = 3
MAX_TIMED_SECONDS = 4.0


@dataclass(frozen=True, slots=True)
class Capacity:
    """The calibration's figures; ``sessions`` is the pool size that ``auto`` uses."""

    sessions: int
    live_cost: float  # wall seconds of the inference lane per second of live audio
    reencode_factor: float  # seconds of audio encoded per second of live audio
    encode_cost: float  # wall seconds per second of audio encoded (live_cost / reencode_factor)


def simulated_passes(vocab: Vocabulary, seconds: float = SIMULATED_SECONDS) -> list[int]:
    """The pass lengths (samples) of ``seconds`` of dictation at the design's default cadence.

    The session state machine is driven with tokens that fill every pass (a word every few
    frames, never a pause), so only the streaming design decides how much it encodes.
    """
    stream = StreamingRecognizer(vocab)
    # A word piece; the plain heads' letter vocabulary has none, any letter does (D29).
    word = next((i for i, piece in enumerate(vocab.pieces) if piece.startswith("\u2581") and
                 len(piece) > 1), vocab.blank - 1 if vocab.blank else 1)
    chunk = np.zeros(int(FEED_SECONDS * MODEL_RATE), np.float32)
    lengths: list[int] = []
    for _ in range(round(seconds / FEED_SECONDS)):
        stream.feed(chunk)
        while (job := stream.next_pass()) is not None:
            lengths.append(job.samples.shape[0])
            frames = lengths[-1] // FRAME_SAMPLES
            stream.on_result(job, [Token(word, f, 0.0)
                                   for f in range(0, frames, _TOKEN_EVERY_FRAMES)])
    return lengths


def pass_seconds(recognizer: Recognizer, lengths: list[int],
                 budget: float = MEASURE_BUDGET_SECONDS) -> float:
    """Wall seconds that recognising passes of these lengths takes, timed on synthetic audio.

    The lengths that carry the most audio are timed (up to ``MAX_TIMED_LENGTHS``, shortest first,
    each at most ``MAX_TIMED_SECONDS`` long, repeated while the budget lasts); every pass then
    costs as much per second as the nearest timed length. Timing long passes by a shorter piece
    keeps the calibration within a few seconds on slow machines (a 20 s pass of the full model
    takes seconds in FP32); the cost per second is about flat from 4 s to 20 s on the full-size
    model (fixed per-pass work makes short passes dearer per second, attention long ones).
    """
    groups = Counter(lengths)
    cap = int(MAX_TIMED_SECONDS * MODEL_RATE)
    heaviest = sorted(groups, key=lambda n: n * groups[n])[-MAX_TIMED_LENGTHS:]
    timed = sorted({min(n, cap) for n in heaviest})
    noise = (0.05 * np.random.default_rng(0).standard_normal(timed[-1])).astype(np.float32)
    recognizer.tokens(noise[: timed[0]])  # warm-up: the first run allocates buffers
    per_second: dict[int, float] = {}
    spent_all = 0.0
    for n in timed:
        runs, spent = 0, 0.0
        while runs < MIN_RUNS or spent < budget / len(timed) / 2:
            started = time.perf_counter()
            recognizer.tokens(noise[:n])
            spent += time.perf_counter() - started
            runs += 1
        per_second[n] = spent / runs / n
        spent_all += spent
        if spent_all >= budget:
            break  # a slow machine: the remaining lengths cost like the nearest timed one
    measured = sorted(per_second)
    return sum(count * n * per_second[min(measured, key=lambda t: abs(t - min(n, cap)))]
               for n, count in groups.items())


def live_capacity(live_cost: float, utilisation: float = LIVE_UTILISATION) -> int:
    """Sessions carried in real time: ``floor(utilisation / live_cost)``, at least 1.

    ``live_cost`` (wall seconds of the all-core inference lane per second of live audio) is the
    encoder's cost per second of audio times the re-encode factor.
    """
    if live_cost <= 0:
        return 1
    return max(1, math.floor(utilisation / live_cost))


def calibrate(recognizer: Recognizer, seconds: float = SIMULATED_SECONDS) -> Capacity:
    """Run on the live inference lane (never the event loop): a few seconds at most."""
    lengths = simulated_passes(recognizer.model.vocab, seconds)
    if not lengths:
        return Capacity(1, 0.0, 0.0, 0.0)
    encoded = sum(lengths) / MODEL_RATE
    live_cost = pass_seconds(recognizer, lengths) / seconds
    factor = encoded / seconds
    return Capacity(live_capacity(live_cost), live_cost, factor, live_cost / factor)
