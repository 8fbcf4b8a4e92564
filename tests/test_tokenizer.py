"""Vocabulary parsing and the token → text/words mapping (docs/architecture.md §12).
"""

from __future__ import annotations

import numpy as np
import pytest

from gigastt.engine.tokenizer import Token, Vocabulary, VocabularyError, join_words

PIECES = ["<unk>", "▁при", "вет", ",", "▁мир", ".", "▁-", "▁", "?", "▁2026", "▁года", "<blk>"]


def vocab() -> Vocabulary:
    return Vocabulary.parse("".join(f"{p} {i}\n" for i, p in enumerate(PIECES)))


def tokens(*ids: int, start: int = 0) -> list[Token]:
    return [Token(id=i, frame=start + n * 2, logp=-0.1 * n) for n, i in enumerate(ids)]


def test_parse_reads_pieces_and_blank() -> None:
    v = vocab()
    assert len(v) == 12 and v.blank == 11 and v.unknown == 0
    assert v.pieces[7] == "▁"


def test_single_character_and_space_tokens_split_at_the_last_space() -> None:
    v = Vocabulary.parse("a b 0\n  1\n<blk> 2\n")
    assert v.pieces == ("a b", " ", "<blk>")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a 0\nb 1\n", "no <blk>"),
        ("a 0\n<blk> 2\n", "without gaps"),
        ("a 0\nb 0\n<blk> 1\n", "duplicate id"),
        ("a\n<blk> 1\n", "expected '<piece> <id>'"),
        ("a x\n", "expected '<piece> <id>'"),
        ("", "without gaps"),
    ],
)
def test_malformed_vocabularies_are_rejected(text: str, message: str) -> None:
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.parse(text)


def test_words_group_pieces_and_time_them() -> None:
    words = vocab().words(tokens(1, 2, 3, 4, 5), frame_offset=10)
    assert [w.word for w in words] == ["привет,", "мир."]
    assert words[0].start == 10 * 0.04 and words[0].end == 14 * 0.04
    assert words[1].start == 16 * 0.04 and words[1].end == 18 * 0.04
    probs = np.exp(np.array([0.0, -0.1, -0.2], np.float32))
    assert words[0].confidence == float(np.mean(probs, dtype=np.float32))
    assert join_words(words) == "привет, мир."


def test_one_token_word_has_end_equal_start_and_float_times_are_f64_products() -> None:
    (word,) = vocab().words([Token(id=4, frame=3, logp=0.0)])
    assert word.start == word.end == 3 * 0.04
    assert word.confidence == 1.0


def test_unknown_is_dropped_and_leading_continuation_starts_a_word() -> None:
    words = vocab().words(tokens(0, 2, 0, 9, 10))
    assert [w.word for w in words] == ["вет", "2026", "года"]


def test_dash_and_bare_word_marker_become_their_own_words() -> None:
    words = vocab().words(tokens(1, 2, 6, 4, 7, 8))
    assert join_words(words) == "привет - мир ?"
