"""Hotword biasing (D29) on generated models: phrases missed by a small margin are recovered,
unrelated lists change nothing, the guards hold (per-frame cap, one biased choice per frame,
``▁`` never boosted, no phrase repeated), lists never leak between windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigastt.config import HOTWORDS_BOOST
from gigastt.engine.ctc import ctc_greedy
from gigastt.engine.decoding import greedy_decode_biased
from gigastt.engine.heads import HEADS
from gigastt.engine.hotwords import (
    Hotwords,
    HotwordsError,
    Phrase,
    compile_phrases,
    parse_comma_list,
    parse_file,
    tokenise,
)
from gigastt.engine.model import GigaamModel
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.tokenizer import WORD_START, Token, Vocabulary
from gigastt.testing.audio import tone_sequence
from gigastt.testing.models import (
    CHAR_VOCAB,
    SMALL_VOCAB,
    TONE_TOKENS,
    TONE_VOCAB,
    write_small_model,
    write_tone_model,
)
from tests.conftest import golos_clips, read_pcm16, requires_golos

SENTENCE = ["▁При", "вет", ",", "▁как", "▁де", "ла", "?"]


@pytest.fixture(scope="module")
def tone_heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recognizer]:
    path = tmp_path_factory.mktemp("tone-heads")
    write_tone_model(path, max_tokens_per_step=2)
    write_tone_model(path, head="e2e_ctc")
    return {name: Recognizer(GigaamModel(path, head=HEADS[name]), max_symbols=2)
            for name in ("e2e_rnnt", "e2e_ctc")}


def _hw(recognizer: Recognizer, *phrases: str, boost: float = HOTWORDS_BOOST) -> Hotwords:
    compiled = compile_phrases([Phrase(p) for p in phrases], recognizer.model.vocab, boost)
    assert compiled is not None
    return compiled


def _pieces(recognizer: Recognizer, tokens: Sequence[Token]) -> list[str]:
    return [recognizer.model.vocab.pieces[t.id] for t in tokens]


@pytest.mark.parametrize("head", ["e2e_rnnt", "e2e_ctc"])
@pytest.mark.parametrize("weak", [1, 4])  # a continuation ("вет"), a phrase start ("▁де")
def test_a_phrase_missed_by_a_small_margin_is_recovered(head: str, weak: int,
                                                        tone_heads: dict[str, Recognizer]
                                                        ) -> None:
    r = tone_heads[head]
    gains = [1.0] * len(SENTENCE)
    gains[weak] = 0.1
    audio = tone_sequence(SENTENCE, gains=gains)
    plain = r.tokens(audio)
    assert _pieces(r, plain) == [p for i, p in enumerate(SENTENCE) if i != weak]
    phrase = "Привет" if weak == 1 else "дела"
    assert _pieces(r, r.tokens(audio, _hw(r, phrase))) == SENTENCE
    # A list without the phrase gives exactly the unbiased tokens (ids, frames, scores).
    assert r.tokens(audio, _hw(r, "мир", "- мир")) == plain
    # Too weak a tone is not invented by a modest boost.
    gains[weak] = 0.0
    silent = tone_sequence(SENTENCE, gains=gains)
    assert r.tokens(silent, _hw(r, phrase)) == r.tokens(silent)


def test_biased_and_plain_windows_decode_together_without_leaking(
        tone_heads: dict[str, Recognizer]) -> None:
    for r in tone_heads.values():
        weak = tone_sequence(SENTENCE, gains=[1, 0.1, 1, 1, 1, 1, 1])
        other = tone_sequence(["▁как", "▁мир", "."])
        hw = _hw(r, "Привет")
        alone = [r.tokens(weak), r.tokens(weak, hw), r.tokens(other), r.tokens(other, hw)]
        together = r.tokens_many([weak, weak, other, other], [None, hw, None, hw])
        assert together == alone and alone[0] != alone[1] and alone[2] == alone[3]


# --- the guards, on a scripted transducer -----------------------------------------------------


class _Scripted:
    """A stand-in for GigaamModel: ``scores[t][last]`` are frame t's log-probabilities after
    ``last`` was emitted (blank before any); frames carry their index, the decoder its token."""

    def __init__(self, vocab: Vocabulary, scores: dict[tuple[int, int], dict[int, float]],
                 frames: int) -> None:
        self.vocab = vocab
        self.pred_hidden = 1
        self.scores = scores
        self.frames = frames

    def decode_step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dec = tokens.astype(np.float32).reshape(-1, 1, 1)
        return dec, h, c

    def joint_scores(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        out = np.full((enc.shape[0], len(self.vocab)), -30.0, np.float32)
        for i in range(enc.shape[0]):
            t, last = int(enc[i, 0, 0]), int(dec[i, 0, 0])
            out[i, self.vocab.blank] = -0.1
            for k, lp in self.scores.get((t, last), {}).items():
                out[i, k] = lp
        return out

    def encoded(self) -> np.ndarray:
        return np.arange(self.frames, dtype=np.float32)[None, :]


def test_one_biased_choice_per_frame_and_the_cap() -> None:
    """Two phrase tokens just below blank on one frame: only the first is taken there (one
    biased choice per frame); a token the model prefers anyway is not a biased choice."""
    vocab = Vocabulary(SMALL_VOCAB)
    ids = {p: i for i, p in enumerate(SMALL_VOCAB)}
    blank = vocab.blank
    scores = {(0, blank): {ids["▁ска"]: -1.5},  # 1.4 below blank: a biased choice
              (0, ids["▁ска"]): {ids["ла"]: -1.5},  # again below blank: not on this frame
              (1, ids["▁ска"]): {ids["ла"]: -1.5}}  # the next frame may take it
    model = _Scripted(vocab, scores, 3)
    hw = compile_phrases([Phrase("скала")], vocab, 3.0)
    assert hw is not None and tokenise("скала", vocab) == [ids["▁ска"], ids["ла"]]
    tokens = greedy_decode_biased(model, model.encoded(), hw)  # type: ignore[arg-type]
    assert [(t.id, t.frame) for t in tokens] == [(ids["▁ска"], 0), (ids["ла"], 1)]
    # The model's own best token is emitted as usual, and the cap still ends the frame.
    loop = {(0, blank): {ids["▁ска"]: -0.01}, (0, ids["▁ска"]): {ids["ла"]: -0.01},
            (0, ids["ла"]): {ids["▁ска"]: -0.01}}
    model = _Scripted(vocab, loop, 1)
    tokens = greedy_decode_biased(model, model.encoded(), hw, max_symbols=3)  # type: ignore
    assert [t.frame for t in tokens] == [0, 0, 0]


def test_the_word_boundary_token_is_matched_not_boosted() -> None:
    vocab = Vocabulary(CHAR_VOCAB, separator=True)
    ids = {p: i for i, p in enumerate(CHAR_VOCAB)}
    assert tokenise("Да нет", vocab) == [ids[WORD_START], ids["д"], ids["а"], ids[WORD_START],
                                         ids["н"], ids["е"], ids["т"]]
    hw = compile_phrases([Phrase("да нет")], vocab, 3.0)
    assert hw is not None
    start = hw.start()  # an utterance starts at a word boundary: "д" goes on from there
    assert hw.continuations(start).tolist() == [ids["д"]]
    after_da = hw.step(hw.step(start, ids["д"]), ids["а"])
    assert hw.continuations(after_da).tolist() == []  # only "▁" goes on, and it is not boosted
    blank = vocab.blank
    # "да" then a frame where "▁" is just below blank: it is not pulled up by the boost
    scores = {(0, blank): {ids["д"]: -0.01}, (0, ids["д"]): {ids["а"]: -0.01},
              (1, ids["а"]): {ids[WORD_START]: -1.0}}
    model = _Scripted(vocab, scores, 2)
    tokens = greedy_decode_biased(model, model.encoded(), hw)  # type: ignore[arg-type]
    assert [t.id for t in tokens] == [ids["д"], ids["а"]]


def test_tokenisation_as_written_then_lower_then_yo() -> None:
    tone = Vocabulary(TONE_VOCAB)
    assert tokenise("Привет", tone) is not None and tokenise("привет", tone) is None
    letters = Vocabulary(CHAR_VOCAB, separator=True)
    assert tokenise("Ёлка", letters) == tokenise("елка", letters)
    assert tokenise("GigaAM", letters) is None
    hw = compile_phrases([Phrase("GigaAM"), Phrase("ёж")], letters, 3.0)
    assert hw is not None and (len(hw), hw.skipped) == (1, 1)


def test_phrase_lists_are_parsed_and_bounded() -> None:
    assert parse_comma_list(" Сбер, ,GigaAM ,") == [Phrase("Сбер"), Phrase("GigaAM")]
    assert parse_comma_list("") == []
    with pytest.raises(HotwordsError) as info:
        parse_comma_list(",".join(["a"] * 65))
    assert info.value.code == "too_many_hotwords"
    with pytest.raises(HotwordsError) as info:
        parse_comma_list("a" * 65)
    assert info.value.code == "hotword_phrase_too_long"
    assert parse_file("Сбер\t2.5\n\n  мир  \n".encode()) == [Phrase("Сбер", 2.5), Phrase("мир")]


# --- properties over random phrase lists and clips --------------------------------------------


def _count(seq: Sequence[int], sub: Sequence[int]) -> int:
    n = len(sub)
    return sum(1 for i in range(len(seq) - n + 1) if list(seq[i : i + n]) == list(sub))


_CLIP = st.lists(st.sampled_from(TONE_TOKENS), min_size=1, max_size=7).filter(
    lambda toks: all(t not in toks[max(0, i - 2) : i] for i, t in enumerate(toks)))
_PHRASE = st.lists(st.sampled_from(TONE_TOKENS), min_size=1, max_size=3).map(
    lambda toks: "".join(toks).replace(WORD_START, " ").strip())


@settings(max_examples=60)
@given(clip=_CLIP, gains=st.lists(st.sampled_from([1.0, 0.3, 0.12, 0.1, 0.08]), min_size=7,
                                  max_size=7),
       phrases=st.lists(_PHRASE, min_size=1, max_size=6),
       boost=st.sampled_from([1.0, HOTWORDS_BOOST, 6.0]))
def test_no_output_exceeds_the_cap_or_repeats_a_phrase(
        tone_heads: dict[str, Recognizer], clip: list[str], gains: list[float],
        phrases: list[str], boost: float) -> None:
    audio = tone_sequence(clip, gains=gains[: len(clip)])
    spoken = [TONE_VOCAB.index(t) for t in clip]
    for r in tone_heads.values():
        hw = compile_phrases([Phrase(p) for p in phrases], r.model.vocab, boost)
        if hw is None:
            continue
        tokens = r.tokens(audio, hw)
        frames = [t.frame for t in tokens]
        assert all(frames.count(f) <= r.max_symbols for f in set(frames))
        out = [t.id for t in tokens]
        for phrase in phrases:
            ids = tokenise(phrase, r.model.vocab)
            if ids:
                assert _count(out, ids) <= _count(spoken, ids), (phrase, clip)


@requires_golos
def test_ctc_beam_search_with_a_negligible_boost_is_greedy_decoding(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CTC beam search (run only with hotwords) scores best paths, so where no bonus
    matters it returns exactly the greedy tokens and frames: checked on every Golos clip with
    phrases taken from the clip's own text and a boost too small to move any decision."""
    path = tmp_path_factory.mktemp("e2e-ctc")
    write_small_model(path, head="e2e_ctc")
    r = Recognizer(GigaamModel(path, head=HEADS["e2e_ctc"]))
    checked = 0
    for clip in golos_clips():
        log_probs = r.encode(read_pcm16(clip))
        greedy = ctc_greedy(log_probs, r.model.vocab.blank)
        words = r.model.vocab.words(greedy)
        if not words:
            continue
        hw = _hw(r, *(w.word for w in words[:3]), boost=1e-6)
        biased = r.tokens(read_pcm16(clip), hw)
        assert [(t.id, t.frame) for t in biased] == [(t.id, t.frame) for t in greedy], clip.name
        checked += 1
    assert checked > 5


@pytest.mark.parametrize(("weight", "ok"), [
    ("10", True), ("0.5", True), ("10.5", False), ("1e300", False), ("inf", False),
    ("nan", False), ("0", False), ("-2", False), ("heavy", False),
])
def test_file_weights_are_bounded(weight: str, ok: bool) -> None:
    from gigastt.engine.hotwords import parse_file

    data = f"сбер\t{weight}\n".encode()
    if ok:
        assert parse_file(data)[0].weight == float(weight)
    else:
        with pytest.raises(HotwordsError, match=r"line 1: the weight after the TAB must be a"
                                                 r" number above 0 and at most 10$"):
            parse_file(data)
