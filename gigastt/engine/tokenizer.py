"""The GigaAM vocabulary file and the mapping from emitted tokens to text and timed words.

Text follows SentencePiece (``▁`` starts a word); words group tokens the way the reference does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gigastt.engine.transcript import Word

BLANK = "<blk>"
UNKNOWN = "<unk>"
WORD_START = "\u2581"
FRAME_SECONDS = 0.04


class VocabularyError(ValueError):
    """The vocabulary file is not a GigaAM vocabulary."""


@dataclass(frozen=True, slots=True)
class Token:
    """One emitted token: vocabulary id, encoder frame index and log-probability."""

    id: int
    frame: int
    logp: float


class Vocabulary:
    """Token pieces by id, with the blank id.

    ``separator``: the plain heads' letter vocabulary (D29), where a bare ``▁`` is the space
    between words and belongs to neither; in SentencePiece vocabularies (the e2e heads) a ``▁``
    starts the word it is part of.
    """

    __slots__ = ("blank", "pieces", "separator", "space", "unknown")

    def __init__(self, pieces: Sequence[str], *, separator: bool = False) -> None:
        self.pieces = tuple(pieces)
        if BLANK not in self.pieces:
            raise VocabularyError(f"vocabulary has no {BLANK} token")
        self.blank = self.pieces.index(BLANK)
        self.unknown = self.pieces.index(UNKNOWN) if UNKNOWN in self.pieces else -1
        self.space = self.pieces.index(WORD_START) if WORD_START in self.pieces else -1
        if separator and self.space < 0:
            raise VocabularyError(f"a letter vocabulary needs the space token {WORD_START}")
        self.separator = separator

    def __len__(self) -> int:
        return len(self.pieces)

    @classmethod
    def parse(cls, text: str, *, separator: bool = False) -> Vocabulary:
        """Parse ``<piece> <id>`` lines; ids must be exactly 0..V-1."""
        by_id: dict[int, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            piece, sep, ident = line.rpartition(" ")
            if not sep or not piece or not ident.isdigit():
                raise VocabularyError(f"line {number}: expected '<piece> <id>'")
            if int(ident) in by_id:
                raise VocabularyError(f"line {number}: duplicate id {ident}")
            by_id[int(ident)] = piece
        if sorted(by_id) != list(range(len(by_id))) or not by_id:
            raise VocabularyError("ids must be 0..V-1 without gaps")
        return cls([by_id[i] for i in range(len(by_id))], separator=separator)

    @classmethod
    def load(cls, path: Path, *, separator: bool = False) -> Vocabulary:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise VocabularyError(f"{path.name} is not UTF-8") from exc
        return cls.parse(text, separator=separator)

    def words(self, tokens: Iterable[Token], *, frame_offset: int = 0) -> list[Word]:
        """Group tokens into words: each ``▁`` starts a word, other text joins the current one.

        ``start``/``end`` are the times of the first/last token of the word; ``confidence`` is
        the float32 mean of the token probabilities.
        """
        groups: list[tuple[list[str], list[Token]]] = []
        for token in tokens:
            if token.id in (self.blank, self.unknown):
                continue
            if self.separator and token.id == self.space:
                groups.append(([], []))  # the space ends a word; the next letter starts one
                continue
            head, *starts = self.pieces[token.id].split(WORD_START)
            if head or not starts:
                if not groups:
                    groups.append(([], []))
                groups[-1][0].append(head)
                groups[-1][1].append(token)
            for part in starts:
                groups.append(([part], [token]))
        words: list[Word] = []
        for parts, members in groups:
            text = "".join(parts)
            if not text:
                continue
            probs = np.exp(np.array([m.logp for m in members], dtype=np.float32))
            words.append(
                Word(
                    word=text,
                    start=(members[0].frame + frame_offset) * FRAME_SECONDS,
                    end=(members[-1].frame + frame_offset) * FRAME_SECONDS,
                    confidence=float(np.mean(probs, dtype=np.float32)),
                )
            )
        return words


def join_words(words: Iterable[Word]) -> str:
    """The transcript text: words joined by single spaces."""
    return " ".join(w.word for w in words)
