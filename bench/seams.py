"""Window seams (issue 19): words lost or changed where long files are cut into windows.

    python bench/seams.py [--quick] [--model small|medium|full] [--radius 0.5,1,2] [--json OUT]
                          [--golos-rounds N] [--synthetic-seconds S] [--seeds N]
                          [--schemes cut,context,extend-mid,extend-quiet] [--overlaps 1,2]

Long files are recognised in windows of at most 20 s (``split_windows``: each cut at the quietest
40 ms frame in the last 4 s of the window). The generated test models judge loudness relative to
the whole utterance (``gigastt.testing.models._activity_frames``) and their conformer attends over
all of it, so, like the real full-context encoder, their output for a stretch of audio depends on
the audio around it. This harness measures how much of the difference between one whole pass and
the windowed result sits at the seams, and prototypes overlapping windows reconciled by time (the
engine is not changed: every scheme here is built from ``Recognizer.tokens`` on slices).

Inputs (each ≤ 200 s, the exported encoder's limit, and ≥ 60 s):

* ``golos/sN`` — the 15 Golos clips (``$GIGASTT_GOLOS_DIR`` or shared/fixtures/golos; skipped
  with a message when absent), shuffled with seed N, joined by pauses drawn uniformly from
  0.2-1.5 s (faint noise, not digital silence); ``--golos-rounds`` rounds of the 15 (default 2,
  about 150 s; ``--quick``: 1, about 75 s), each round in its own order. Most pauses are shorter
  than the 4 s search span, so a cut falls in a pause or inside a clip.
* ``speech/sN`` — ``gigastt.testing.audio.speech_like(--synthetic-seconds, seed=N)`` (default
  180 s; ``--quick``: 90 s): continuous syllables with pauses of at most 0.35 s.

``--seeds`` seeds of each (default 3; ``--quick``: 2).

Reference: ONE encoder pass over the whole input → tokens → words with times.

Schemes. A scheme is a list of windows ``(start, stop, keep_from, keep_to)`` in samples: the
encoder sees ``[start, stop)``, and of that window's words only those whose key time (the start
of the word's first token, on the 40 ms frame grid) lies in ``[keep_from, keep_to)`` are kept.
The keep ranges tile the file without gaps or overlap, so every word is kept by exactly one
window (the one that owns its start frame); all starts and keep bounds are multiples of 640
samples (one encoder frame), so word times stay exact. A "seam" is a keep bound between two
windows: where the output switches from one window's words to the next's.

* ``cut`` — the engine before seam context: ``split_windows(samples, context_seconds=0)``,
  keep = the window itself. Seams are the cuts.
* ``engine`` — the engine as it is (``split_windows(samples)``, ``own_words``): 1 s of context
  either side of each cut (``WINDOW_CONTEXT_SECONDS``), the last window unwidened when the rest
  fits in 20 s, and tokens kept by their own frame (then grouped into words) rather than by
  their word's start.
* ``context C`` — cut exactly as ``split_windows`` does, but with nominal windows of
  ``20 - 2C`` s, then widen each window by ``C`` s on each side (clipped to the file): the
  context is recognised, its words dropped. Seams are the quiet cuts; each side of a seam is seen
  by both neighbours, ``2C`` s of overlap.
* ``extend O`` — nominal windows of ``20 - O`` s cut as ``split_windows`` does; each window
  extends ``O`` s past its nominal cut, the next starts at the cut. The seam is the midpoint of
  the overlap (``extend-mid``) or its quietest 40 ms frame within the middle half of the overlap
  (``extend-quiet``; the seam is the end of that frame).

Every scheme keeps encoded windows ≤ 20 s (its nominal windows shrink by the overlap), so the
encoder's input length and memory stay where they are today; the cost is "extra audio encoded":
Σ(stop - start) / file length - 1.

Measures. The generated models' text depends on the whole window (per-window level and
envelope normalisation, attention over all frames), so even far from any seam most words of a
windowed pass differ in text from the whole pass; emission times depend on it much less. Hence
two units, each in its own table: words (a match needs the same text and starts within 0.5 s)
and emitted tokens with their text ignored (a match needs starts within one 40 ms frame: a
token lost, added or moved by more than a frame is an error; this is what a word cut in two, kept
twice or dropped by neither window shows as). Each input's windowed units are aligned to the
reference units by edit distance (substitution, deletion, insertion cost 1; ties prefer
match/substitution, then deletion). Each error gets a time: a substitution or deletion the
reference unit's centre ((start + end) / 2), an insertion the windowed unit's centre. For a
radius N:

* ref words near seams (±N) — reference units whose centre lies within N s of one of the
  scheme's seams;
* seam errors (±N) — errors whose time lies within N s of a seam;
* seam err rate (±N) = seam errors (±N) / ref units near seams (±N);
* elsewhere err rate = errors farther than the largest radius (default 2 s) from every seam /
  reference units farther than that: the context effect away from seams, the baseline a seam
  rate is judged against;
* total err rate vs whole pass = all errors / all reference units (WER for words).

Sums over all inputs (a rate is a ratio of sums, not a mean of ratios), and per input kind. The
seams differ per scheme (they are where that scheme switches windows), so compare rates, and
the total, which does not depend on where the seams are. The S/D/I column splits the ±1 s
errors (an insertion right at a seam is typically a unit kept twice; a deletion one kept by
neither window). Rates above 100 % happen where the reference has few units (the whole pass of
the Golos inputs: its loudest clip sets the level, so quiet stretches emit nothing).

A third table compares against the best-context recognition of each point instead: at a probe p,
one 20 s window centred on p (start on the frame grid, clipped to the file) is recognised, and
the scheme's units within ±r of p are aligned against that window's units within ±r. Probes: the
scheme's seams, and the middle of each keep range farther than twice the largest radius from
every seam ("mid": there the scheme's own window is nearly the centred one, so the mid rate is the
noise floor of the method: a 1-2 s change of context). Seam rate minus mid rate is what being at
a window edge costs a scheme.

Benchmarks, not tests: nothing asserts. Only the generated models' behaviour is measured here;
with the real model the absolute error rates will differ, the ranking of schemes is what this
gives.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import common
import numpy as np

F32 = common.F32
SAMPLE_RATE = 16000
FRAME = 640  # one encoder frame (40 ms): window starts and keep bounds sit on this grid
FRAME_S = FRAME / SAMPLE_RATE
WINDOW_S = 20.0
# A match: same text and starts within 0.5 s (words); starts within one frame (tokens)
METRICS: dict[str, float] = {"words": 0.5, "tokens": FRAME_S + 1e-6}


# ----------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Input:
    name: str
    samples: F32


def golos_input(clips: Sequence[F32], seed: int, rounds: int) -> F32:
    """Clips shuffled per round, joined by 0.2-1.5 s pauses of faint noise."""
    rng = np.random.default_rng(1000 + seed)
    parts: list[F32] = []
    for _ in range(rounds):
        for i in rng.permutation(len(clips)):
            if parts:
                gap = int(rng.uniform(0.2, 1.5) * SAMPLE_RATE)
                parts.append((3e-4 * rng.standard_normal(gap)).astype(np.float32))
            parts.append(clips[int(i)])
    out = np.concatenate(parts).astype(np.float32)
    return out[: int(200 * SAMPLE_RATE)]


def build_inputs(args: argparse.Namespace) -> list[Input]:
    from gigastt.testing.audio import speech_like

    inputs: list[Input] = []
    seeds = range(1, args.seeds + 1)
    try:
        clips = common.golos_clips()
    except FileNotFoundError as exc:
        print(f"NOTE: golos inputs skipped: {exc}", file=sys.stderr)
        clips = []
    if clips:
        inputs += [Input(f"golos/s{s}", golos_input(clips, s, args.golos_rounds)) for s in seeds]
    inputs += [Input(f"speech/s{s}", speech_like(min(200.0, args.synthetic_seconds), seed=s))
               for s in seeds]
    return inputs


# ----------------------------------------------------------------------------------------------
# schemes: windows (start, stop, keep_from, keep_to) in samples


@dataclass(frozen=True)
class Span:
    start: int
    stop: int
    keep_from: int
    keep_to: int


def _frames(seconds: float) -> int:
    return round(seconds / FRAME_S) * FRAME


def nominal_cuts(samples: F32, window_s: float) -> list[tuple[int, int]]:
    """``split_windows`` without context (the engine before its seam context), with nominal
    windows of ``window_s``."""
    from gigastt.engine.recognizer import split_windows

    return [(w.start, w.stop) for w in split_windows(samples, window_s, context_seconds=0)]


def scheme_cut(samples: F32, _: float) -> list[Span]:
    return [Span(a, b, a, b) for a, b in nominal_cuts(samples, WINDOW_S)]


def scheme_engine(samples: F32, _: float) -> list[Span]:
    """The engine's own windows (``split_windows`` with its default context)."""
    from gigastt.engine.recognizer import split_windows

    return [Span(w.audio_start, w.audio_stop, w.start, w.stop) for w in split_windows(samples)]


def scheme_context(samples: F32, context_s: float) -> list[Span]:
    """Quiet cuts of ``20 - 2C`` s windows; each recognised with C s more on both sides."""
    c = _frames(context_s)
    total = samples.shape[0]
    return [Span(max(0, a - c), min(total, b + c), a, b)
            for a, b in nominal_cuts(samples, WINDOW_S - 2 * c / SAMPLE_RATE)]


def _quietest_end(samples: F32, lo: int, hi: int) -> int:
    """End of the quietest 40 ms frame in ``[lo, hi)`` (frame-aligned), latest on ties."""
    hi = max(hi, lo + FRAME)
    blocks = samples[lo:hi].reshape(-1, FRAME).astype(np.float64)
    energy = np.einsum("ij,ij->i", blocks, blocks)
    quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))
    return lo + (quietest + 1) * FRAME


def _scheme_extend(samples: F32, overlap_s: float, quiet: bool) -> list[Span]:
    o = _frames(overlap_s)
    total = samples.shape[0]
    cuts = nominal_cuts(samples, WINDOW_S - o / SAMPLE_RATE)
    stops = [min(total, b + o) for _, b in cuts]
    seams: list[int] = []
    for (_, b), stop in zip(cuts[:-1], stops[:-1], strict=True):
        if quiet:
            lo = b + (stop - b) // 4 // FRAME * FRAME
            hi = b + 3 * (stop - b) // 4 // FRAME * FRAME
            seams.append(min(_quietest_end(samples, lo, hi), stop))
        else:
            seams.append(b + (stop - b) // 2 // FRAME * FRAME)
    bounds = [0, *seams, total]
    return [Span(a, stop, bounds[i], bounds[i + 1])
            for i, ((a, _), stop) in enumerate(zip(cuts, stops, strict=True))]


def scheme_extend_mid(samples: F32, overlap_s: float) -> list[Span]:
    return _scheme_extend(samples, overlap_s, quiet=False)


def scheme_extend_quiet(samples: F32, overlap_s: float) -> list[Span]:
    return _scheme_extend(samples, overlap_s, quiet=True)


SchemeFn = Callable[[F32, float], list[Span]]
SCHEMES: dict[str, tuple[SchemeFn, tuple[float, ...]]] = {
    "cut": (scheme_cut, (0.0,)),
    "engine": (scheme_engine, (0.0,)),
    "context": (scheme_context, (0.5, 1.0, 2.0)),
    "extend-mid": (scheme_extend_mid, (1.0, 2.0, 4.0)),
    "extend-quiet": (scheme_extend_quiet, (1.0, 2.0, 4.0)),
}


def check_spans(spans: list[Span], total: int) -> None:
    """The invariants the keep rule relies on: frame grid, keep ranges tile the file."""
    assert spans[0].keep_from == 0 and spans[-1].keep_to == total, spans
    for s in spans:
        assert s.start % FRAME == 0 and s.keep_from % FRAME == 0, s
        assert s.start <= s.keep_from < s.keep_to <= s.stop <= total, s
        assert s.stop - s.start <= int(WINDOW_S * SAMPLE_RATE), s
    for a, b in itertools.pairwise(spans):
        assert a.keep_to == b.keep_from, (a, b)


# ----------------------------------------------------------------------------------------------
# recognition


@dataclass(frozen=True)
class W:
    """A unit compared: a word (text, start and end time in s) or a token (empty text)."""

    text: str
    start: float
    end: float

    @property
    def centre(self) -> float:
        return (self.start + self.end) / 2


@dataclass
class Result:
    """Words and emitted tokens (text-less units at their frame's time) of one recognition."""

    words: list[W] = field(default_factory=list)
    tokens: list[W] = field(default_factory=list)


def _token_keys(vocab: Any, tokens: Sequence[Any]) -> list[int]:
    """Per token, the start frame of the word it ends up in (``Vocabulary.words``' grouping:
    a piece holding ``▁`` starts a word at its own frame, other pieces join the current one)."""
    keys: list[int] = []
    current = tokens[0].frame if tokens else 0
    for token in tokens:
        if token.id not in (vocab.blank, vocab.unknown) and "\u2581" in vocab.pieces[token.id]:
            current = token.frame
        keys.append(current)
    return keys


def recognise(recognizer: Any, samples: F32, spans: list[Span], *,
              engine: bool = False) -> Result:
    """Words (and their tokens) of each window, kept by word start frame in
    ``[keep_from, keep_to)``; ``engine``: kept as the engine keeps them (``own_words``: by
    token frame, then grouped)."""
    vocab = recognizer.model.vocab
    out = Result()
    if engine:
        from gigastt.engine.recognizer import Window, own_words

        for s in spans:
            window = Window(s.keep_from, s.keep_to, s.keep_from - s.start, s.stop - s.keep_to)
            own, words = own_words(vocab, window, recognizer.tokens(samples[s.start : s.stop]))
            out.words += [W(w.word, w.start, w.end) for w in words]
            out.tokens += [W("", (t.frame + window.frame_offset) * FRAME_S,
                             (t.frame + window.frame_offset) * FRAME_S)
                           for t in own if t.id not in (vocab.blank, vocab.unknown)]
        return out
    for s in spans:
        tokens = recognizer.tokens(samples[s.start : s.stop])
        offset = s.start // FRAME
        lo, hi = s.keep_from // FRAME - offset, s.keep_to // FRAME - offset
        for w in vocab.words(tokens, frame_offset=offset):
            if lo <= round(w.start / FRAME_S) - offset < hi:
                out.words.append(W(w.word, w.start, w.end))
        for token, key in zip(tokens, _token_keys(vocab, tokens), strict=True):
            if lo <= key < hi and token.id not in (vocab.blank, vocab.unknown):
                t = (token.frame + offset) * FRAME_S
                out.tokens.append(W("", t, t))
    return out


# ----------------------------------------------------------------------------------------------
# alignment


def align(ref: list[W], hyp: list[W], slack: float) -> list[tuple[str, int, int]]:
    """Edit-distance alignment: ops ("=", "S", "D", "I") with ref and hyp indices; units match
    when their texts are equal and their starts lie within ``slack`` seconds.

    Vectorised per row: D[i, j] = j + cummin_k≤j(A[k] - k), A being the best of diagonal and
    deletion moves into row i; the backtrace walks the stored matrix.
    """
    n, m = len(ref), len(hyp)
    ids: dict[str, int] = {}
    r_id = np.array([ids.setdefault(w.text, len(ids)) for w in ref], dtype=np.int64)
    h_id = np.array([ids.setdefault(w.text, len(ids)) for w in hyp], dtype=np.int64)
    r_t = np.array([w.start for w in ref])
    h_t = np.array([w.start for w in hyp])
    cost = np.ones((n, m), dtype=np.int32)
    if n and m:
        same = (r_id[:, None] == h_id[None, :]) & (np.abs(r_t[:, None] - h_t[None, :])
                                                    <= slack)
        cost[same] = 0
    d = np.zeros((n + 1, m + 1), dtype=np.int32)
    d[0] = np.arange(m + 1)
    steps = np.arange(m + 1, dtype=np.int32)
    for i in range(1, n + 1):
        a = np.empty(m + 1, dtype=np.int32)
        a[0] = i
        a[1:] = np.minimum(d[i - 1, :-1] + cost[i - 1], d[i - 1, 1:] + 1)
        d[i] = steps + np.minimum.accumulate(a - steps)
    ops: list[tuple[str, int, int]] = []
    i, j = n, m
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + cost[i - 1, j - 1]:
            ops.append(("=" if cost[i - 1, j - 1] == 0 else "S", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            ops.append(("D", i - 1, -1))
            i -= 1
        else:
            ops.append(("I", -1, j - 1))
            j -= 1
    ops.reverse()
    return ops


# ----------------------------------------------------------------------------------------------
# measurement


@dataclass
class Tally:
    """Sums over inputs for one scheme and overlap."""

    radii: tuple[float, ...]
    ref_words: int = 0
    errors: int = 0
    near_ref: dict[float, int] = field(default_factory=dict)
    near_err: dict[float, int] = field(default_factory=dict)
    near_sdi: dict[str, int] = field(default_factory=lambda: {"S": 0, "D": 0, "I": 0})
    far_ref: int = 0
    far_err: int = 0
    audio_s: float = 0.0
    encoded_s: float = 0.0
    wall_s: float = 0.0
    seams: int = 0

    def add(self, ref: list[W], hyp: list[W], seams: list[float], slack: float) -> None:
        edges = np.array(seams) if seams else np.array([np.inf])

        def dist(t: float) -> float:
            return float(np.min(np.abs(edges - t)))

        far = max(self.radii)
        ref_dist = [dist(w.centre) for w in ref]
        self.ref_words += len(ref)
        self.far_ref += sum(d > far for d in ref_dist)
        for r in self.radii:
            self.near_ref[r] = self.near_ref.get(r, 0) + sum(d <= r for d in ref_dist)
        for op, i, j in align(ref, hyp, slack):
            if op == "=":
                continue
            self.errors += 1
            d = ref_dist[i] if op != "I" else dist(hyp[j].centre)
            self.far_err += d > far
            for r in self.radii:
                self.near_err[r] = self.near_err.get(r, 0) + (d <= r)
            if d <= 1.0:
                self.near_sdi[op] += 1

    def rate(self, r: float) -> float:
        return self.near_err[r] / self.near_ref[r] if self.near_ref.get(r) else float("nan")


@dataclass
class Local:
    """Centred-window comparison at probe points: "seam" probes (the scheme's seams) and "mid"
    probes (the middle of each keep range, when farther than twice the largest radius from
    every seam). Reference at a probe p: the units of one window of 20 s centred on p (start
    on the frame grid, clipped to the file); compared: the scheme's units whose centre lies
    within ±r of p, against the reference's within ±r, aligned as above."""

    radii: tuple[float, ...]
    ref: dict[tuple[str, str, float], int] = field(default_factory=dict)
    err: dict[tuple[str, str, float], int] = field(default_factory=dict)

    def add(self, group: str, kind: str, p: float, centred: list[W], hyp: list[W],
            slack: float) -> None:
        for r in self.radii:
            ref = [u for u in centred if abs(u.centre - p) <= r]
            got = [u for u in hyp if abs(u.centre - p) <= r]
            errors = sum(op != "=" for op, _, _ in align(ref, got, slack))
            for g in (group, "all"):
                key = (g, kind, r)
                self.ref[key] = self.ref.get(key, 0) + len(ref)
                self.err[key] = self.err.get(key, 0) + errors

    def rate(self, group: str, kind: str, r: float) -> float:
        n = self.ref.get((group, kind, r), 0)
        return self.err.get((group, kind, r), 0) / n if n else float("nan")


def probes(spans: list[Span], far: float) -> list[tuple[str, float]]:
    """The seams, and the middles of keep ranges farther than ``2 * far`` from every seam."""
    seams = [s.keep_to / SAMPLE_RATE for s in spans[:-1]]
    out = [("seam", t) for t in seams]
    for s in spans:
        mid = (s.keep_from + s.keep_to) / 2 / SAMPLE_RATE
        if all(abs(mid - t) > 2 * far for t in seams):
            out.append(("mid", mid))
    return out


def centred_span(p: float, total: int) -> Span:
    half = int(WINDOW_S * SAMPLE_RATE) // 2
    start = max(0, int(p * SAMPLE_RATE) - half) // FRAME * FRAME
    stop = min(total, start + 2 * half)
    return Span(start, stop, start, stop)


def pct(x: float) -> str:
    return common.fmt(100.0 * x, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gigastt.engine.model import GigaamModel
    from gigastt.engine.recognizer import Recognizer

    model = common.model_dir(args.model)
    recognizer = Recognizer(GigaamModel(model))
    inputs = build_inputs(args)
    radii = tuple(args.radius)
    wanted = args.schemes or list(SCHEMES)
    configs = [(name, value) for name in wanted for value in SCHEMES[name][1]
               if args.overlaps is None or name in ("cut", "engine") or value in args.overlaps]
    tallies = {(m, c): Tally(radii) for m in METRICS for c in configs}
    by_group: dict[tuple[str, tuple[str, float], str], Tally] = {}
    local = {(m, c): Local(radii) for m in METRICS for c in configs}
    groups: list[str] = []
    per_input: list[dict[str, Any]] = []
    for inp in inputs:
        total = inp.samples.shape[0]
        group = inp.name.split("/")[0]
        if group not in groups:
            groups.append(group)
        centred: dict[int, Result] = {}
        t0 = time.perf_counter()
        ref = recognise(recognizer, inp.samples, [Span(0, total, 0, total)])
        whole_s = time.perf_counter() - t0
        print(f"{inp.name}: {total / SAMPLE_RATE:.1f} s, whole pass {len(ref.words)} words,"
              f" {len(ref.tokens)} tokens ({whole_s:.1f} s)", file=sys.stderr)
        for cfg in configs:
            spans = SCHEMES[cfg[0]][0](inp.samples, cfg[1])
            check_spans(spans, total)
            t0 = time.perf_counter()
            hyp = recognise(recognizer, inp.samples, spans, engine=cfg[0] == "engine")
            wall = time.perf_counter() - t0
            seams = [s.keep_to / SAMPLE_RATE for s in spans[:-1]]
            row: dict[str, Any] = {"input": inp.name, "scheme": cfg[0], "overlap": cfg[1],
                                   "windows": len(spans), "wall_s": wall}
            for metric, slack in METRICS.items():
                tally = tallies[(metric, cfg)]
                before = tally.errors
                units = (ref.words, hyp.words) if metric == "words" else (ref.tokens, hyp.tokens)
                tally.add(units[0], units[1], seams, slack)
                by_group.setdefault((metric, cfg, group), Tally(radii)).add(
                    units[0], units[1], seams, slack)
                tally.audio_s += total / SAMPLE_RATE
                tally.encoded_s += sum(s.stop - s.start for s in spans) / SAMPLE_RATE
                tally.wall_s += wall
                tally.seams += len(seams)
                row[metric] = {"ref": len(units[0]), "hyp": len(units[1]),
                               "errors": tally.errors - before}
            per_input.append(row)
            for kind, p in probes(spans, max(radii)):
                span = centred_span(p, total)
                if span.start not in centred:
                    centred[span.start] = recognise(recognizer, inp.samples, [span])
                c = centred[span.start]
                for metric, slack in METRICS.items():
                    pair = (c.words, hyp.words) if metric == "words" else (c.tokens, hyp.tokens)
                    local[(metric, cfg)].add(group, kind, p, pair[0], pair[1], slack)
    results: list[dict[str, Any]] = []
    print()
    for metric in METRICS:
        rows: list[list[str]] = []
        base_wall = tallies[(metric, configs[0])].wall_s
        for name, value in configs:
            t = tallies[(metric, (name, value))]
            extra = t.encoded_s / t.audio_s - 1 if t.audio_s else float("nan")
            far_rate = t.far_err / t.far_ref if t.far_ref else float("nan")
            wer = t.errors / t.ref_words if t.ref_words else float("nan")
            split = [f"{pct(g.rate(1.0))} / {pct(g.far_err / g.far_ref if g.far_ref else 0.0)}"
                     for g in (by_group[(metric, (name, value), x)] for x in groups)]
            rows.append([name, "–" if name in ("cut", "engine") else f"{value:g} s", pct(extra),
                         *[pct(t.rate(r)) for r in radii], pct(far_rate), pct(wer), *split,
                         str(t.near_ref[1.0]), "/".join(str(t.near_sdi[k]) for k in "SDI"),
                         str(t.seams), common.fmt(t.wall_s / base_wall, 2)])
            results.append({"metric": metric, "scheme": name, "overlap_s": value,
                            "extra_encoded": extra,
                            "seam_rate": {str(r): t.rate(r) for r in radii},
                            "near_ref": {str(r): t.near_ref[r] for r in radii},
                            "near_err": {str(r): t.near_err[r] for r in radii},
                            "near_sdi_1s": t.near_sdi, "far_rate": far_rate,
                            "far_ref": t.far_ref, "far_err": t.far_err, "wer": wer,
                            "ref_units": t.ref_words, "errors": t.errors, "seams": t.seams,
                            "wall_s": t.wall_s})
        unit = "word" if metric == "words" else "token"
        headers = ["scheme", "overlap / context", "extra audio encoded %",
                   *[f"seam err % (±{r:g} s)" for r in radii],
                   f"elsewhere err % (>{max(radii):g} s)", f"total {unit} err % vs whole",
                   *[f"{g}: seam ±1 / elsewhere" for g in groups],
                   f"ref {unit}s ±1 s", "S/D/I ±1 s", "seams", "wall ÷ cut"]
        print(table_title(args, inputs, metric))
        print(common.markdown_table(headers, rows))
        print()
    print("Seams against a window centred on each probe (the same scheme's output, "
          "seam probes vs mid-window probes; error % = errors / reference units within ±r)")
    rows = []
    for cfg in configs:
        tok, wrd = local[("tokens", cfg)], local[("words", cfg)]
        t = tallies[("tokens", cfg)]
        extra = t.encoded_s / t.audio_s - 1 if t.audio_s else float("nan")
        rows.append([cfg[0], "–" if cfg[0] in ("cut", "engine") else f"{cfg[1]:g} s", pct(extra),
                     *[pct(tok.rate("all", "seam", r)) for r in radii],
                     *[pct(tok.rate("all", "mid", r)) for r in radii],
                     *[f"{pct(tok.rate(g, 'seam', 1.0))} / {pct(tok.rate(g, 'mid', 1.0))}"
                       for g in groups],
                     f"{pct(wrd.rate('all', 'seam', 1.0))} / {pct(wrd.rate('all', 'mid', 1.0))}",
                     str(tok.ref[("all", "seam", 1.0)])])
        results.append({"metric": "local", "scheme": cfg[0], "overlap_s": cfg[1],
                        "tokens": {"|".join(map(str, k)): v for k, v in tok.err.items()},
                        "tokens_ref": {"|".join(map(str, k)): v for k, v in tok.ref.items()},
                        "words": {"|".join(map(str, k)): v for k, v in wrd.err.items()},
                        "words_ref": {"|".join(map(str, k)): v for k, v in wrd.ref.items()}})
    headers = ["scheme", "overlap / context", "extra audio encoded %",
               *[f"token err % at seams ±{r:g} s" for r in radii],
               *[f"token err % mid-window ±{r:g} s" for r in radii],
               *[f"{g}: seam / mid ±1 s" for g in groups], "words (text): seam / mid ±1 s",
               "ref tokens at seams ±1 s"]
    print(common.markdown_table(headers, rows))
    print()
    print(f"machine: {common.machine_line(common.machine_info())}")
    return {"model": args.model, "inputs": [{"name": i.name, "seconds": i.samples.shape[0]
                                              / SAMPLE_RATE} for i in inputs],
            "radii": list(radii), "results": results, "per_input": per_input}


def table_title(args: argparse.Namespace, inputs: list[Input], metric: str) -> str:
    secs = sum(i.samples.shape[0] for i in inputs) / SAMPLE_RATE
    names = ", ".join(f"{i.name} {i.samples.shape[0] / SAMPLE_RATE:.0f} s" for i in inputs)
    what = ("words (same text, starts within 0.5 s)" if metric == "words"
            else "emitted tokens, text ignored (starts within one 40 ms frame)")
    return (f"Seams, model {args.model}, {what}: {len(inputs)} inputs, {secs:.0f} s ({names});"
            " errors vs one whole pass")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0], default_model="medium")
    parser.add_argument("--radius", type=_floats, default=[0.5, 1.0, 2.0],
                        help="seam radii in seconds (default 0.5,1,2; 1 is always added)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per input kind (3; quick 2)")
    parser.add_argument("--golos-rounds", type=int, default=None,
                        help="rounds of the 15 Golos clips per input (2; quick 1)")
    parser.add_argument("--synthetic-seconds", type=float, default=None,
                        help="length of each speech_like input (180; quick 90; at most 200)")
    parser.add_argument("--schemes", type=lambda s: s.split(","), default=None,
                        help=f"subset of {','.join(SCHEMES)}")
    parser.add_argument("--overlaps", type=_floats, default=None,
                        help="only these overlap/context values (seconds)")
    args = parser.parse_args(argv)
    if args.int8:
        parser.error("--int8 is not supported here (seams are about windows, not precision)")
    if args.schemes and any(s not in SCHEMES for s in args.schemes):
        parser.error(f"--schemes: one or more of {','.join(SCHEMES)}")
    if args.schemes and "cut" not in args.schemes:
        args.schemes = ["cut", *args.schemes]
    args.radius = sorted(set(args.radius) | {1.0})
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.golos_rounds = args.golos_rounds or (1 if args.quick else 2)
    args.synthetic_seconds = args.synthetic_seconds or (90.0 if args.quick else 180.0)
    payload = run(args)
    common.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
