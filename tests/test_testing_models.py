"""Tests of the generated test models (gigastt.testing.models) and synthetic audio.
Checks the graph interface (docs/architecture.md §12), determinism, onnx-asr compatibility and
decoding behaviour.
"""

from __future__ import annotations

import io
import json
import math
import os
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gigastt.testing import audio as synth
from gigastt.testing import models

onnx_asr = pytest.importorskip("onnx_asr")

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLOS = sorted((SHARED / "fixtures" / "golos").glob("golos_*.wav"))
needs_golos = pytest.mark.skipif(not GOLOS, reason="shared/fixtures/golos not present")

MODEL_FILES = (models.ENCODER, models.DECODER, models.JOINT, models.VOCAB, "config.json")
HELLO_HOW = ["▁При", "вет", ",", "▁как", "▁де", "ла", "?"]
HELLO_WORLD = ["▁При", "вет", ",", "▁мир", "."]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.write_small_model(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def tone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.write_tone_model(tmp_path_factory.mktemp("tone"))


@pytest.fixture(scope="module")
def small_asr(small_dir: Path) -> object:
    return onnx_asr.load_model("gigaam-v3-e2e-rnnt", str(small_dir))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _features(samples: np.ndarray) -> np.ndarray:
    """GigaAM v3 log-mel [64, T] via onnx-asr's NumPy preprocessor (the reference)."""
    from onnx_asr.preprocessors.numpy_preprocessor import GigaamPreprocessorNumpy

    feats, _ = GigaamPreprocessorNumpy("gigaam_v3")(samples[None], np.array([len(samples)]))
    return np.asarray(feats[0], dtype=np.float32)


# ------------------------------------------------------------------------------------------
# files and determinism


@pytest.mark.parametrize("kind", ["small", "tone"])
def test_regeneration_is_byte_identical(tmp_path: Path, kind: str) -> None:
    write = models.write_small_model if kind == "small" else models.write_tone_model
    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    for name in MODEL_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_seed_changes_weights(tmp_path: Path) -> None:
    a = models.write_small_model(tmp_path / "a", seed=0)
    b = models.write_small_model(tmp_path / "b", seed=1)
    assert (a / models.ENCODER).read_bytes() != (b / models.ENCODER).read_bytes()


def test_vocab_and_config_format(small_dir: Path, tone_dir: Path) -> None:
    for directory, vocab in ((small_dir, models.SMALL_VOCAB), (tone_dir, models.TONE_VOCAB)):
        lines = (directory / models.VOCAB).read_text(encoding="utf-8").splitlines()
        assert lines == [f"{piece} {i}" for i, piece in enumerate(vocab)]
        assert lines[0] == "<unk> 0" and lines[-1] == f"<blk> {len(vocab) - 1}"
        assert all(len(line.split(" ")) == 2 for line in lines)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        assert config == {
            "model_type": "gigaam-v3-e2e-rnnt",
            "features_size": 64,
            "subsampling_factor": 4,
            "version": "v3",
            "max_tokens_per_step": 10,
        }
    assert 38 <= len(models.SMALL_VOCAB) <= 45
    assert models.TONE_VOCAB[1:-1] == models.TONE_TOKENS


def test_max_tokens_per_step_is_written(tmp_path: Path) -> None:
    path = models.write_tone_model(tmp_path, max_tokens_per_step=3)
    assert json.loads((path / "config.json").read_text())["max_tokens_per_step"] == 3


# ------------------------------------------------------------------------------------------
# graph interface (docs/architecture.md §12)


def _io(session: ort.InferenceSession) -> tuple[dict[str, tuple[str, int]], ...]:
    return tuple(
        {t.name: (t.type, len(t.shape)) for t in tensors}
        for tensors in (session.get_inputs(), session.get_outputs())
    )


@pytest.mark.parametrize("kind", ["small", "tone"])
def test_tensor_names_dtypes_ranks(small_dir: Path, tone_dir: Path, kind: str) -> None:
    directory = small_dir if kind == "small" else tone_dir
    assert _io(_session(directory / models.ENCODER)) == (
        {"audio_signal": ("tensor(float)", 3), "length": ("tensor(int64)", 1)},
        {"encoded": ("tensor(float)", 3), "encoded_len": ("tensor(int32)", 1)},
    )
    assert _io(_session(directory / models.DECODER)) == (
        {"x": ("tensor(int64)", 2), "h.1": ("tensor(float)", 3), "c.1": ("tensor(float)", 3)},
        {"dec": ("tensor(float)", 3), "h": ("tensor(float)", 3), "c": ("tensor(float)", 3)},
    )
    assert _io(_session(directory / models.JOINT)) == (
        {"enc": ("tensor(float)", 3), "dec": ("tensor(float)", 3)},
        {"joint": ("tensor(float)", 4)},
    )


@pytest.mark.parametrize("kind", ["small", "tone"])
def test_encoder_lengths_follow_the_real_formula(small_dir: Path, tone_dir: Path,
                                                 kind: str) -> None:
    directory = small_dir if kind == "small" else tone_dir
    encoder = _session(directory / models.ENCODER)
    d_model = 32 if kind == "small" else 64
    rng = np.random.default_rng(0)
    for t in (1, 2, 3, 4, 5, 8, 9, 99, 100, 399, 401):
        feats = rng.uniform(-20, 5, size=(1, 64, t)).astype(np.float32)
        encoded, encoded_len = encoder.run(
            ["encoded", "encoded_len"], {"audio_signal": feats, "length": np.array([t])}
        )
        assert encoded.dtype == np.float32 and encoded.shape == (1, d_model, math.ceil(t / 4))
        assert encoded_len.dtype == np.int32 and encoded_len.tolist() == [math.ceil(t / 4)]


def test_decoder_and_joint_shapes(small_dir: Path) -> None:
    decoder, joint = _session(small_dir / models.DECODER), _session(small_dir / models.JOINT)
    vocab = len(models.SMALL_VOCAB)
    state = np.zeros((1, 1, 320), np.float32)
    dec, h, c = decoder.run(
        ["dec", "h", "c"], {"x": np.array([[vocab - 1]]), "h.1": state, "c.1": state}
    )
    assert dec.shape == (1, 1, 320) and h.shape == c.shape == (1, 1, 320)
    enc = np.random.default_rng(1).standard_normal((1, 32, 1)).astype(np.float32)
    (logp,) = joint.run(["joint"], {"enc": enc, "dec": dec.transpose(0, 2, 1)})
    assert logp.shape == (1, 1, 1, vocab) and logp.dtype == np.float32
    assert float(np.logaddexp.reduce(logp.reshape(-1).astype(np.float64))) == pytest.approx(
        0.0, abs=1e-5
    )  # log-softmax


# ------------------------------------------------------------------------------------------
# batching


def test_decoder_and_joint_batch_equals_single(small_dir: Path) -> None:
    decoder, joint = _session(small_dir / models.DECODER), _session(small_dir / models.JOINT)
    rng = np.random.default_rng(2)
    x = np.array([[3], [17], [len(models.SMALL_VOCAB) - 1]], dtype=np.int64)
    h0 = rng.uniform(-1, 1, (1, 3, 320)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (1, 3, 320)).astype(np.float32)
    batched = decoder.run(["dec", "h", "c"], {"x": x, "h.1": h0, "c.1": c0})
    for i in range(3):
        single = decoder.run(
            ["dec", "h", "c"], {"x": x[i : i + 1], "h.1": h0[:, i : i + 1], "c.1": c0[:, i : i + 1]}
        )
        np.testing.assert_allclose(batched[0][i : i + 1], single[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(batched[1][:, i : i + 1], single[1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(batched[2][:, i : i + 1], single[2], rtol=0, atol=1e-6)

    enc = rng.standard_normal((3, 32, 1)).astype(np.float32) * 0.3
    dec = batched[0].transpose(0, 2, 1)
    (out,) = joint.run(["joint"], {"enc": enc, "dec": dec})
    assert out.shape == (3, 1, 1, len(models.SMALL_VOCAB))
    for i in range(3):
        (one,) = joint.run(["joint"], {"enc": enc[i : i + 1], "dec": dec[i : i + 1]})
        np.testing.assert_allclose(out[i : i + 1], one, rtol=0, atol=1e-6)


def test_encoder_batch_of_equal_lengths_equals_single(small_dir: Path) -> None:
    encoder = _session(small_dir / models.ENCODER)
    feats = np.stack([_features(synth.speech_like(1.5, seed=s)) for s in range(3)])
    t = feats.shape[2]
    enc, lens = encoder.run(None, {"audio_signal": feats, "length": np.full(3, t)})
    for i in range(3):
        one, one_len = encoder.run(None, {"audio_signal": feats[i : i + 1], "length": [t]})
        np.testing.assert_allclose(enc[i : i + 1], one, rtol=0, atol=1e-5)
        assert lens[i] == one_len[0]


# ------------------------------------------------------------------------------------------
# decoding behaviour through onnx-asr (the independent reference)


@needs_golos
@pytest.mark.parametrize("clip", GOLOS, ids=lambda p: p.name)
def test_small_model_decodes_golos_to_text(small_asr: object, clip: Path) -> None:
    result = small_asr.with_timestamps().recognize(str(clip))  # type: ignore[attr-defined]
    frames = math.ceil(((_wav_frames(clip) - 320) // 160 + 1) / 4)
    assert result.text.strip()
    assert 0.05 <= len(result.tokens) / frames <= 0.6


def _wav_frames(path: Path) -> int:
    with wave.open(str(path)) as w:
        return w.getnframes()


def test_small_model_silence_decodes_to_nothing(small_asr: object) -> None:
    assert small_asr.recognize(synth.silence(3.0)) == ""  # type: ignore[attr-defined]


def test_small_model_speech_like_text_is_varied(small_asr: object) -> None:
    texts = [small_asr.recognize(synth.speech_like(3.0, seed=s)) for s in range(3)]  # type: ignore[attr-defined]
    assert all(texts) and len(set(texts)) == 3
    assert len(set("".join(texts))) >= 15


def test_saturating_variant_hits_the_cap(tmp_path: Path) -> None:
    asr = onnx_asr.load_model(
        "gigaam-v3-e2e-rnnt", str(models.write_small_model(tmp_path, blank_bias=5.0))
    )
    most = 0
    for seed in range(3):
        result = asr.with_timestamps().recognize(synth.speech_like(4.0, seed=seed))
        most = max(most, *Counter(result.timestamps).values())
    assert most == 10


@pytest.mark.parametrize(
    ("tokens", "text"), [(HELLO_HOW, "Привет, как дела?"), (HELLO_WORLD, "Привет, мир.")]
)
def test_tone_model_decodes_tone_sequences(tone_dir: Path, tokens: list[str], text: str) -> None:
    asr = onnx_asr.load_model("gigaam-v3-e2e-rnnt", str(tone_dir))
    result = asr.with_timestamps().recognize(synth.tone_sequence(tokens))
    assert result.text == text
    assert result.tokens == [t.replace("▁", " ") for t in tokens]
    assert result.timestamps == pytest.approx([0.32 + 0.2 * i for i in range(len(tokens))])
    fast = synth.tone_sequence(tokens, tone_s=0.08, gap_s=0.04, amplitude=0.05)
    assert asr.recognize(fast) == text


def test_tone_model_reads_wav_files(tone_dir: Path, tmp_path: Path) -> None:
    asr = onnx_asr.load_model("gigaam-v3-e2e-rnnt", str(tone_dir))
    path = tmp_path / "hello.wav"
    path.write_bytes(synth.wav_bytes(synth.tone_sequence(HELLO_WORLD)))
    assert asr.recognize(str(path)) == "Привет, мир."


def test_tone_frequencies_are_band_centres() -> None:
    freqs = [models.tone_frequency(t) for t in models.TONE_TOKENS]
    assert [round(f) for f in freqs] == [292, 505, 762, 1075, 1455, 1916, 2475, 3154, 3979, 4979]
    with pytest.raises(ValueError):
        models.tone_frequency("<blk>")
    with pytest.raises(ValueError):
        synth.tone_sequence(["▁мир", ".", "▁мир"])


# ------------------------------------------------------------------------------------------
# synthetic audio


def test_audio_generators() -> None:
    a = synth.speech_like(2.0, seed=4)
    assert a.dtype == np.float32 and a.shape == (32000,)
    assert np.array_equal(a, synth.speech_like(2.0, seed=4))
    assert not np.array_equal(a, synth.speech_like(2.0, seed=5))
    assert 0.29 <= float(np.abs(a).max()) <= 0.31
    s = synth.silence(0.5, rate=8000)
    assert s.dtype == np.float32 and s.shape == (4000,) and not s.any()


@pytest.mark.parametrize(
    ("fmt", "width", "tol"),
    [("pcm8", 1, 1 / 128), ("pcm16", 2, 1 / 32768), ("pcm24", 3, 1 / 2**23),
     ("pcm32", 4, 1 / 2**31), ("float32", 4, 1e-7), ("float64", 8, 0.0)],
)
def test_wav_bytes_round_trip(fmt: str, width: int, tol: float) -> None:
    import soundfile

    rng = np.random.default_rng(3)
    samples = rng.uniform(-0.9, 0.9, size=(1000, 2))
    data = synth.wav_bytes(samples, 22050, channels=2, sample_format=fmt)
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="float64", always_2d=True)
    assert rate == 22050 and decoded.shape == (1000, 2)
    np.testing.assert_allclose(decoded, samples, rtol=0, atol=tol + 1e-12)
    if fmt.startswith("pcm"):
        with wave.open(io.BytesIO(data)) as w:  # the stdlib (and so onnx-asr) reads integer PCM
            assert (w.getsampwidth(), w.getnchannels(), w.getnframes()) == (width, 2, 1000)


# ------------------------------------------------------------------------------------------
# full-size model (slow: ~15 s and 0.9 GB on disk)


@pytest.mark.skipif(
    os.environ.get("GIGASTT_FULL_MODEL_TEST") != "1", reason="set GIGASTT_FULL_MODEL_TEST=1"
)
def test_full_model(tmp_path: Path) -> None:
    path = models.write_full_model(tmp_path)
    assert (path / models.ENCODER).stat().st_size > 800_000_000
    vocab = (path / models.VOCAB).read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 1025 and vocab[-1] == "<blk> 1024"
    encoder = _session(path / models.ENCODER)
    feats = _features(synth.speech_like(4.0))
    enc, lens = encoder.run(None, {"audio_signal": feats[None], "length": [feats.shape[1]]})
    assert enc.shape == (1, 768, 100) and lens.tolist() == [100]
    asr = onnx_asr.load_model("gigaam-v3-e2e-rnnt", str(path))
    assert asr.recognize(synth.speech_like(4.0))
    assert asr.recognize(synth.silence(2.0)) == ""


def test_demo_model_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gigastt.testing.models", str(tmp_path / "m")],
                         capture_output=True, text=True, check=True, timeout=60)
    assert "wrote a small model" in out.stdout
    assert (tmp_path / "m" / "v3_e2e_rnnt_vocab.txt").is_file()
