"""Text and subtitle exports: the cue rules, SRT/WebVTT syntax, `/v1/transcribe?format=` end to
end, and `gigastt transcribe --format` printing the same bytes as the route (docs/api.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gigastt.engine.transcript import Transcript, Word
from gigastt.export import CONTENT_TYPES, FORMATS, format_from_query, render
from gigastt.subtitles import (
    MAX_CUE_SECONDS,
    MAX_LINE_CHARS,
    MAX_LINES,
    PAUSE_SECONDS,
    SENTENCE_ENDS,
    Cue,
    cues,
    layout,
)
from gigastt.testing.audio import silence, tone_sequence, wav_bytes
from tests.serverproc import ROOT, ServerProcess, parse_response, raw_exchange, serving

UNSUPPORTED = (b'{"code":"unsupported_format","error":"Unsupported format: use format=json, text,'
               b' srt or vtt, at most once"}')
SRT_STAMP = r"(\d{2}):(\d{2}):(\d{2}),(\d{3})"
VTT_STAMP = SRT_STAMP.replace(",", r"\.")


# --- independent readers of the two subtitle formats --------------------------------------------


def _ms(match: tuple[str, ...]) -> int:
    h, m, s, ms = map(int, match)
    assert m < 60 and s < 60
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def read_srt(body: str) -> list[tuple[int, int, list[str]]]:
    """(start ms, end ms, lines) of each cue; asserts the SubRip layout on the way."""
    assert "\r" not in body
    if not body:
        return []
    assert body.endswith("\n\n") and not body.endswith("\n\n\n")
    result = []
    for number, block in enumerate(body[:-2].split("\n\n"), start=1):
        head, timing, *lines = block.split("\n")
        assert head == str(number)
        match = re.fullmatch(f"{SRT_STAMP} --> {SRT_STAMP}", timing)
        assert match, timing
        assert 1 <= len(lines) <= MAX_LINES and all(lines)
        result.append((_ms(match.groups()[:4]), _ms(match.groups()[4:]), lines))
    return result


def read_vtt(body: str) -> list[tuple[int, int, list[str]]]:
    """(start ms, end ms, unescaped lines) of each cue; asserts the WebVTT layout."""
    assert "\r" not in body
    assert body.startswith("WEBVTT\n\n")
    assert body.endswith("\n\n") and not body.endswith("\n\n\n")
    result = []
    for block in body[:-2].split("\n\n")[1:]:
        timing, *lines = block.split("\n")
        match = re.fullmatch(f"{VTT_STAMP} --> {VTT_STAMP}", timing)
        assert match, timing
        assert 1 <= len(lines) <= MAX_LINES and all(lines)
        for line in lines:
            assert "<" not in line and ">" not in line and "-->" not in line
            assert re.fullmatch(r"([^&]|&(amp|lt|gt);)*", line), line
        plain = [line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
                 for line in lines]
        result.append((_ms(match.groups()[:4]), _ms(match.groups()[4:]), plain))
    return result


# --- the cue rules, property style -------------------------------------------------------------

LETTERS = "абвгдежзийклмнопрстуфхцчшщыьэюяАБВabcXYZ0123456789-'"
PUNCT = ",.?!…;:<>&"


@st.composite
def word_sequences(draw: st.DrawFn) -> tuple[Word, ...]:
    count = draw(st.integers(0, 80))
    words = []
    t = draw(st.floats(0, 3))
    for _ in range(count):
        length = draw(st.one_of(st.integers(1, 12), st.integers(1, 12), st.integers(30, 60)))
        text = draw(st.text(LETTERS, min_size=length, max_size=length))
        text += draw(st.sampled_from(["", "", "", *PUNCT]))
        t += draw(st.one_of(st.just(0.0), st.floats(0, 0.6), st.floats(0.6, 2.5)))
        span = draw(st.one_of(st.floats(0, 0.8), st.floats(0, 9)))
        words.append(Word(text, t, t + span, 0.9))
        t += span
    return tuple(words)


def _reason_to_break(before: Cue, after: Cue) -> bool:
    """Whether some rule required ``after`` to start a new cue (no needless breaks)."""
    last, first = before.words[-1], after.words[0]
    return (last.word.endswith(SENTENCE_ENDS) or first.start - last.end > PAUSE_SECONDS
            or first.end - before.words[0].start > MAX_CUE_SECONDS
            or layout([w.word for w in (*before.words, first)]) is None)


@given(word_sequences(), st.floats(0, 5))
def test_cue_rules_hold_for_any_word_sequence(words: tuple[Word, ...], tail: float) -> None:
    duration = (words[-1].end if words else 0.0) + tail
    result = cues(words, duration)
    # Words in order, none lost or duplicated, and the lines show exactly those words.
    assert [w for cue in result for w in cue.words] == list(words)
    limit_ms = round(duration * 1000)
    for index, cue in enumerate(result):
        assert cue.words and 1 <= len(cue.lines) <= MAX_LINES
        assert " ".join(cue.lines).split(" ") == [w.word for w in cue.words]
        for line in cue.lines:
            assert len(line) <= MAX_LINE_CHARS or " " not in line, line
        # A sentence end or a long pause never falls inside a cue.
        for a, b in zip(cue.words, cue.words[1:], strict=False):
            assert not a.word.endswith(SENTENCE_ENDS)
            assert b.start - a.end <= PAUSE_SECONDS
        if len(cue.words) > 1:
            assert cue.words[-1].end - cue.words[0].start <= MAX_CUE_SECONDS
        assert cue.start_ms == round(cue.words[0].start * 1000)
        assert cue.start_ms <= cue.end_ms <= cue.start_ms + round(MAX_CUE_SECONDS * 1000)
        assert cue.end_ms <= max(limit_ms, cue.start_ms)
        if index + 1 < len(result):
            following = result[index + 1]
            assert cue.end_ms <= following.start_ms  # monotonic, never overlapping
            assert _reason_to_break(cue, following)


@given(word_sequences())
def test_srt_and_vtt_syntax_for_any_word_sequence(words: tuple[Word, ...]) -> None:
    transcript = Transcript(" ".join(w.word for w in words), words,
                            (words[-1].end if words else 0.0) + 1.0)
    expected = [(c.start_ms, c.end_ms, list(c.lines)) for c in cues(words, transcript.duration)]
    assert read_srt(render(transcript, "srt")) == expected
    assert read_vtt(render(transcript, "vtt")) == expected


def _words(*texts: str, step: float = 0.3) -> tuple[Word, ...]:
    return tuple(Word(text, i * step, i * step + 0.1, 0.9) for i, text in enumerate(texts))


def test_line_length_boundary_and_even_split() -> None:
    fits = ("a" * 20, "b" * 21)  # 42 characters with the space
    assert layout(fits) == ("a" * 20 + " " + "b" * 21,)
    assert layout(("a" * 20, "b" * 22)) == ("a" * 20, "b" * 22)
    # The cut that makes the lines most even, not the first that fits.
    assert layout(("слово",) * 8) == ("слово слово слово слово",) * 2  # greedy: 7 words + 1
    words = ("один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять")
    assert layout(words) == ("один два три четыре пять", "шесть семь восемь девять")
    # On a tie the top line is the shorter one.
    assert layout(("a" * 10,) * 5) == (" ".join(["a" * 10] * 2), " ".join(["a" * 10] * 3))
    assert layout(("x" * 42, "y" * 42, "z")) is None


def test_a_word_over_42_characters_gets_a_line_of_its_own() -> None:
    long = "ы" * 50
    result = cues(_words("до", long, "после", "ещё"), 10.0)
    assert [c.lines for c in result] == [("до", long), ("после ещё",)]
    assert [c.lines for c in cues(_words(long), 10.0)] == [(long,)]


def test_cues_last_at_most_seven_seconds_and_break_at_sentences_and_pauses() -> None:
    steady = _words(*[f"w{i}" for i in range(30)], step=0.5)  # one word every 0.5 s
    result = cues(steady, 20.0)
    assert [len(c.words) for c in result] == [14, 14, 2]  # word 14 ends 7.1 s after word 0
    assert all(c.end_ms - c.start_ms <= 7000 for c in result)
    sentences = cues(_words("Да.", "Нет", "пауза"), 5.0)
    assert [c.text for c in sentences] == ["Да.", "Нет пауза"]
    paused = (Word("раз", 0.0, 0.1, 0.9), Word("два", 1.2, 1.3, 0.9))
    assert [c.text for c in cues(paused, 2.0)] == ["раз", "два"]
    # Ends: 0.6 s after the last word, cut at the next cue and at the end of the audio.
    assert [(c.start_ms, c.end_ms) for c in cues(paused, 1.5)] == [(0, 700), (1200, 1500)]


def test_vtt_escapes_markup_and_empty_transcripts() -> None:
    words = _words("a<b", "&", "-->")
    transcript = Transcript("a<b & -->", words, 2.0)
    assert render(transcript, "vtt") == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.300\n"
                                         "a&lt;b &amp; --&gt;\n\n")
    assert render(transcript, "srt") == "1\n00:00:00,000 --> 00:00:01,300\na<b & -->\n\n"
    empty = Transcript("", (), 1.0)
    assert [render(empty, fmt) for fmt in FORMATS] == [
        '{"text":"","words":[],"duration":1.0}', "\n", "", "WEBVTT\n\n"]


@pytest.mark.parametrize(("query", "expected"), [
    ("", "json"), ("format=json", "json"), ("format=srt", "srt"), ("format=%73%72t", "srt"),
    ("hotwords=a,b&format=vtt&x", "vtt"), ("format=text&other=1&other=2", "text"),
    ("format=SRT", None), ("format=", None), ("format", None), ("format=srt&format=srt", None),
    ("format=srt&format=vtt", None), ("format=srt%00", None), ("format=%ff", None),
    ("format=srt;x=1", None), ("format=+srt", None), ("Format=srt", "json"),
])
def test_format_query_parameter(query: str, expected: str | None) -> None:
    assert format_from_query(query) == expected


# --- end to end --------------------------------------------------------------------------------

PHRASE = ["▁При", "вет", ",", "▁как", "▁де", "ла"]


def _clip() -> bytes:
    """A token every 0.4 s: cues of two lines cut by the 7 s rule, then a pause and a sentence."""
    audio = np.concatenate([tone_sequence(PHRASE * 6 + ["?"], gap_s=0.2, tail_s=0.0),
                            silence(1.5), tone_sequence(["▁При", "вет", ",", "▁мир", "."])])
    return wav_bytes(audio)


@pytest.fixture(scope="module")
def server(tone_model: Path) -> Iterator[ServerProcess]:
    yield from serving(tone_model)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    path.write_bytes(_clip())
    return path


def _transcript(body: object) -> Transcript:
    assert isinstance(body, dict)
    words = tuple(Word(w["word"], w["start"], w["end"], w["confidence"]) for w in body["words"])
    return Transcript(body["text"], words, body["duration"])


def test_each_format_has_its_content_type_and_the_json_words(server: ServerProcess,
                                                              clip_file: Path) -> None:
    audio = clip_file.read_bytes()
    plain = server.request("POST", "/v1/transcribe", audio)
    assert plain.status == 200 and plain.headers["content-type"] == "application/json"
    transcript = _transcript(plain.json())
    assert transcript.text == " ".join(["Привет, как дела"] * 6) + "? Привет, мир."
    replies = {fmt: server.request("POST", f"/v1/transcribe?format={fmt}", audio)
               for fmt in FORMATS}
    for fmt, reply in replies.items():
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"] == CONTENT_TYPES[fmt].decode()
        assert reply.body == render(transcript, fmt).encode()
    assert replies["json"].body == plain.body  # byte for byte as without the parameter
    assert replies["text"].body.decode() == transcript.text + "\n"
    srt = read_srt(replies["srt"].body.decode())
    assert srt == read_vtt(replies["vtt"].body.decode())
    # Nine words fit two lines, but the tenth would end 7.2 s after the first: the 7 s rule
    # cuts both long cues; "?" ends a sentence, and a pause precedes the last one.
    assert [" ".join(lines) for _, _, lines in srt] == [
        " ".join(["Привет, как дела"] * 3), " ".join(["Привет, как дела"] * 2) + " Привет, как",
        "дела?", "Привет, мир."]
    assert [len(lines) for _, _, lines in srt] == [2, 2, 1, 1]
    assert [start for start, _, _ in srt] == [
        round(transcript.words[i].start * 1000) for i in (0, 9, 17, 18)]
    assert srt[0][1] - srt[0][0] == 7000


def test_cli_prints_the_same_bytes_as_the_route(server: ServerProcess, tone_model: Path,
                                                clip_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    for fmt in FORMATS:
        result = subprocess.run(
            [sys.executable, "-m", "gigastt", "--log-level", "off", "transcribe", "--model-dir",
             str(tone_model), "--format", fmt, str(clip_file)],
            capture_output=True, timeout=120, cwd=ROOT, env=env, check=False)
        assert result.returncode == 0, result.stderr
        reply = server.request("POST", f"/v1/transcribe?format={fmt}", clip_file.read_bytes())
        assert result.stdout == reply.body + (b"\n" if fmt == "json" else b""), fmt


@pytest.mark.parametrize("query", ["format=SRT", "format=xml", "format=", "format=srt&format=vtt",
                                   "format=%ff"])
def test_a_bad_format_is_refused_before_the_body_is_read(server: ServerProcess,
                                                         query: str) -> None:
    head = (f"POST /v1/transcribe?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    with server.connect() as sock:
        # No body byte is sent: the answer must come without it, and instead of a 100.
        status, headers, body = parse_response(raw_exchange(sock, head, until_close=True))
    assert (status, body) == (400, UNSUPPORTED)
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    # Without a body the connection stays open for the next request.
    reply = server.request("POST", f"/v1/transcribe?{query}")
    assert (reply.status, reply.body) == (400, UNSUPPORTED)
    assert "connection" not in reply.headers
    assert server.request("OPTIONS", f"/v1/transcribe?{query}").status == 204
    assert server.request("GET", "/health").status == 200
    ok = server.request("POST", "/v1/transcribe?format=text&hotwords=x", wav_bytes(silence(0.5)))
    assert (ok.status, ok.body) == (200, b"\n")
