"""Greedy RNN-T decoding of one utterance's encoder frames (the model authors' algorithm).

Blank runs are scored in batched joint calls, which is exact because the decoder state is fixed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gigastt.engine.model import GigaamModel
from gigastt.engine.tokenizer import Token

MAX_SYMBOLS_PER_FRAME = 10
# Rows per batched joint call during a blank run: small after an emission (tokens come every few
# frames in speech), doubling through long silences. The per-call overhead dominates, not rows.
_FIRST_SPAN, _MAX_SPAN = 8, 256

F32 = npt.NDArray[np.float32]


def greedy_decode(
    model: GigaamModel,
    encoded: F32,
    *,
    max_symbols: int = MAX_SYMBOLS_PER_FRAME,
    batch_blank_runs: bool = True,
) -> list[Token]:
    """Decode ``encoded`` ``[D, T']`` (valid frames only) into tokens.

    Up to ``max_symbols`` tokens per frame; the decoder state advances only on emitted tokens
    and its output is cached through blank runs.
    """
    blank = model.vocab.blank
    hidden = model.pred_hidden
    frames = encoded.shape[1]
    enc_frames = np.ascontiguousarray(encoded.T)[:, :, None]  # [T', D, 1]
    token_in = np.full((1, 1), blank, dtype=np.int64)
    h = np.zeros((1, 1, hidden), dtype=np.float32)
    c = np.zeros((1, 1, hidden), dtype=np.float32)
    dec, h_next, c_next = model.decode_step(token_in, h, c)
    dec_col = np.ascontiguousarray(dec.transpose(0, 2, 1))  # [1, H, 1]

    tokens: list[Token] = []
    t = 0
    span = _FIRST_SPAN
    while t < frames:
        if batch_blank_runs:
            end = min(frames, t + span)
            scores = model.joint_scores(
                enc_frames[t:end], np.broadcast_to(dec_col, (end - t, hidden, 1))
            )
            best = scores.argmax(axis=1)
            hits = np.flatnonzero(best != blank)
            if hits.size == 0:
                t = end
                span = min(span * 2, _MAX_SPAN)
                continue
            t += int(hits[0])
            row = scores[hits[0]]
            span = _FIRST_SPAN
        else:
            row = model.joint_scores(enc_frames[t : t + 1], dec_col)[0]
        k = int(row.argmax())
        emitted = 0
        while k != blank:
            tokens.append(Token(id=k, frame=t, logp=float(row[k])))
            token_in[0, 0] = k
            dec, h_next, c_next = model.decode_step(token_in, h_next, c_next)
            dec_col = np.ascontiguousarray(dec.transpose(0, 2, 1))
            emitted += 1
            if emitted == max_symbols:
                break
            row = model.joint_scores(enc_frames[t : t + 1], dec_col)[0]
            k = int(row.argmax())
        t += 1
    return tokens
