"""Greedy RNN-T decoding (the model authors' algorithm), for one utterance or several in lock-step.

Blank runs are scored in batched joint calls and several utterances share each joint and decoder
call; both are exact because every batch row is computed independently (guarded by tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gigastt.engine.hotwords import Hotwords
from gigastt.engine.model import GigaamModel
from gigastt.engine.tokenizer import Token

MAX_SYMBOLS_PER_FRAME = 10
# Frames scored per joint call while looking for the next token: two after an emission (tokens
# come every few frames in speech), doubling through silence. On a full-size model this halves
# decoding time against one call per frame (docs/benchmarks.md); extra rows are cheap, calls not.
_FIRST_SPAN, _MAX_SPAN = 2, 256

F32 = npt.NDArray[np.float32]


@dataclass(slots=True)
class _Row:
    """Decoding state of one utterance."""

    frames: F32  # [T', D, 1]: encoder frames, channels first per frame
    dec: F32  # [H, 1]: decoder output for the last emitted token (cached through blank runs)
    h: F32  # [1, 1, H]
    c: F32
    t: int = 0
    emitted: int = 0  # tokens already emitted on frame t
    span: int = _FIRST_SPAN
    tokens: list[Token] = field(default_factory=list)


def greedy_decode_many(
    model: GigaamModel, encoded: Sequence[F32], *, max_symbols: int = MAX_SYMBOLS_PER_FRAME
) -> list[list[Token]]:
    """Decode each ``[D, T']`` array (valid frames only) into tokens, all in lock-step.

    Per utterance: up to ``max_symbols`` tokens per frame; the decoder state advances only on
    emitted tokens. Each round makes one joint call for every utterance still running (each
    scoring a span of frames with its cached decoder output) and one decoder call for those that
    emitted a token.
    """
    blank = model.vocab.blank
    hidden = model.pred_hidden
    start = model.decode_step(
        np.full((len(encoded), 1), blank, dtype=np.int64),
        np.zeros((1, len(encoded), hidden), dtype=np.float32),
        np.zeros((1, len(encoded), hidden), dtype=np.float32),
    )
    rows = [
        _Row(frames=np.ascontiguousarray(e.T)[:, :, None], dec=start[0][i].T.copy(),
             h=start[1][:, i : i + 1].copy(), c=start[2][:, i : i + 1].copy())
        for i, e in enumerate(encoded)
    ]
    active = [row for row in rows if row.frames.shape[0] > 0]
    while active:
        spans = [min(row.span, row.frames.shape[0] - row.t) for row in active]
        pairs = list(zip(active, spans, strict=True))
        enc = np.concatenate([row.frames[row.t : row.t + n] for row, n in pairs])
        dec = np.concatenate(
            [np.broadcast_to(row.dec, (n, hidden, 1)) for row, n in pairs]
        )
        scores = model.joint_scores(enc, dec)
        emitting: list[_Row] = []
        offset = 0
        for row, n in pairs:
            block = scores[offset : offset + n]
            offset += n
            hits = np.flatnonzero(block.argmax(axis=1) != blank)
            if hits.size == 0:
                row.t += n
                row.emitted = 0
                row.span = min(row.span * 2, _MAX_SPAN)
                continue
            j = int(hits[0])
            if j:
                row.t += j
                row.emitted = 0
            k = int(block[j].argmax())
            row.tokens.append(Token(id=k, frame=row.t, logp=float(block[j, k])))
            row.emitted += 1
            row.span = _FIRST_SPAN
            emitting.append(row)
        if emitting:
            tokens = np.array([[row.tokens[-1].id] for row in emitting], dtype=np.int64)
            h = np.concatenate([row.h for row in emitting], axis=1)
            c = np.concatenate([row.c for row in emitting], axis=1)
            dec_out, h_out, c_out = model.decode_step(tokens, h, c)
            for i, row in enumerate(emitting):
                row.dec = dec_out[i].T.copy()
                row.h, row.c = h_out[:, i : i + 1].copy(), c_out[:, i : i + 1].copy()
                if row.emitted == max_symbols:
                    row.t += 1
                    row.emitted = 0
        active = [row for row in active if row.t < row.frames.shape[0]]
    return [row.tokens for row in rows]


def greedy_decode(
    model: GigaamModel, encoded: F32, *, max_symbols: int = MAX_SYMBOLS_PER_FRAME
) -> list[Token]:
    """Decode one ``[D, T']`` array into tokens.

    The same algorithm as ``greedy_decode_many`` for a single utterance, without its per-round
    bookkeeping: for one utterance the Python overhead per joint call is what costs.
    """
    blank, hidden = model.vocab.blank, model.pred_hidden
    frames = np.ascontiguousarray(encoded.T)[:, :, None]
    total = frames.shape[0]
    token_in = np.full((1, 1), blank, dtype=np.int64)
    zeros = np.zeros((1, 1, hidden), dtype=np.float32)
    dec, h, c = model.decode_step(token_in, zeros, zeros)
    dec_col = np.ascontiguousarray(dec.transpose(0, 2, 1))
    tokens: list[Token] = []
    t = emitted = 0
    span = _FIRST_SPAN
    while t < total:
        n = min(span, total - t)
        block = model.joint_scores(frames[t : t + n],
                                   dec_col if n == 1 else np.repeat(dec_col, n, axis=0))
        hits = np.flatnonzero(block.argmax(axis=1) != blank)
        if hits.size == 0:
            t += n
            emitted = 0
            span = min(span * 2, _MAX_SPAN)
            continue
        j = int(hits[0])
        if j:
            t += j
            emitted = 0
        k = int(block[j].argmax())
        tokens.append(Token(id=k, frame=t, logp=float(block[j, k])))
        token_in[0, 0] = k
        dec, h, c = model.decode_step(token_in, h, c)
        dec_col = np.ascontiguousarray(dec.transpose(0, 2, 1))
        emitted += 1
        span = _FIRST_SPAN
        if emitted == max_symbols:
            t += 1
            emitted = 0
    return tokens


def greedy_decode_biased(
    model: GigaamModel, encoded: F32, hotwords: Hotwords, *,
    max_symbols: int = MAX_SYMBOLS_PER_FRAME,
) -> list[Token]:
    """``greedy_decode`` with shallow fusion towards ``hotwords`` (D29).

    At each step the model's best token among those that continue a phrase prefix (or start a
    phrase) is taken instead of its overall best when its log-probability plus the phrase's
    boost beats that best: the boost decides *whether* a phrase goes on, the model still picks
    *which* continuation. At most one such biased choice per encoder frame, and every token,
    biased or not, counts against the per-frame cap, so decoding cannot loop; ``▁`` is matched
    but never boosted (docs/architecture.md "Hotword biasing").
    """
    blank, hidden = model.vocab.blank, model.pred_hidden
    frames = np.ascontiguousarray(encoded.T)[:, :, None]
    total = frames.shape[0]
    token_in = np.full((1, 1), blank, dtype=np.int64)
    zeros = np.zeros((1, 1, hidden), dtype=np.float32)
    dec, h, c = model.decode_step(token_in, zeros, zeros)
    dec_col = np.ascontiguousarray(dec.transpose(0, 2, 1))
    tokens: list[Token] = []
    match = hotwords.start()
    ids, boosts = hotwords.arrays(match)
    reach = hotwords.max_boost
    cont: npt.NDArray[np.bool_] | None = None  # ids as a mask over the vocabulary, when needed
    t = emitted = 0
    biased_frame = -1
    span = _FIRST_SPAN
    while t < total:
        n = min(span, total - t)
        block = model.joint_scores(frames[t : t + n],
                                   dec_col if n == 1 else np.repeat(dec_col, n, axis=0))
        top = block.argmax(axis=1)
        pick, biased = top, None
        # Cheap bound first: most steps have no continuation within the largest boost of the
        # best token, and then nothing below changes.
        if ids.size:
            sub = block[:, ids]
            best_value = block.max(axis=1)
            near = sub.max(axis=1) + reach > best_value
            if near.any():
                if cont is None:
                    cont = hotwords.mask(match, block.shape[1])
                # Only where the model's best token is not a continuation already (then it is
                # emitted as usual) can a continuation be a biased choice, once a frame.
                near &= ~cont[top]
            if near.any():
                rows = np.arange(n)
                best = sub.argmax(axis=1)
                biased = near & (sub[rows, best] + boosts[best] > best_value) \
                    & (rows + t != biased_frame)
                pick = np.where(biased, ids[best], top)
        hits = np.flatnonzero(pick != blank)
        if hits.size == 0:
            t += n
            emitted = 0
            span = min(span * 2, _MAX_SPAN)
            continue
        j = int(hits[0])
        if j:
            t += j
            emitted = 0
        k = int(pick[j])
        if biased is not None and biased[j]:
            biased_frame = t
        tokens.append(Token(id=k, frame=t, logp=float(block[j, k])))
        match = hotwords.step(match, k)
        ids, boosts = hotwords.arrays(match)
        cont = None
        token_in[0, 0] = k
        dec, h, c = model.decode_step(token_in, h, c)
        dec_col = np.ascontiguousarray(dec.transpose(0, 2, 1))
        emitted += 1
        span = _FIRST_SPAN
        if emitted == max_symbols:
            t += 1
            emitted = 0
    return tokens


def greedy_decode_reference(
    model: GigaamModel, encoded: F32, *, max_symbols: int = MAX_SYMBOLS_PER_FRAME
) -> list[Token]:
    """The plain frame-by-frame loop, one joint call per step: the oracle the batched paths are
    tested against."""
    blank, hidden = model.vocab.blank, model.pred_hidden
    frames = np.ascontiguousarray(encoded.T)[:, :, None]
    token_in = np.full((1, 1), blank, dtype=np.int64)
    dec, h, c = model.decode_step(token_in, np.zeros((1, 1, hidden), np.float32),
                                  np.zeros((1, 1, hidden), np.float32))
    tokens: list[Token] = []
    for t in range(frames.shape[0]):
        for _ in range(max_symbols):
            row = model.joint_scores(frames[t : t + 1], dec.transpose(0, 2, 1))[0]
            k = int(row.argmax())
            if k == blank:
                break
            tokens.append(Token(id=k, frame=t, logp=float(row[k])))
            token_in[0, 0] = k
            dec, h, c = model.decode_step(token_in, h, c)
    return tokens
