"""Hotword biasing (D29): phrase lists parsed and bounded, tokenised by the head's vocabulary into
a prefix trie over token ids, and the pure matching state the decoders consult (no I/O here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gigastt.config import (
    HOTWORD_MAX_CHARS,
    HOTWORD_MAX_WEIGHT,
    HOTWORDS_FILE_MAX,
    HOTWORDS_REQUEST_MAX,
    read_small_file,
)
from gigastt.engine.tokenizer import BLANK, UNKNOWN, WORD_START, Vocabulary

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


class HotwordsError(ValueError):
    """A phrase list breaks a rule; ``code`` is the API error code (docs/api.md "Hotwords")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


TOO_MANY = "too_many_hotwords"
TOO_LONG = "hotword_phrase_too_long"
BAD_FILE = "invalid_hotwords_file"


@dataclass(frozen=True, slots=True)
class Phrase:
    text: str
    weight: float = 1.0


def _check_length(text: str, where: str) -> None:
    if len(text) > HOTWORD_MAX_CHARS:
        raise HotwordsError(TOO_LONG, f"{where} is {len(text)} characters long; a hotword phrase"
                                      f" may have at most {HOTWORD_MAX_CHARS}")


def parse_file(data: bytes, name: str = "hotwords file") -> list[Phrase]:
    """``--hotwords-file``: UTF-8, one phrase per line, optionally a TAB and a weight (0, 10];
    blank lines are skipped. At most HOTWORDS_FILE_MAX phrases of HOTWORD_MAX_CHARS characters.
    Messages name the line, never its text (hotwords may be private: docs/runbook.md)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise HotwordsError(BAD_FILE, f"{name} is not UTF-8 (line {line}, byte {exc.start})"
                            ) from None
    phrases: list[Phrase] = []
    for number, row in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        phrase, tab, weight_text = row.partition("\t")
        phrase = phrase.strip()
        if not phrase:
            continue
        _check_length(phrase, f"{name} line {number}")
        weight = 1.0
        if tab:
            try:
                weight = float(weight_text.strip())
            except ValueError:
                weight = math.nan
            if not 0 < weight <= HOTWORD_MAX_WEIGHT:  # NaN fails too
                raise HotwordsError(BAD_FILE, f"{name} line {number}: the weight after the TAB"
                                              f" must be a number above 0 and at most"
                                              f" {HOTWORD_MAX_WEIGHT:g}")
        phrases.append(Phrase(phrase, weight))
        if len(phrases) > HOTWORDS_FILE_MAX:
            raise HotwordsError(TOO_MANY, f"{name} has more than {HOTWORDS_FILE_MAX} phrases")
    return phrases


# 1024 phrases of 64 characters (up to 4 bytes each) and their weights fit with room to spare.
MAX_FILE_BYTES = 1 << 20


def read_file(path: Path) -> list[Phrase]:
    """``--hotwords-file``: read (a regular file of at most 1 MiB) and ``parse_file``; every
    failure is a HotwordsError naming the file (docs/runbook.md "Hotwords")."""
    def failed(reason: str | None) -> HotwordsError:
        return HotwordsError(BAD_FILE, f"cannot read hotwords file {path}: {reason}")

    return parse_file(read_small_file(path, MAX_FILE_BYTES, failed), f"hotwords file {path}")


def parse_list(items: Iterable[str], limit: int = HOTWORDS_REQUEST_MAX) -> list[Phrase]:
    """A request's phrases (already split): stripped, empty ones dropped, then bounded."""
    phrases = [Phrase(item.strip()) for item in items if item.strip()]
    if len(phrases) > limit:
        raise HotwordsError(TOO_MANY, f"at most {limit} hotword phrases per request")
    for phrase in phrases:
        _check_length(phrase.text, "a hotword phrase")
    return phrases


def parse_comma_list(text: str) -> list[Phrase]:
    """The REST ``hotwords`` parameter and the OpenAI ``prompt``: comma-separated phrases."""
    return parse_list(text.split(","))


# ---------------------------------------------------------------------------------------------
# tokenisation and the trie


def _variants(text: str) -> list[str]:
    """As written, then lower-cased, then with ё→е (the order the vocabulary is tried in)."""
    lower = text.lower()
    return list(dict.fromkeys((text, lower, lower.replace("ё", "е"))))


def tokenise(text: str, vocab: Vocabulary, pieces: dict[str, int] | None = None
             ) -> list[int] | None:
    """Token ids of a phrase (words joined by ``▁``, one before the first), in the fewest
    pieces of ``vocab``; None when no variant of it can be written with the vocabulary."""
    if pieces is None:
        pieces = _piece_ids(vocab)
    longest = max((len(p) for p in pieces), default=0)
    for variant in _variants(text):
        target = WORD_START + WORD_START.join(variant.split())
        n = len(target)
        best: list[tuple[int, int] | None] = [None] * (n + 1)  # (pieces, last id) per prefix
        best[0] = (0, -1)
        back = [0] * (n + 1)
        for i in range(n):
            here = best[i]
            if here is None:
                continue
            for j in range(i + 1, min(n, i + longest) + 1):
                ident = pieces.get(target[i:j])
                if ident is None:
                    continue
                there = best[j]
                if there is None or here[0] + 1 < there[0]:
                    best[j] = (here[0] + 1, ident)
                    back[j] = i
        if best[n] is not None:
            ids: list[int] = []
            j = n
            while j > 0:
                entry = best[j]
                assert entry is not None
                ids.append(entry[1])
                j = back[j]
            return ids[::-1]
    return None


def _piece_ids(vocab: Vocabulary) -> dict[str, int]:
    return {p: i for i, p in enumerate(vocab.pieces) if p not in (BLANK, UNKNOWN) and p}


@dataclass(eq=False, slots=True)
class Node:
    """A phrase prefix: children by token id, the boost of the token that reached it (0 for
    the word-boundary token), the sum of boosts from the root, and whether a phrase ends here."""

    depth: int = 0
    boost: float = 0.0
    cum: float = 0.0
    terminal: bool = False
    children: dict[int, Node] = field(default_factory=dict)
    # Boosted continuations from here (this node's children, then the root's) as (ids, boosts),
    # built lazily and set in one assignment: lanes sharing the trie race only to build equal
    # arrays, never see half of them (the trie itself is never changed after compile).
    cont: tuple[I64, F32] | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """Where decoding stands in the trie: the matched prefix, the bonus already settled on it
    (the sum of boosts up to the last phrase end passed on the way), and the token that has
    just completed a phrase, if one has: that token straight again starts nothing (a phrase
    is never repeated on the strength of one sound)."""

    node: Node
    base: float = 0.0
    repeat: int = -1


class Hotwords:
    """A compiled phrase list for one vocabulary; immutable once built, shared by the lanes."""

    def __init__(self, root: Node, start: Node, boundary: int, boost: float, max_weight: float,
                 size: int, skipped: int) -> None:
        self.root = root
        self._start = start
        self.boundary = boundary
        self.boost = boost
        self.max_boost = boost * max_weight
        self.size = size  # phrases in the trie
        self.skipped = skipped  # phrases the vocabulary cannot write
        # Continuation masks by (node, repeat), built lazily; a race between the two lanes
        # builds one twice at worst.
        self._masks: dict[tuple[Node, int], npt.NDArray[np.bool_]] = {}

    @classmethod
    def compile(cls, phrases: Sequence[Phrase], vocab: Vocabulary, boost: float) -> Hotwords:
        """The trie of ``phrases``' token ids; each token of a phrase is boosted by ``boost``
        times the phrase's weight (the highest weight where phrases share a prefix), the
        word-boundary token ``▁`` is matched but never boosted."""
        pieces = _piece_ids(vocab)
        boundary = pieces.get(WORD_START, -1)
        root = Node()
        size = skipped = 0
        max_weight = 1.0
        for phrase in phrases:
            ids = tokenise(phrase.text, vocab, pieces)
            if not ids:
                skipped += 1
                continue
            size += 1
            max_weight = max(max_weight, phrase.weight)
            node = root
            for ident in ids:
                gain = 0.0 if ident == boundary else boost * phrase.weight
                child = node.children.get(ident)
                if child is None:
                    child = Node(depth=node.depth + 1, boost=gain, cum=node.cum + gain)
                    node.children[ident] = child
                elif gain > child.boost:
                    _raise_boost(child, gain - child.boost)
                node = child
            node.terminal = True
        # An utterance starts at a word boundary: with a letter vocabulary the first word has
        # no ``▁`` before it, so decoding starts as if one had been matched.
        start = root.children.get(boundary, root) if vocab.separator else root
        return cls(root, start, boundary, boost, max_weight, size, skipped)

    def __len__(self) -> int:
        return self.size

    def start(self) -> Match:
        return Match(self._start)

    def continuations(self, match: Match | Node) -> I64:
        return self.arrays(match)[0]

    def arrays(self, match: Match | Node) -> tuple[I64, F32]:
        """Token ids that would extend a phrase from here (continuing this prefix or starting
        a phrase anew), with their boosts; the word-boundary token is never among them."""
        node = match.node if isinstance(match, Match) else match
        if isinstance(match, Match) and match.repeat >= 0:
            all_ids, all_boosts = self.arrays(node)
            keep = all_ids != match.repeat
            return all_ids[keep], all_boosts[keep]
        cached = node.cont
        if cached is None:
            boosts: dict[int, float] = {}
            for source in (node, self.root) if node is not self.root else (node,):
                for ident, child in source.children.items():
                    if child.boost > 0 and ident not in boosts:
                        boosts[ident] = child.boost
            cached = (np.fromiter(boosts.keys(), dtype=np.int64, count=len(boosts)),
                      np.fromiter(boosts.values(), dtype=np.float32, count=len(boosts)))
            node.cont = cached
        return cached

    def mask(self, match: Match, size: int) -> npt.NDArray[np.bool_]:
        """``arrays(match)``'s ids as a boolean mask over a vocabulary of ``size`` tokens."""
        ids = self.arrays(match)[0]
        key = (match.node, match.repeat)
        cached = self._masks.get(key)
        if cached is None or cached.shape[0] != size:
            cached = np.zeros(size, dtype=bool)
            cached[ids] = True
            self._masks[key] = cached
        return cached

    def step(self, match: Match, token: int) -> Match:
        """The match after ``token`` is emitted (blanks do not move it)."""
        return self.advance(match, 0.0, token)[0]

    def advance(self, match: Match, bonus: float, token: int) -> tuple[Match, float]:
        """``step``, with a hypothesis's bonus: it gains the token's boost while the phrase goes
        on and gives back what an abandoned prefix had gained (CTC beam search)."""
        node = match.node
        if token == match.repeat:
            # Matches nothing, and keeps guarding: the same sound again is not a new phrase.
            return match, bonus
        child = node.children.get(token)
        if child is None:
            bonus -= node.cum - match.base  # the unfinished prefix earns nothing
            node = self.root
            child = node.children.get(token)
            if child is None:
                return Match(self.root), bonus
            base = 0.0
        else:
            base = match.base
        bonus += child.boost
        if child.terminal:
            if not child.children:
                # The phrase is complete: start anew, but not with this same token.
                return Match(self.root, repeat=token), bonus
            base = child.cum
        return Match(child, base), bonus

    def settled(self, match: Match, bonus: float) -> float:
        """The bonus without the unfinished prefix's part (the end of the audio)."""
        return bonus - (match.node.cum - match.base)


def _raise_boost(node: Node, delta: float) -> None:
    """A heavier phrase shares this prefix: raise it and its subtree's sums."""
    node.boost += delta
    stack = [node]
    while stack:
        item = stack.pop()
        item.cum += delta
        stack.extend(item.children.values())


def compile_phrases(phrases: Sequence[Phrase] | None, vocab: Vocabulary,
                    boost: float) -> Hotwords | None:
    """``Hotwords.compile``, or None when there is nothing to bias towards."""
    if not phrases:
        return None
    compiled = Hotwords.compile(phrases, vocab, boost)
    return compiled if len(compiled) else None
