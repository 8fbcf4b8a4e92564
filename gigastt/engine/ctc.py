"""CTC decoding for the ``ctc`` and ``e2e_ctc`` heads: greedy (argmax, repeats collapsed, blanks
dropped), and with hotwords a small best-path beam search biased by the phrase trie (D29).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gigastt.engine.hotwords import Hotwords, Match
from gigastt.engine.tokenizer import Token

F32 = npt.NDArray[np.float32]

# Hypotheses kept per frame (only with hotwords: greedy decoding has no beam).
BEAM = 6


def ctc_greedy(log_probs: F32, blank: int) -> list[Token]:
    """Best token per frame, repeats collapsed, blanks dropped: onnx-asr's decoding exactly.

    A token's frame is the first of its run; its ``logp`` the log-probability there.
    """
    if log_probs.shape[0] == 0:
        return []
    best = log_probs.argmax(axis=1)
    keep = (best != blank) & (np.diff(best, prepend=blank) != 0)
    frames = np.flatnonzero(keep)
    return [Token(id=int(best[t]), frame=int(t), logp=float(log_probs[t, best[t]]))
            for t in frames]


@dataclass(slots=True)
class _Hyp:
    """One collapsed prefix: its best path ending in blank / in its last token (log domain;
    -inf when none), the tokens of each, and the phrase-bias state along it."""

    blank_score: float
    token_score: float
    blank_tokens: tuple[Token, ...]
    token_tokens: tuple[Token, ...]
    state: Match
    bonus: float  # committed bonus plus the bonus of the phrase prefix being matched

    def score(self) -> float:
        return max(self.blank_score, self.token_score) + self.bonus

    def best_tokens(self) -> tuple[Token, ...]:
        return self.blank_tokens if self.blank_score >= self.token_score else self.token_tokens


_NEG = float("-inf")


def _offer(fresh: dict[tuple[int, ...], _Hyp], prefix: tuple[int, ...], ends_blank: bool,
           score: float, tokens: tuple[Token, ...], state: Match, bonus: float) -> None:
    """A path into ``prefix`` (ending in blank or in its last token): kept if it is the best."""
    hyp = fresh.get(prefix)
    if hyp is None:
        hyp = _Hyp(_NEG, _NEG, (), (), state, bonus)
        fresh[prefix] = hyp
    if ends_blank and score > hyp.blank_score:
        hyp.blank_score, hyp.blank_tokens = score, tokens
    elif not ends_blank and score > hyp.token_score:
        hyp.token_score, hyp.token_tokens = score, tokens


def ctc_biased(log_probs: F32, blank: int, hotwords: Hotwords) -> list[Token]:
    """Best-path (Viterbi) prefix beam search with the phrase bonus of ``hotwords``.

    A path's score is the sum of its frames' log-probabilities plus the boosts of the phrase
    tokens it emits while they continue a phrase prefix; a prefix abandoned before its phrase
    ends gives its bonus back (docs/architecture.md "Hotword biasing"). Scoring the best path
    rather than the sum over paths keeps the unbiased winner the greedy result: with no bonus
    in play, the argmax path outscores every other, so a list of unrelated phrases leaves the
    text exactly as greedy decoding gives it.
    """
    root = hotwords.start()
    beams: dict[tuple[int, ...], _Hyp] = {(): _Hyp(0.0, _NEG, (), (), root, 0.0)}
    for t in range(log_probs.shape[0]):
        row = log_probs[t]
        # The frame's best token, and the phrase tokens that could go on from a hypothesis
        # within the largest boost of it: under best-path scoring any other token only costs.
        top = int(row.argmax())
        floor = float(row[top]) - hotwords.max_boost
        candidates = {top}
        for hyp in beams.values():
            ids = hotwords.continuations(hyp.state)
            if ids.size:
                candidates.update(ids[row[ids] >= floor].tolist())
        candidates.discard(blank)
        blank_lp = float(row[blank])
        fresh: dict[tuple[int, ...], _Hyp] = {}
        offer = functools.partial(_offer, fresh)
        for prefix, hyp in beams.items():
            best = max(hyp.blank_score, hyp.token_score)
            offer(prefix, True, best + blank_lp, hyp.best_tokens(), hyp.state, hyp.bonus)
            last = prefix[-1] if prefix else -1
            for k in candidates:
                lp = float(row[k])
                if k == last:
                    # The same token again without a blank between: the run goes on.
                    offer(prefix, False, hyp.token_score + lp, hyp.token_tokens, hyp.state,
                          hyp.bonus)
                    source, tokens = hyp.blank_score, hyp.blank_tokens
                else:
                    source, tokens = best, hyp.best_tokens()
                if source == _NEG:
                    continue
                state, bonus = hotwords.advance(hyp.state, hyp.bonus, k)
                offer((*prefix, k), False, source + lp, (*tokens, Token(k, t, lp)), state, bonus)
        ranked = sorted(fresh.items(), key=lambda item: item[1].score(), reverse=True)
        beams = dict(ranked[:BEAM])
    # The end of the audio abandons any unfinished phrase: its bonus does not count.
    best_hyp = max(beams.values(), key=lambda h: max(h.blank_score, h.token_score)
                   + hotwords.settled(h.state, h.bonus))
    return list(best_hyp.best_tokens())
