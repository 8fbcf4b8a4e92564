"""The four GigaAM v3 heads (D29) on generated models: exactness against onnx-asr, file names,
head selection, INT8 for every head, and the precise load errors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gigastt.engine.ctc import ctc_greedy
from gigastt.engine.heads import AUTO, HEADS, HeadError, missing, parse_variant, present, resolve
from gigastt.engine.model import GigaamModel, ModelError
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.tokenizer import WORD_START, Token, Vocabulary
from gigastt.testing.models import CHAR_VOCAB, HEAD_FILES, write_small_model
from tests.conftest import golos_clips, read_pcm16, requires_golos

onnx_asr = pytest.importorskip("onnx_asr")

CLIPS = golos_clips()
OTHER_HEADS = ("rnnt", "ctc", "e2e_ctc")


@pytest.fixture(scope="module")
def heads_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory holding all four generated heads (as onnx-asr's repository does)."""
    path = tmp_path_factory.mktemp("heads")
    for head in HEADS:
        write_small_model(path, head=head)
    return path


@pytest.fixture(scope="module")
def recognizers(heads_dir: Path) -> dict[str, Recognizer]:
    return {name: Recognizer(GigaamModel(heads_dir, head=HEADS[name])) for name in HEADS}


def test_file_names_are_onnx_asrs() -> None:
    """Our head table and the generator agree with onnx-asr's GigaAM v3 file patterns."""
    from onnx_asr.models.gigaam import GigaamV2Ctc, GigaamV2Rnnt, GigaamV3E2eCtc, GigaamV3E2eRnnt

    classes = {"e2e_rnnt": GigaamV3E2eRnnt, "rnnt": GigaamV2Rnnt, "ctc": GigaamV2Ctc,
               "e2e_ctc": GigaamV3E2eCtc}
    import fnmatch

    for name, head in HEADS.items():
        assert HEAD_FILES[name] == head.files
        patterns = classes[name]._get_model_files()
        for pattern in patterns.values():
            assert [f for f in head.files if fnmatch.fnmatch(f, pattern)], (name, pattern)
        # onnx-asr finds the INT8 file with quantization="int8" too (its "?int8" glob)
        int8 = classes[name]._get_model_files("int8")
        first = next(iter(int8.values()))
        assert fnmatch.fnmatch(head.int8, first), (name, first)


@requires_golos
@pytest.mark.parametrize("name", OTHER_HEADS)
def test_differential_against_onnx_asr_for_each_head(
    name: str, heads_dir: Path, recognizers: dict[str, Recognizer]
) -> None:
    """Token ids (as pieces), token times and text equal onnx-asr's on every Golos clip."""
    reference = onnx_asr.load_model("gigaam-v3-" + name.replace("_", "-"), str(heads_dir))
    reference = reference.with_timestamps()
    ours = recognizers[name]
    emitted = 0
    for clip in CLIPS:
        samples = read_pcm16(clip)
        tokens = ours.tokens(samples)
        ref = reference.recognize(samples)
        pieces = [ours.model.vocab.pieces[t.id].replace(WORD_START, " ") for t in tokens]
        assert pieces == ref.tokens, clip.name
        assert [t.frame * 0.04 for t in tokens] == ref.timestamps, clip.name
        assert ours.transcribe(samples).text == ref.text, clip.name
        emitted += len(tokens)
    assert emitted > 3 * len(CLIPS), "the generated model should emit text on speech"


def test_generators_are_deterministic(tmp_path: Path) -> None:
    def digest(path: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in path.iterdir()}

    for head in OTHER_HEADS:
        a, b = tmp_path / f"{head}-a", tmp_path / f"{head}-b"
        write_small_model(a, head=head)
        write_small_model(b, head=head)
        assert digest(a) == digest(b)
        assert sorted(digest(a)) == sorted([*HEAD_FILES[head], "config.json"])
        config = json.loads((a / "config.json").read_text())
        assert config["model_type"] == "gigaam-v3-" + head.replace("_", "-")


def test_letter_vocabulary_is_the_real_v3_vocab_format(heads_dir: Path) -> None:
    lines = (heads_dir / "v3_vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"{WORD_START} 0" and lines[1] == "а 1" and lines[32] == "я 32"
    assert lines[-1] == "<blk> 33" and len(lines) == len(CHAR_VOCAB) == 34


def test_letter_vocabulary_joins_words_at_the_space_token() -> None:
    """The plain heads: ``▁`` separates words and belongs to neither (times of the letters)."""
    vocab = Vocabulary(CHAR_VOCAB, separator=True)
    ids = {p: i for i, p in enumerate(CHAR_VOCAB)}
    seq = [(WORD_START, 1), ("д", 2), ("а", 3), (WORD_START, 5), (WORD_START, 6), ("н", 8),
           ("е", 9), (WORD_START, 12)]
    words = vocab.words([Token(ids[p], f, 0.0) for p, f in seq])
    assert [(w.word, w.start, w.end) for w in words] == [("да", 0.08, 0.12),
                                                         ("не", 0.32, 0.36)]
    with pytest.raises(ValueError, match="space token"):
        Vocabulary(["а", "<blk>"], separator=True)


def test_ctc_greedy_collapses_repeats_and_drops_blanks() -> None:
    blank = 3
    path = [0, 0, 3, 0, 1, 1, 3, 3, 2, 2, 1]
    log_probs = np.full((len(path), 4), -10.0, np.float32)
    log_probs[np.arange(len(path)), path] = -0.1
    tokens = ctc_greedy(log_probs, blank)
    assert [(t.id, t.frame) for t in tokens] == [(0, 0), (0, 3), (1, 4), (2, 8), (1, 10)]
    assert ctc_greedy(np.zeros((0, 4), np.float32), blank) == []


def test_auto_picks_the_only_head_or_e2e_rnnt(heads_dir: Path, tmp_path: Path) -> None:
    assert resolve(heads_dir, AUTO).name == "e2e_rnnt"
    assert [h.name for h in present(heads_dir)] == list(HEADS)
    for head in OTHER_HEADS:
        alone = tmp_path / head
        write_small_model(alone, head=head)
        assert resolve(alone, AUTO).name == head
        assert resolve(alone, "e2e_rnnt").name == "e2e_rnnt"  # explicit wins, even if absent
    assert resolve(tmp_path / "empty", AUTO).name == "e2e_rnnt"  # to be downloaded
    both = tmp_path / "both"
    write_small_model(both, head="ctc")
    write_small_model(both, head="rnnt")
    assert resolve(both, AUTO).name == "rnnt"  # e2e_rnnt absent: the next preferred
    with pytest.raises(HeadError, match="unknown model variant 'tdt'"):
        parse_variant("tdt")


def test_variant_pointing_at_a_missing_head_names_its_files(tmp_path: Path) -> None:
    """Two heads present, the third asked for: the error names exactly its missing files."""
    for head in ("e2e_rnnt", "ctc"):
        write_small_model(tmp_path, head=head)
    with pytest.raises(ModelError) as info:
        GigaamModel(tmp_path, head=HEADS["rnnt"])
    assert str(info.value) == (
        f"model files missing in {tmp_path} for model variant rnnt: v3_rnnt_encoder.onnx,"
        " v3_rnnt_decoder.onnx, v3_rnnt_joint.onnx (the directory holds: e2e_rnnt, ctc)"
        " (run `gigastt download --variant rnnt` to fetch them)")
    assert missing(tmp_path, HEADS["e2e_ctc"]) == ["v3_e2e_ctc.onnx", "v3_e2e_ctc_vocab.txt"]


@pytest.mark.parametrize("name", ["ctc", "e2e_ctc"])
def test_ctc_vocabulary_must_match_the_output_width(name: str, heads_dir: Path,
                                                    tmp_path: Path) -> None:
    head = HEADS[name]
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in head.files:
        shutil.copy(heads_dir / f, bad / f)
    lines = (bad / head.vocab).read_text(encoding="utf-8").splitlines()
    # one token fewer: the blank takes the last real token's id
    (bad / head.vocab).write_text("\n".join([*lines[:-2], f"<blk> {len(lines) - 2}"]) + "\n",
                                  encoding="utf-8")
    with pytest.raises(ModelError) as info:
        GigaamModel(bad, head=head)
    assert str(info.value) == (f"{head.encoder} emits {len(lines)} scores per frame but"
                               f" {head.vocab} has {len(lines) - 1} tokens")


def test_ctc_width_is_probed_when_not_declared(heads_dir: Path, tmp_path: Path) -> None:
    """A CTC graph whose output width is dynamic is run once at load time to read it."""
    import onnx

    head = HEADS["ctc"]
    bad = tmp_path / "dyn"
    bad.mkdir()
    model = onnx.load(str(heads_dir / head.encoder))
    dim = model.graph.output[0].type.tensor_type.shape.dim[2]
    dim.ClearField("dim_value")
    dim.dim_param = "vocab"
    onnx.save(model, str(bad / head.encoder))
    shutil.copy(heads_dir / head.vocab, bad / head.vocab)
    assert GigaamModel(bad, head=head).info.vocab_size == 34
    (bad / head.vocab).write_text("▁ 0\nа 1\n<blk> 2\n", encoding="utf-8")
    with pytest.raises(ModelError, match=r"v3_ctc\.onnx emits 34 scores per frame but"
                                         r" v3_vocab\.txt has 3 tokens"):
        GigaamModel(bad, head=head)


def test_ctc_graph_contract_is_checked(heads_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "swapped"
    bad.mkdir()
    shutil.copy(heads_dir / "v3_rnnt_joint.onnx", bad / "v3_ctc.onnx")
    shutil.copy(heads_dir / "v3_vocab.txt", bad / "v3_vocab.txt")
    with pytest.raises(ModelError, match="ctc graph has no tensor 'features'"):
        GigaamModel(bad, head=HEADS["ctc"])


def test_model_info_reports_the_head(recognizers: dict[str, Recognizer]) -> None:
    for name, r in recognizers.items():
        info = r.model.info
        assert info.head.name == name and info.encoder == "fp32"
        assert info.pred_hidden == (0 if name.endswith("ctc") else 320)
        assert info.vocab_size == len(r.model.vocab)


@requires_golos
def test_int8_for_every_head(heads_dir: Path, tmp_path: Path) -> None:
    """`gigastt quantize --model-variant` writes each head's INT8 file; it is then used and
    still decodes (the text may differ from FP32: quantization is lossy)."""
    pytest.importorskip("onnx")
    from gigastt.store.quantize import quantize_encoder

    samples = read_pcm16(CLIPS[0])
    for name in OTHER_HEADS:
        head = HEADS[name]
        work = tmp_path / name
        work.mkdir()
        for f in head.files:
            shutil.copy(heads_dir / f, work / f)
        assert quantize_encoder(work, head=head) == work / head.int8
        (work / head.encoder).unlink()  # INT8-only directories load too (D53)
        model = GigaamModel(work, head=head)
        assert model.info.encoder == "int8"
        assert Recognizer(model).tokens(samples) is not None


def test_silence_decodes_to_nothing_on_every_head(recognizers: dict[str, Recognizer]) -> None:
    for r in recognizers.values():
        assert r.transcribe(np.zeros(2 * 16000, np.float32)).text == ""
        assert r.tokens(np.zeros(100, np.float32)) == []
