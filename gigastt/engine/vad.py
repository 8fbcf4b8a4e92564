"""Voice activity detection: Silero VAD on onnxruntime, per-session streaming, speech segments.

The model runs 32 ms chunks (512 samples at 16 kHz, 256 at 8 kHz, each after the last 64/32
samples of the one before) exactly as onnx-asr's ``silero`` VAD does (docs/decisions.md D28).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gigastt.config import (
    VAD_MAX_SPEECH_SECONDS,
    VAD_MIN_SILENCE_MS,
    VAD_MIN_SPEECH_MS,
    VAD_NEG_THRESHOLD,
    VAD_SPEECH_PAD_MS,
    VAD_THRESHOLD,
)

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

VAD_FILE = "silero_vad.onnx"
# Samples per chunk and samples of context before it, per sample rate (the model's interface).
HOP = {16_000: 512, 8_000: 256}
CONTEXT = {16_000: 64, 8_000: 32}
STATE_SIZE = 128
# An end of segment "never" reached; the same sentinel as onnx-asr's merge.
_INF = 10**15

_INPUTS = {"input": "tensor(float)", "state": "tensor(float)", "sr": "tensor(int64)"}
_OUTPUTS = ("output", "stateN")


class VadError(RuntimeError):
    """The VAD file cannot be used; the message names the file and says why."""


def _check_rate(sample_rate: int) -> int:
    if sample_rate not in HOP:
        raise ValueError(f"VAD sample rate must be 16000 or 8000, not {sample_rate}")
    return sample_rate


class SileroVad:
    """One Silero VAD session: 1 intra-op thread, sequential (a chunk is ~0.1 ms of work; more
    threads only add hand-offs). Stateless between calls: callers hold the recurrent states."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.path = path
        if not path.is_file():
            raise VadError(f"VAD model {path} does not exist or is not a file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own classes for a bad graph
            raise VadError(f"VAD model {path} cannot be loaded: {type(exc).__name__}") from exc
        self._check_interface()

    def _check_interface(self) -> None:
        inputs = {i.name: i.type for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != _INPUTS or sorted(outputs) != sorted(_OUTPUTS):
            raise VadError(
                f"VAD model {self.path} has the wrong interface: inputs"
                f" {sorted(inputs)} and outputs {sorted(outputs)}, expected inputs input (f32),"
                " state (f32), sr (i64) and outputs output, stateN (docs/decisions.md D28)")
        # One silent chunk at each rate: the shapes must be those of D28.
        for rate in HOP:
            try:
                probs, _ = self.run(np.zeros((1, CONTEXT[rate] + HOP[rate]), np.float32),
                                        self.initial_state(1), rate)
            except VadError:
                raise
            except Exception as exc:
                raise VadError(f"VAD model {self.path} fails on a {rate} Hz chunk:"
                               f" {type(exc).__name__}") from exc
            if probs.shape != (1,):
                raise VadError(f"VAD model {self.path} gives output of the wrong shape")

    @staticmethod
    def initial_state(batch: int) -> F32:
        return np.zeros((2, batch, STATE_SIZE), dtype=np.float32)

    def run(self, chunks: F32, state: F32, sample_rate: int) -> tuple[F32, F32]:
        """Speech probabilities ``[B]`` of ``B`` sessions' chunks ``[B, context + hop]`` and
        their next states, from their states ``[2, B, 128]``."""
        output, new_state = self._session.run(
            list(_OUTPUTS),
            {"input": np.ascontiguousarray(chunks, dtype=np.float32),
             "state": np.ascontiguousarray(state, dtype=np.float32),
             "sr": np.array([sample_rate], dtype=np.int64)})
        output = np.asarray(output, dtype=np.float32)
        new_state = np.asarray(new_state, dtype=np.float32)
        if output.shape != (chunks.shape[0], 1) or new_state.shape != state.shape:
            raise VadError(f"VAD model {self.path} gives outputs of the wrong shape")
        return output[:, 0], new_state


class VadStream:
    """One session's audio cut into VAD chunks; keeps the leftover samples, the context and the
    recurrent state. ``frames`` + ``run_streams`` let a lane batch many sessions in one call."""

    def __init__(self, sample_rate: int = 16_000) -> None:
        self.sample_rate = _check_rate(sample_rate)
        self.hop = HOP[sample_rate]
        self.context_size = CONTEXT[sample_rate]
        self._context = np.zeros(self.context_size, dtype=np.float32)
        self._leftover = np.zeros(0, dtype=np.float32)
        self.state = SileroVad.initial_state(1)
        self.chunks = 0  # chunks handed out by frames()/flush_frames()
        self.samples = 0  # samples fed

    @property
    def leftover(self) -> int:
        return int(self._leftover.shape[0])

    def frames(self, samples: F32) -> F32:
        """The model inputs ``[n, context + hop]`` of the whole chunks that ``samples`` complete."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples += samples.shape[0]
        buffer = np.concatenate([self._leftover, samples]) if self._leftover.size else samples
        n = buffer.shape[0] // self.hop
        self._leftover = buffer[n * self.hop:].copy()
        if n == 0:
            return np.zeros((0, self.context_size + self.hop), dtype=np.float32)
        full = np.concatenate([self._context, buffer[: n * self.hop]])
        windows = np.lib.stride_tricks.sliding_window_view(full, self.context_size + self.hop)
        out = np.ascontiguousarray(windows[:: self.hop][:n])
        self._context = full[-self.context_size:].copy()
        self.chunks += n
        return out

    def flush_frames(self) -> F32:
        """The last partial chunk, zero-padded (as onnx-asr pads a file's end); none if empty."""
        if self._leftover.size == 0:
            return np.zeros((0, self.context_size + self.hop), dtype=np.float32)
        frame = np.zeros(self.context_size + self.hop, dtype=np.float32)
        frame[: self.context_size] = self._context
        frame[self.context_size: self.context_size + self._leftover.size] = self._leftover
        self._leftover = np.zeros(0, dtype=np.float32)
        self.chunks += 1
        return frame[None]

    def feed(self, vad: SileroVad, samples: F32) -> F32:
        """Probabilities of the chunks ``samples`` complete (any length; the rest is kept)."""
        return run_streams(vad, [self], [self.frames(samples)])[0]

    def finish(self, vad: SileroVad) -> F32:
        """Probability of the zero-padded last partial chunk (empty when there is none)."""
        return run_streams(vad, [self], [self.flush_frames()])[0]


def run_streams(vad: SileroVad, streams: Sequence[VadStream],
                frames: Sequence[F32]) -> list[F32]:
    """Run each stream's ``frames`` in order, all streams of one sample rate batched per step
    (one model call per step instead of one per session); updates each stream's state."""
    out = [np.zeros(len(f), dtype=np.float32) for f in frames]
    steps = max((len(f) for f in frames), default=0)
    for rate in {s.sample_rate for s in streams}:
        members = [j for j, s in enumerate(streams) if s.sample_rate == rate]
        for k in range(steps):
            active = [j for j in members if len(frames[j]) > k]
            if not active:
                break
            chunks = np.stack([frames[j][k] for j in active])
            state = np.concatenate([streams[j].state for j in active], axis=1)
            probs, new_state = vad.run(chunks, state, rate)
            for n, j in enumerate(active):
                out[j][k] = probs[n]
                streams[j].state = new_state[:, n: n + 1].copy()
    return out


# A whole file is fed in blocks, so that its model inputs (576 floats per 512 samples) never
# exist for all of a long recording at once (docs/decisions.md D30).
FILE_BLOCK_SAMPLES = 30 * 16_000


def file_probabilities(vad: SileroVad, samples: F32, sample_rate: int = 16_000) -> F32:
    """Per-chunk probabilities of a whole recording (the last partial chunk zero-padded)."""
    stream = VadStream(sample_rate)
    parts = [stream.feed(vad, samples[at: at + FILE_BLOCK_SAMPLES])
             for at in range(0, samples.shape[0], FILE_BLOCK_SAMPLES)]
    return np.concatenate([*parts, stream.finish(vad)])


# --- segmentation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VadParams:
    """Hysteresis and duration parameters (onnx-asr's names and defaults, docs/decisions.md D28).

    ``neg_threshold`` None = ``threshold - 0.15``; ``max_speech_duration_s`` None = unbounded.
    """

    threshold: float = VAD_THRESHOLD
    neg_threshold: float | None = VAD_NEG_THRESHOLD
    min_speech_duration_ms: float = VAD_MIN_SPEECH_MS
    max_speech_duration_s: float | None = VAD_MAX_SPEECH_SECONDS
    min_silence_duration_ms: float = VAD_MIN_SILENCE_MS
    speech_pad_ms: float = VAD_SPEECH_PAD_MS

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("VAD threshold must be in (0, 1]")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError("VAD neg_threshold must be in [0, threshold]")
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"VAD {name} must be >= 0")
        if self.max_speech_duration_s is not None and not self.max_speech_duration_s > 0:
            raise ValueError("VAD max_speech_duration_s must be > 0")


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """A speech segment will be reported: it starts at sample ``start`` (padding included).
    ``chunk`` is the index of the chunk whose probability decided it."""

    chunk: int
    start: int


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The segment ``[start, end)`` (samples, padding included) is over; decided at ``chunk``."""

    chunk: int
    start: int
    end: int


VadEvent = SpeechStart | SpeechEnd


class SpeechSegmenter:
    """Per-chunk probabilities in, speech start/end events out: sans-I/O, no clock.

    Hysteresis: speech begins at a chunk >= ``threshold``, ends at the next chunk <
    ``neg_threshold``; segments closer than ``min_silence`` merge (up to ``max_speech``), those no
    longer than ``min_speech`` are dropped, each is padded by ``speech_pad``, longer speech is cut
    every ``max_speech``. The segments equal onnx-asr's ``SileroVad`` segmentation; each event
    comes as soon as later chunks can no longer change it (a segment's end after ``min_silence``
    of non-speech, its start once it is longer than ``min_speech``).
    """

    def __init__(self, params: VadParams | None = None, sample_rate: int = 16_000) -> None:
        params = params or VadParams()
        rate = _check_rate(sample_rate)
        self.hop = HOP[rate]
        # The same integer arithmetic as onnx-asr's BaseVad._merge_segments.
        self.threshold = params.threshold
        self.neg_threshold = (params.threshold - 0.15 if params.neg_threshold is None
                              else params.neg_threshold)
        self.pad = int(params.speech_pad_ms * rate // 1000)
        self.min_speech = int(params.min_speech_duration_ms * rate // 1000) - 2 * self.pad
        self.max_speech = (_INF if params.max_speech_duration_s is None
                           else int(params.max_speech_duration_s * rate) - 2 * self.pad)
        self.min_silence = int(params.min_silence_duration_ms * rate // 1000) + 2 * self.pad
        # A closed segment is reported once its padded end lies before every possible file end.
        self._close_after = max(self.min_silence, self.pad + self.hop)
        self.chunks = 0
        self._at = 0  # the chunk being processed: events name it
        self.in_speech = False  # the raw hysteresis state
        self._raw_start = 0
        # The current merged segment [cs, ce): open while its raw speech goes on; pending while
        # new raw speech may still merge into it.
        self._has_cur = False
        self._cs = 0
        self._ce = 0
        self._open = False
        self._pending = False
        self._started = False
        self._finished = False

    def feed(self, prob: float | np.float32) -> list[VadEvent]:
        """The events decided by the next chunk's probability."""
        if self._finished:
            raise RuntimeError("SpeechSegmenter.feed after finish")
        # Compared as float32, as onnx-asr compares the model's float32 outputs.
        p = np.float32(prob)
        events: list[VadEvent] = []
        self._at = self.chunks
        at = self.chunks * self.hop
        if not self.in_speech and p >= self.threshold:
            self.in_speech = True
            self._speech_started(at, events)
        elif self.in_speech and p < self.neg_threshold:
            self.in_speech = False
            self._speech_ended(at)
        self.chunks += 1
        self._tick(self.chunks * self.hop, events)
        return events

    def feed_many(self, probs: Iterable[float | np.float32]) -> list[VadEvent]:
        return [event for prob in probs for event in self.feed(prob)]

    def finish(self, total_samples: int) -> list[VadEvent]:
        """The events left when the audio ends after ``total_samples`` (all chunks fed)."""
        if self._finished:
            raise RuntimeError("SpeechSegmenter.finish called twice")
        low = (self.chunks - 1) * self.hop
        if not (low < total_samples <= self.chunks * self.hop or total_samples == self.chunks == 0):
            raise ValueError(f"{total_samples} samples do not make {self.chunks} chunks")
        self._finished = True
        self._at = self.chunks  # onnx-asr's extra chunk of probability 0
        events: list[VadEvent] = []
        if self.in_speech:  # onnx-asr ends open speech with one extra chunk of probability 0
            self.in_speech = False
            self._speech_ended(self.chunks * self.hop)
        if self._has_cur:
            # onnx-asr's (N, N) segment: speech ending shortly before the end runs to the end.
            if (total_samples - self._ce < self.min_silence
                    and total_samples - self._cs < self.max_speech):
                self._ce = total_samples
            self._close(events, total_samples)
        return events

    # -- the merge, incrementally ------------------------------------------------------------

    def _speech_started(self, start: int, events: list[VadEvent]) -> None:
        self._raw_start = start
        if self._has_cur and not self._open and start - self._ce < self.min_silence:
            self._pending = True  # merges unless it makes the segment longer than max_speech
            return
        if self._has_cur:
            self._close(events, None)
        self._begin(start)

    def _speech_ended(self, end: int) -> None:
        # Pending: the previous tick saw end - cs < max_speech, so the raw speech merges.
        self._ce = end
        self._open = self._pending = False

    def _begin(self, start: int) -> None:
        self._has_cur, self._cs, self._open, self._pending, self._started = (
            True, start, True, False, False)

    def _tick(self, t: int, events: list[VadEvent]) -> None:
        """After each chunk: ``t`` samples seen; raw speech in progress ends at ``t`` or later."""
        if not self._has_cur:
            return
        if self._pending and t - self._cs >= self.max_speech:
            self._close(events, None)
            self._begin(self._raw_start)
        if self._open:
            while t - self._cs > self.max_speech:
                piece_start = max(self._cs - self.pad, 0)
                if not self._started:
                    events.append(SpeechStart(self._at, piece_start))
                events.append(SpeechEnd(self._at, piece_start,
                                         self._cs + self.max_speech + self.pad))
                self._cs += self.max_speech
                self._started = False
            known_end = t - self.hop  # below both the raw end and the file's end
        else:
            known_end = self._ce
        if not self._started and known_end - self._cs > self.min_speech:
            events.append(SpeechStart(self._at, max(self._cs - self.pad, 0)))
            self._started = True
        if not self._open and not self._pending and t - self._ce >= self._close_after:
            self._close(events, None)

    def _close(self, events: list[VadEvent], total: int | None) -> None:
        self._has_cur = False
        if self._ce > self._cs and self._ce - self._cs > self.min_speech:
            start = max(self._cs - self.pad, 0)
            end = self._ce + self.pad if total is None else min(self._ce + self.pad, total)
            if not self._started:
                events.append(SpeechStart(self._at, start))
            events.append(SpeechEnd(self._at, start, end))


def speech_segments(probs: Iterable[float | np.float32], total_samples: int,
                    params: VadParams | None = None,
                    sample_rate: int = 16_000) -> list[tuple[int, int]]:
    """Speech segments ``[(start, end)]`` in samples of a whole recording (onnx-asr's result)."""
    segmenter = SpeechSegmenter(params, sample_rate)
    events = segmenter.feed_many(probs) + segmenter.finish(total_samples)
    return [(e.start, e.end) for e in events if isinstance(e, SpeechEnd)]


# --- start-up ------------------------------------------------------------------------------------


def open_vad(mode: str, path: Path, *, expected_sha256: str | None = None) -> SileroVad | None:
    """The VAD for ``--vad auto|on|off`` (D28): ``on`` raises VadError when ``path`` is absent,
    has the wrong interface or (``expected_sha256``: a downloaded file) the wrong checksum;
    ``auto`` logs why once and returns None; ``off`` returns None."""
    if mode == "off":
        return None
    try:
        if not path.is_file():
            raise VadError(f"VAD model {path} not found (`gigastt download --vad` fetches it,"
                           " or pass --vad-model PATH)")
        if expected_sha256 is not None:
            actual = _sha256(path)
            if actual != expected_sha256:
                raise VadError(f"VAD model {path}: SHA-256 mismatch (expected {expected_sha256},"
                               f" got {actual}); delete it and run `gigastt download --vad`")
        vad = SileroVad(path)
    except VadError as exc:
        if mode == "on":
            raise
        if path.is_file():
            log.warning("running without VAD (--vad auto): %s", exc)
        else:
            log.info("running without VAD (--vad auto): %s", exc)
        return None
    log.info("VAD loaded from %s", path)
    return vad


def _sha256(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise VadError(f"VAD model {path} cannot be read: {exc.strerror}") from exc
