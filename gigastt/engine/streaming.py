"""Live recognition as a pure state machine: audio in, recognition passes out, partials/finals back.

Partials come from short sliding windows (bounded cost per second of audio); each endpointed
utterance gets one exact final pass (docs/architecture.md §10, D26); the caller runs the passes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from gigastt.config import VAD_LIVE_TAIL_MS, VAD_MIN_SPEECH_MS, VAD_THRESHOLD
from gigastt.engine.audio import MODEL_RATE, Resampler
from gigastt.engine.features import frame_count
from gigastt.engine.recognizer import FRAME_SAMPLES
from gigastt.engine.tokenizer import FRAME_SECONDS, WORD_START, Token, Vocabulary
from gigastt.engine.transcript import Word
from gigastt.engine.vad import SpeechEnd, SpeechSegmenter, VadParams

F32 = npt.NDArray[np.float32]
Reason = Literal["blank", "vad", "stop", "cap"]

# A partial pass after each PARTIAL_STRIDE of new audio, over the last PARTIAL_WINDOW seconds:
# the encoder sees WINDOW / STRIDE seconds per second of live audio whatever the utterance length
# (docs/architecture.md §10 has the measurements behind the geometry).
PARTIAL_STRIDE = 0.8
PARTIAL_WINDOW = 2.5
# A session behind real time (a fast client, a saturated server) catches up in partial passes of
# at most this much new audio (plus the window's left context).
MAX_PARTIAL_STEP = 8.0
# A word is committed once two consecutive passes agree on it and it ends this far before the
# window's right edge (D26).
COMMIT_HORIZON = 1.0
# Words starting this close to a window's left edge (unless it is the utterance start) are cut or
# lack context; they are not reported from that window.
_LEFT_GUARD_SECONDS = 0.3
MIN_SILENCE_MS = 600
MAX_UTTERANCE = 20.0
ENDPOINT_MODES = ("auto", "assistant", "manual")
COMMIT_POLICIES = ("auto", "stable_prefix", "on_finalize")
# After an endpoint the next utterance starts this far after the last token: inside the silence,
# so no word is cut, and on the encoder-frame grid, so word times stay exact.
_RESTART_FRAMES = 8
# On the utterance cap, the cut is the quietest frame of the utterance's last 4 s.
_CAP_SEARCH_SECONDS = 4.0
# Before the first word of an utterance, only this much trailing audio is kept.
_SILENCE_KEEP_SECONDS = 1.0
# With a VAD, an utterance starts this long before the speech it heard (Silero's probability
# rises a chunk or two after a soft onset); less than the silence kept, so the audio is there.
_VAD_LEAD_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Pass:
    """A request to recognise ``samples``, which begin ``start`` samples into the stream (16 kHz).

    ``final``: the exact recognition of a whole endpointed utterance (run before partial passes);
    ``last``: the final answering ``finish``, reported even when it has no words.
    """

    samples: F32
    final: bool
    start: int = 0
    reason: Reason | None = None
    truncated: bool = False
    last: bool = False


@dataclass(frozen=True, slots=True)
class Segment:
    """A message for the client: ``words[:committed]`` will not change within the utterance.

    Finals carry ``reason`` and ``span``, the samples (16 kHz, from the stream start) they cover.
    """

    kind: Literal["partial", "final"]
    words: tuple[Word, ...]
    committed: int = 0
    reason: Reason | None = None
    truncated: bool = False
    span: tuple[int, int] | None = None


def _frame(seconds: float) -> int:
    return round(seconds / FRAME_SECONDS)


def _frames(seconds: float) -> int:
    return round(seconds * MODEL_RATE / FRAME_SAMPLES)


class StreamingRecognizer:
    """Per-session state: resampler, audio buffer, partial windows, commits, endpointing."""

    def __init__(
        self,
        vocab: Vocabulary,
        *,
        input_rate: int = MODEL_RATE,
        partial_stride: float = PARTIAL_STRIDE,
        partial_window: float = PARTIAL_WINDOW,
        max_utterance: float = MAX_UTTERANCE,
        endpoint_mode: str = "auto",
        min_silence_ms: int | None = None,
        commit_policy: str = "stable_prefix",
        vad: bool = False,
    ) -> None:
        self._vocab = vocab
        self._resampler = Resampler(input_rate) if input_rate != MODEL_RATE else None
        self._stride = int(partial_stride * MODEL_RATE)
        self._window = max(self._stride, int(partial_window * MODEL_RATE))
        self._step = max(self._stride, int(MAX_PARTIAL_STEP * MODEL_RATE))
        self._max_samples = int(max_utterance * MODEL_RATE) // FRAME_SAMPLES * FRAME_SAMPLES
        self._endpoint_mode = "auto"
        self._endpoint_frames = _frames(MIN_SILENCE_MS / 1000)
        self._min_silence_ms = MIN_SILENCE_MS
        self._commit = True
        self._vad: SpeechSegmenter | None = None
        self.configure(endpoint_mode=endpoint_mode, min_silence_ms=min_silence_ms,
                       commit_policy=commit_policy)
        # The buffer holds the stream's samples from self._base (a whole number of frames) on:
        # the current utterance and the audio after it. Passes hold views of it; appends never
        # touch samples before self._n, and trimming copies, so those views stay valid.
        self._store = np.zeros(self._stride, np.float32)
        self._base = 0
        self._n = 0
        self._utt = 0  # stream sample where the current utterance starts (a whole frame)
        self._covered = 0  # stream sample up to which partial passes have been issued
        self._last_token = -1  # stream frame of the utterance's last token; -1: no speech yet
        self._committed: list[Word] = []
        self._commit_frame = 0  # stream frame before which the utterance's words are settled
        self._previous: list[Word] = []  # the last window's uncommitted words
        self._last_partial: tuple[str, int] = ("", 0)
        self._finals: deque[Pass] = deque()
        self._finished = False
        self._audio_samples = 0
        self._encoded_samples = 0
        # With a VAD (D28): the caller runs it over vad_audio() and hands back on_vad(); passes
        # run only while it hears speech, and its silences end utterances.
        if vad:
            self._vad = SpeechSegmenter(self._vad_params())
        self._vad_pending: list[F32] = []
        self._speaking = False  # the VAD heard a speech segment start and not yet end
        self._speech_until = 0  # stream sample up to which the VAD heard speech
        self._utt_speech = False  # the VAD heard speech in the current utterance
        self._heard = 0  # stream samples the VAD has judged

    def configure(self, *, endpoint_mode: str | None = None, min_silence_ms: int | None = None,
                  commit_policy: str | None = None) -> None:
        """Change the endpointing and commit settings (before the first audio); None keeps one.

        ``endpoint_mode``: ``auto`` ends an utterance after ``min_silence_ms`` without tokens;
        ``assistant`` (VAD only; there is none yet) and ``manual`` end one only on ``finish`` or
        at the utterance cap. ``commit_policy`` ``on_finalize`` reports nothing as committed.
        """
        if endpoint_mode is not None and endpoint_mode not in ENDPOINT_MODES:
            raise ValueError(f"unknown endpoint mode {endpoint_mode!r}")
        if commit_policy is not None and commit_policy not in COMMIT_POLICIES:
            raise ValueError(f"unknown commit policy {commit_policy!r}")
        if min_silence_ms is not None and min_silence_ms <= 0:
            raise ValueError("min_silence_ms must be positive")
        if endpoint_mode is not None:
            self._endpoint_mode = endpoint_mode
        if min_silence_ms is not None:
            self._endpoint_frames = max(1, _frames(min_silence_ms / 1000))
            self._min_silence_ms = min_silence_ms
            if self._vad is not None:
                self._vad = SpeechSegmenter(self._vad_params())
        if commit_policy is not None:
            self._commit = commit_policy != "on_finalize"

    def _vad_params(self) -> VadParams:
        # Unpadded segments: the silence that ends an utterance is exactly min_silence_ms of
        # VAD silence; the final's own tail is added at the cut (_vad_endpoint).
        return VadParams(threshold=VAD_THRESHOLD, min_speech_duration_ms=VAD_MIN_SPEECH_MS,
                         max_speech_duration_s=None,
                         min_silence_duration_ms=self._min_silence_ms, speech_pad_ms=0.0)

    # --- counters and back-pressure ----------------------------------------------------------

    @property
    def audio_samples(self) -> int:
        """Live audio fed so far, in 16 kHz samples."""
        return self._audio_samples

    @property
    def encoded_samples(self) -> int:
        """Samples of every pass handed out so far: ``/ audio_samples`` is the re-encode factor."""
        return self._encoded_samples

    @property
    def _size(self) -> int:
        return self._base + self._n

    @property
    def _judged(self) -> int:
        """The end of the audio that may be cut at the cap: with a VAD, what it has judged while
        it heard speech in the utterance (silence before speech is trimmed, never capped)."""
        if self._vad is None:
            return self._size
        return self._heard if self._utt_speech else 0

    @property
    def buffered_seconds(self) -> float:
        return self._n / MODEL_RATE

    @property
    def backlogged(self) -> bool:
        """True while a whole catch-up pass of audio waits beyond the pass in flight.

        The caller stops taking audio meanwhile (back-pressure): the next pass is already full, so
        buffering more only costs memory, and a client far ahead of real time could grow it
        without bound.
        """
        return self._size - self._covered >= self._step

    # --- audio and passes --------------------------------------------------------------------

    def feed(self, samples: F32) -> None:
        """Append audio at the input rate."""
        audio = samples if self._resampler is None else self._resampler.process(samples)
        self._append(audio)
        if self._vad is not None and audio.shape[0]:
            self._vad_pending.append(audio)

    # --- the VAD (D28) -----------------------------------------------------------------------

    def vad_audio(self) -> F32:
        """The 16 kHz audio fed since the last call, for the caller to run the VAD over."""
        pending, self._vad_pending = self._vad_pending, []
        if len(pending) == 1:
            return pending[0]
        return np.concatenate(pending) if pending else np.zeros(0, np.float32)

    def on_vad(self, probabilities: F32) -> None:
        """The VAD's speech probabilities of the next chunks of ``vad_audio``, in order."""
        if self._vad is None or self._finished:
            return
        for probability in probabilities:
            for event in self._vad.feed(probability):
                if isinstance(event, SpeechEnd):
                    self._speaking = False
                    self._speech_until = max(self._speech_until, event.end)
                    self._vad_endpoint(event.end, (event.chunk + 1) * self._vad.hop)
                    continue
                if not self._utt_speech:
                    # Where the VAD heard speech begin, not where the audio stood when it said
                    # so: the same utterances whatever the frame sizes and timing.
                    self._start_at(event.start - int(_VAD_LEAD_SECONDS * MODEL_RATE))
                self._speaking = self._utt_speech = True
        heard = self._heard = self._vad.chunks * self._vad.hop
        if self._speaking:
            self._speech_until = heard
        elif not self._utt_speech:
            # Silence so far: keep only a short tail, so the buffer stays small.
            self._start_at(heard - int(_SILENCE_KEEP_SECONDS * MODEL_RATE))
            self._trim()

    def _vad_endpoint(self, end: int, heard: int) -> None:
        """By ``heard``, the VAD heard ``min_silence_ms`` of silence after speech that ended at
        ``end``."""
        if self._endpoint_mode == "manual" or not self._utt_speech:
            return
        cut = min(end + int(VAD_LIVE_TAIL_MS * MODEL_RATE / 1000), heard, self._size)
        cut = cut // FRAME_SAMPLES * FRAME_SAMPLES
        if cut <= self._utt:
            return
        self._finals.append(Pass(self._slice(self._utt, cut), final=True, start=self._utt,
                                 reason="vad"))
        self._new_utterance(cut)

    def next_pass(self, *, partials: bool = True) -> Pass | None:
        """The pass to run now: a pending final first, else a partial once a stride has arrived
        (with ``partials``).

        One pass at a time: call again after handing back the previous pass's result.
        """
        if not self._finished and self._judged - self._utt >= self._max_samples:
            # Cut at once: waiting for the next stride would only delay the final (§10 "Cap").
            self._cap_cut()
        if self._finals:
            job = self._finals.popleft()
        else:
            if self._finished or not partials or (self._size - self._covered < self._stride
                                                  and not self._probe_due()):
                return None
            if self._vad is not None and not self._speaking and \
                    self._speech_until <= self._covered:
                return None  # nothing but silence since the last pass: no pass (D28)
            end = min(self._size, self._covered + self._step, self._utt + self._max_samples)
            if end <= self._covered:
                return None
            # At least the window; more when behind, so that consecutive windows always overlap
            # by the window's left context and no audio escapes the endpointing.
            start = max(self._utt, min(end - self._window,
                                       self._covered - (self._window - self._stride)))
            start = start // FRAME_SAMPLES * FRAME_SAMPLES
            self._covered = end
            job = Pass(self._slice(start, end), final=False, start=start)
        self._encoded_samples += job.samples.shape[0]
        return job

    def _probe_due(self) -> bool:
        """A pause after speech has just become long enough to be an endpoint: look now.

        Without this, an endpoint would wait for the next stride (up to 0.8 s more latency).
        """
        if not self.endpoints_from_passes or self._last_token < 0:
            return False
        probe = (self._last_token + 2 + self._endpoint_frames) * FRAME_SAMPLES
        return self._covered < probe <= self._size

    @property
    def endpoints_from_passes(self) -> bool:
        """Whether partial passes find endpoints (``auto`` without a VAD); else ``finish`` needs
        none first."""
        return self._endpoint_mode == "auto" and self._vad is None

    def finish(self, reason: Reason = "stop", truncated: bool = False) -> None:
        """End the stream: the rest of the audio becomes final passes, then ``next_pass`` is None.

        When ``endpoints_from_passes``, run the partial passes still due first, so that endpoints
        in them are found. The last final pass is always answered with a final, possibly empty.
        """
        if self._resampler is not None:
            self._append(self._resampler.flush())
            self._resampler = None
        self._finished = True
        while self._size - self._utt > self._max_samples:
            self._cap_cut()
        self._finals.append(Pass(self._slice(self._utt, self._size), final=True, start=self._utt,
                                 reason=reason, truncated=truncated, last=True))
        self._new_utterance(self._size // FRAME_SAMPLES * FRAME_SAMPLES)

    def _slice(self, start: int, end: int) -> F32:
        return self._store[start - self._base : end - self._base]

    def _append(self, samples: F32) -> None:
        end = self._n + samples.shape[0]
        if end > self._store.shape[0]:
            grown = np.empty(max(end, 2 * self._store.shape[0]), np.float32)
            grown[: self._n] = self._store[: self._n]
            self._store = grown
        self._store[self._n : end] = samples
        self._n = end
        self._audio_samples += samples.shape[0]

    def _trim(self) -> None:
        """Drop the audio before the current utterance (queued finals hold their own views)."""
        cut = self._utt - self._base
        if cut > 0:
            self._store = self._store[cut : self._n].copy()
            self._base, self._n = self._utt, self._n - cut

    # --- results -----------------------------------------------------------------------------

    def on_result(self, done: Pass, tokens: list[Token]) -> list[Segment]:
        """Turn a finished pass into the messages to send, in order."""
        offset = done.start // FRAME_SAMPLES
        end = done.start + done.samples.shape[0]
        if done.final:
            words = tuple(self._vocab.words(tokens, frame_offset=offset))
            if not words and not done.last:
                return []  # endpoints without words send nothing
            # An empty final cut nothing short, whatever ended the session (docs/api.md).
            return [Segment("final", words, len(words), done.reason,
                            done.truncated and bool(words), (done.start, end))]
        if self._finished:
            return []
        end_frame = offset + _encoder_frames(done.samples.shape[0])
        queued = len(self._finals)
        self._endpoints(tokens, offset, end_frame)
        if self._last_token < 0:
            # No speech yet: keep only a short tail, so the buffer stays small.
            self._start_at(end - int(_SILENCE_KEEP_SECONDS * MODEL_RATE))
        # Commit before a cap cut, so that no word leaves the windows uncommitted meanwhile.
        segments = self._partial(done, tokens, offset, end_frame)
        if min(end, self._judged) - self._utt >= self._max_samples:
            self._cap_cut()
        self._trim()
        if len(self._finals) > queued:
            # The final goes out first; the next utterance's partials follow it.
            self._last_partial = ("", 0)
            return []
        return segments

    def _endpoints(self, tokens: list[Token], offset: int, end_frame: int) -> None:
        """Find blank-run endpoints in a window's tokens; each queues a final pass."""
        blank = self._endpoint_mode == "auto" and self._vad is None
        for token in tokens:
            frame = offset + token.frame
            if frame < self._utt // FRAME_SAMPLES:
                continue  # left context from before the utterance
            if blank and self._last_token >= 0 and \
                    frame - 1 - self._last_token >= self._endpoint_frames:
                self._endpoint(min(self._last_token + 1 + _RESTART_FRAMES, frame))
            self._last_token = max(self._last_token, frame)
        if blank and self._last_token >= 0 and \
                end_frame - 1 - self._last_token >= self._endpoint_frames:
            self._endpoint(min(self._last_token + 1 + _RESTART_FRAMES, end_frame))

    def _endpoint(self, cut_frame: int) -> None:
        cut = cut_frame * FRAME_SAMPLES
        self._finals.append(Pass(self._slice(self._utt, cut), final=True, start=self._utt,
                                 reason="blank"))
        self._new_utterance(cut)

    def _cap_cut(self) -> None:
        """The utterance reached the cap: end it at the quietest frame of its last seconds.

        The cut lies after every committed word (they stay in this utterance, D26) and never
        inside a word the partials reported, so the final splits no word they showed.
        """
        hi = self._utt + self._max_samples
        lo = max(self._utt + FRAME_SAMPLES, hi - int(_CAP_SEARCH_SECONDS * MODEL_RATE))
        if self._committed:
            lo = max(lo, (_frame(self._committed[-1].end) + 2) * FRAME_SAMPLES)
        lo = min(lo // FRAME_SAMPLES * FRAME_SAMPLES, hi - FRAME_SAMPLES)
        blocks = self._slice(lo, hi).reshape(-1, FRAME_SAMPLES)
        energy = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64)
        inside = np.zeros(energy.shape[0], bool)
        first = lo // FRAME_SAMPLES
        for word in self._previous:
            inside[max(0, _frame(word.start) + 1 - first) : max(0, _frame(word.end) + 2 - first)] \
                = True
        if not inside.all():
            energy[inside] = np.inf
        cut = lo + int(np.argmin(energy)) * FRAME_SAMPLES
        self._finals.append(Pass(self._slice(self._utt, cut), final=True, start=self._utt,
                                 reason="cap"))
        self._new_utterance(cut)

    def _start_at(self, sample: int) -> None:
        """Move the start of an utterance without words yet forward to ``sample`` (on the frame
        grid); what lies before it is silence, never recognised."""
        self._utt = max(self._utt, sample // FRAME_SAMPLES * FRAME_SAMPLES)
        self._covered = max(self._covered, self._utt)
        self._commit_frame = max(self._commit_frame, self._utt // FRAME_SAMPLES)

    def _new_utterance(self, cut: int) -> None:
        """Start the next utterance at stream sample ``cut`` (a whole frame)."""
        cut_frame = cut // FRAME_SAMPLES
        self._utt = cut
        self._committed = []
        self._commit_frame = max(cut_frame, self._commit_frame)
        self._previous = [w for w in self._previous if _frame(w.start) >= cut_frame]
        self._last_partial = ("", 0)
        if self._last_token < cut_frame:
            self._last_token = -1
        self._utt_speech = self._speaking

    def _partial(self, done: Pass, tokens: list[Token], offset: int,
                 end_frame: int) -> list[Segment]:
        """Commit the stable prefix of a window's words; a partial when anything changed."""
        first = offset + _frames(_LEFT_GUARD_SECONDS) if done.start > self._utt else offset
        first = max(first, self._commit_frame)
        kept = [t for t in tokens if offset + t.frame >= first]
        if first > self._utt // FRAME_SAMPLES:
            # The rest of a word that began before the reliable part is not a word of its own.
            pieces = self._vocab.pieces
            while kept and not pieces[kept[0].id].startswith(WORD_START):
                kept.pop(0)
        fresh = self._vocab.words(kept, frame_offset=offset)
        # Agreed with the previous window, complete (another word follows it, so no later token
        # joins it) and far enough from the right edge...
        horizon = end_frame - _frames(COMMIT_HORIZON)
        agreed = 0
        for new, old in zip(fresh[:-1], self._previous, strict=False):
            if new.word != old.word or _frame(new.start) != _frame(old.start) or \
                    _frame(new.end) > horizon:
                break
            agreed += 1
        # ...or about to leave the windows' reliable part without ever being agreed on: the next
        # window starts at most WINDOW - STRIDE before this one's end (earlier when it catches
        # up), and ignores the words starting in its first _LEFT_GUARD_SECONDS.
        leaving = end_frame + _frames((self._stride - self._window) / MODEL_RATE
                                      + _LEFT_GUARD_SECONDS)
        while agreed < len(fresh) and _frame(fresh[agreed].start) < leaving:
            agreed += 1
        if agreed:
            self._committed += fresh[:agreed]
            self._commit_frame = _frame(fresh[agreed - 1].end) + 1
        self._previous = fresh[agreed:]
        shown = tuple(self._committed + self._previous)
        committed = len(self._committed) if self._commit else 0
        key = (" ".join(w.word for w in shown), committed)
        if not shown or key == self._last_partial:
            return []
        self._last_partial = key
        return [Segment("partial", shown, committed)]


def _encoder_frames(samples: int) -> int:
    return (frame_count(samples) + 3) // 4
