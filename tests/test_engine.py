"""The engine on generated models: exactness against onnx-asr, decoding, long audio, load errors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gigastt.engine.decoding import greedy_decode_reference
from gigastt.engine.model import DECODER_FILE, VOCAB_FILE, GigaamModel, ModelError
from gigastt.engine.recognizer import FRAME_SAMPLES, Recognizer, Window, split_windows
from gigastt.engine.tokenizer import WORD_START
from tests.conftest import ROOT, golos_clips, read_pcm16, requires_golos

onnx_asr = pytest.importorskip("onnx_asr")

CLIPS = golos_clips()


@pytest.fixture(scope="module")
def recognizer(small_model: Path) -> Recognizer:
    return Recognizer(GigaamModel(small_model))


@pytest.fixture(scope="module")
def saturating_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gigastt.testing.models import write_small_model

    return write_small_model(tmp_path_factory.mktemp("saturating"), blank_bias=5.0)


def _onnx_asr(model_dir: Path, max_tokens: int | None = None) -> object:
    if max_tokens is not None:
        config = json.loads((model_dir / "config.json").read_text())
        config["max_tokens_per_step"] = max_tokens
        (model_dir / "config.json").write_text(json.dumps(config))
    return onnx_asr.load_model("gigaam-v3-e2e-rnnt", str(model_dir)).with_timestamps()


@requires_golos
def test_differential_against_onnx_asr_on_every_golos_clip(
    small_model: Path, recognizer: Recognizer
) -> None:
    """Token ids (as pieces), token times and text equal onnx-asr's on the same model and audio."""
    reference = _onnx_asr(small_model)
    emitted = 0
    for clip in CLIPS:
        samples = read_pcm16(clip)
        tokens = recognizer.tokens(samples)
        ref = reference.recognize(samples)  # type: ignore[attr-defined]
        pieces = [recognizer.model.vocab.pieces[t.id].replace(WORD_START, " ") for t in tokens]
        assert pieces == ref.tokens, clip.name
        assert [t.frame * 0.04 for t in tokens] == ref.timestamps, clip.name
        text = recognizer.transcribe(samples).text
        # onnx-asr drops a space before punctuation; ours keeps SentencePiece spacing.
        assert text.replace(" ", "") == ref.text.replace(" ", ""), clip.name
        emitted += len(tokens)
    assert emitted > 3 * len(CLIPS), "the generated model should emit text on speech"


@requires_golos
def test_cli_json_matches_the_engine(small_model: Path, recognizer: Recognizer) -> None:
    for clip in CLIPS[:3]:
        out = subprocess.run(
            [sys.executable, "-m", "gigastt", "transcribe", str(clip), "--model-dir",
             str(small_model), "--format", "json"],
            capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
        ).stdout
        body = json.loads(out)
        expected = recognizer.transcribe(read_pcm16(clip))
        assert list(body) == ["text", "words", "duration"]
        assert body["text"] == expected.text
        assert [(w["word"], w["start"], w["end"]) for w in body["words"]] == [
            (w.word, w.start, w.end) for w in expected.words
        ]
        assert body["duration"] == expected.duration


@requires_golos
@pytest.mark.parametrize("max_symbols", [3, 10])
def test_per_frame_cap_matches_onnx_asr_on_a_saturating_model(
    saturating_model: Path, tmp_path: Path, max_symbols: int
) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(saturating_model, model_dir)
    reference = _onnx_asr(model_dir, max_symbols)
    ours = Recognizer(GigaamModel(model_dir), max_symbols=max_symbols)
    capped = 0
    for clip in CLIPS[:6]:
        samples = read_pcm16(clip)
        tokens = ours.tokens(samples)
        ref = reference.recognize(samples)  # type: ignore[attr-defined]
        assert [t.frame * 0.04 for t in tokens] == ref.timestamps
        frames = [t.frame for t in tokens]
        capped += sum(frames.count(f) == max_symbols for f in set(frames))
    if max_symbols == 3:
        assert capped > 0, "the saturating model should hit the per-frame cap"


@requires_golos
@pytest.mark.parametrize("kind", ["small", "saturating"])
def test_batched_blank_runs_equal_the_plain_loop(
    kind: str, recognizer: Recognizer, saturating_model: Path
) -> None:
    """The span-batched joint calls give exactly the tokens of the one-call-per-step loop."""
    r = recognizer if kind == "small" else Recognizer(GigaamModel(saturating_model))
    for clip in CLIPS:
        samples = read_pcm16(clip)
        reference = greedy_decode_reference(r.model, r.encode(samples))
        assert r.tokens(samples) == reference, clip.name


@requires_golos
@pytest.mark.parametrize("kind", ["small", "saturating"])
def test_lock_step_decoding_of_many_utterances_equals_one_by_one(
    kind: str, recognizer: Recognizer, saturating_model: Path
) -> None:
    """Utterances of different lengths sharing joint/decoder calls decode as if alone."""
    r = recognizer if kind == "small" else Recognizer(GigaamModel(saturating_model))
    windows = [read_pcm16(clip) for clip in CLIPS] + [np.zeros(100, np.float32)]
    alone = [r.tokens(w) for w in windows]
    assert r.tokens_many(windows) == alone
    assert r.tokens_many(windows[::-1]) == alone[::-1]
    assert sum(map(len, alone)) > 0


def test_silence_decodes_to_nothing(recognizer: Recognizer) -> None:
    result = recognizer.transcribe(np.zeros(3 * 16000, np.float32))
    assert result.text == "" and result.words == () and result.duration == 3.0


def test_audio_shorter_than_one_window_is_empty(recognizer: Recognizer) -> None:
    assert recognizer.transcribe(np.full(200, 0.3, np.float32)).text == ""


def test_split_windows_cuts_long_audio_at_quiet_frames_on_the_frame_grid() -> None:
    rng = np.random.default_rng(1)
    samples = rng.normal(0, 0.3, 65 * 16000).astype(np.float32)
    quiet = 17 * 16000 + 5 * FRAME_SAMPLES
    samples[quiet : quiet + FRAME_SAMPLES] = 0.0
    windows = split_windows(samples)
    # 1 s of context either side of each cut: own audio at most 18 s, all of it at most 20 s.
    assert windows[0] == Window(0, quiet + FRAME_SAMPLES, before=0, after=16000)
    assert all(w.start % FRAME_SAMPLES == 0 for w in windows)
    assert all(w.audio_stop - w.audio_start <= 20 * 16000 for w in windows)
    assert [w.start for w in windows[1:]] == [w.stop for w in windows[:-1]]
    assert all(w.before == 16000 for w in windows[1:])
    assert all(w.after == 16000 for w in windows[:-1])
    assert windows[-1].stop == len(samples) and windows[-1].after == 0
    assert split_windows(samples[: 20 * 16000]) == [Window(0, 20 * 16000)]
    no_context = split_windows(samples, context_seconds=0)
    assert no_context[0] == Window(0, quiet + FRAME_SAMPLES)
    assert all(w.stop - w.start <= 20 * 16000 for w in no_context)


@requires_golos
def test_long_audio_words_are_continuous_across_windows(recognizer: Recognizer) -> None:
    clips = [read_pcm16(c) for c in CLIPS]
    gap = np.zeros(8000, np.float32)
    samples = np.concatenate([part for clip in clips for part in (clip, gap)] * 2)
    assert len(samples) > 60 * 16000
    windows = split_windows(samples)
    assert len(windows) >= 4
    result = recognizer.transcribe(samples)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and result.words[-1].end <= result.duration
    expected = []
    vocab = recognizer.model.vocab
    for window in windows:
        # Each window's audio with its context; its tokens those in its own part.
        tokens = recognizer.tokens(samples[window.audio_start : window.audio_stop])
        first = window.audio_start // FRAME_SAMPLES
        own = [t for t in tokens
               if window.start <= (first + t.frame) * FRAME_SAMPLES < window.stop]
        expected += [(w.word, round(w.start, 6)) for w in vocab.words(own, frame_offset=first)]
    assert [(w.word, round(w.start, 6)) for w in result.words] == expected


def test_missing_files_name_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"v3_e2e_rnnt_encoder.onnx.*gigastt download"):
        GigaamModel(tmp_path)


def test_wrong_graph_is_rejected_with_the_tensor_name(small_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(small_model, bad)
    shutil.copy(small_model / "v3_e2e_rnnt_joint.onnx", bad / DECODER_FILE)
    with pytest.raises(ModelError, match="decoder graph has no tensor 'x'"):
        GigaamModel(bad)


def test_garbage_model_file_is_a_clear_error(small_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(small_model, bad)
    (bad / DECODER_FILE).write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="cannot load model"):
        GigaamModel(bad)


def test_vocabulary_without_blank_is_rejected(small_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(small_model, bad)
    vocab = (bad / VOCAB_FILE).read_text(encoding="utf-8").replace("<blk>", "<xyz>")
    (bad / VOCAB_FILE).write_text(vocab, encoding="utf-8")
    with pytest.raises(ModelError, match="no <blk> token"):
        GigaamModel(bad)


def test_vocabulary_size_must_match_the_joint(small_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(small_model, bad)
    lines = (bad / VOCAB_FILE).read_text(encoding="utf-8").splitlines()
    (bad / VOCAB_FILE).write_text("\n".join([*lines[:-2], f"<blk> {len(lines) - 2}"]) + "\n",
                                  encoding="utf-8")
    with pytest.raises(ModelError, match="joint emits"):
        GigaamModel(bad)


def test_model_info_reports_sizes(recognizer: Recognizer) -> None:
    info = recognizer.model.info
    assert info.encoder == "fp32" and info.pred_hidden == 320
    assert info.vocab_size == len(recognizer.model.vocab)


# --- other WAV encodings and rates of the same clips -----------------------------------------


def _cer(hyp: str, ref: str) -> tuple[int, int]:
    row = list(range(len(ref) + 1))
    for i, ch in enumerate(hyp, 1):
        prev, row[0] = row[0], i
        for j, cr in enumerate(ref, 1):
            cur = min(row[j] + 1, row[j - 1] + 1, prev + (ch != cr))
            prev, row[j] = row[j], cur
    return row[len(ref)], len(ref)


@requires_golos
def test_lossless_encodings_give_identical_transcripts(recognizer: Recognizer) -> None:
    from gigastt.engine.audio import load_audio
    from gigastt.testing.audio import wav_bytes

    for clip in CLIPS:
        x = read_pcm16(clip)
        expected = recognizer.transcribe(x)
        for data in (wav_bytes(np.stack([x, x], 1), 16000, channels=2),
                     wav_bytes(x, 16000, sample_format="float32"),
                     wav_bytes(x, 16000, sample_format="float64"),
                     wav_bytes(x, 16000, sample_format="pcm24"),
                     wav_bytes(x, 16000, sample_format="pcm32")):
            assert recognizer.transcribe(load_audio(data)) == expected, clip.name


@requires_golos
def test_resampled_inputs_character_error_rate(recognizer: Recognizer) -> None:
    """Clips resampled to other rates and back: the CER against the 16 kHz transcript.

    The generated model normalises each mel band by the clip's own level, so it reacts to the
    loss of the 7.5–8 kHz band (and, at 8 kHz, of everything above 4 kHz) far more than a real
    model would; the bounds catch a broken resampler, the printed figures are the measurement.
    """
    from gigastt.engine.audio import load_audio, resample
    from gigastt.testing.audio import wav_bytes

    bounds = {8000: 0.8, 22050: 0.4, 44100: 0.4, 48000: 0.4}
    for rate, bound in bounds.items():
        errors = total = 0
        for clip in CLIPS:
            x = read_pcm16(clip)
            hyp = recognizer.transcribe(load_audio(wav_bytes(resample(x, 16000, rate), rate)))
            e, n = _cer(hyp.text, recognizer.transcribe(x).text)
            errors, total = errors + e, total + n
        print(f"CER {rate} Hz vs 16 kHz: {errors / total:.3f}")
        assert errors / total < bound


def test_tone_transcripts_survive_any_input_rate(tone_model: Path) -> None:
    from gigastt.engine.audio import load_audio, resample
    from gigastt.testing.audio import tone_sequence, wav_bytes

    tone = Recognizer(GigaamModel(tone_model))
    audio = tone_sequence(["▁При", "вет", ",", "▁как", "▁де", "ла", "?"])
    expected = tone.transcribe(audio)
    assert expected.text == "Привет, как дела?"
    for rate in (11025, 22050, 24000, 32000, 44100, 48000, 37800):
        for fmt in ("pcm16", "float32"):
            got = tone.transcribe(load_audio(wav_bytes(resample(audio, 16000, rate), rate,
                                                       sample_format=fmt)))
            assert got.text == expected.text, (rate, fmt)
            assert [w.start for w in got.words] == [w.start for w in expected.words]
