"""The four GigaAM v3 recognition heads under onnx-asr's file names, and which one a model
directory serves (``--model-variant``; docs/decisions.md D29, docs/architecture.md "Heads").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HeadKind = Literal["rnnt", "ctc"]


@dataclass(frozen=True, slots=True)
class Head:
    """One head: its graphs (RNN-T: encoder, decoder, joint; CTC: one model), its vocabulary,
    the INT8 name of its first graph, and whether its vocabulary is letters with ``▁`` as the
    space (the plain heads) rather than SentencePiece pieces (the e2e heads)."""

    name: str
    model_id: str
    display: str
    kind: HeadKind
    graphs: tuple[str, ...]
    vocab: str
    int8: str
    char_level: bool

    @property
    def encoder(self) -> str:
        """The FP32 file that INT8 quantization replaces (the encoder, or the CTC model)."""
        return self.graphs[0]

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the head needs (the FP32 names)."""
        return (*self.graphs, self.vocab)


E2E_RNNT = Head("e2e_rnnt", "gigaam-v3-e2e-rnnt", "GigaAM v3 RNN-T", "rnnt",
                ("v3_e2e_rnnt_encoder.onnx", "v3_e2e_rnnt_decoder.onnx", "v3_e2e_rnnt_joint.onnx"),
                "v3_e2e_rnnt_vocab.txt", "v3_e2e_rnnt_encoder_int8.onnx", False)
RNNT = Head("rnnt", "gigaam-v3-rnnt", "GigaAM v3 RNN-T (plain text)", "rnnt",
            ("v3_rnnt_encoder.onnx", "v3_rnnt_decoder.onnx", "v3_rnnt_joint.onnx"),
            "v3_vocab.txt", "v3_rnnt_encoder_int8.onnx", True)
CTC = Head("ctc", "gigaam-v3-ctc", "GigaAM v3 CTC (plain text)", "ctc", ("v3_ctc.onnx",),
           "v3_vocab.txt", "v3_ctc_int8.onnx", True)
E2E_CTC = Head("e2e_ctc", "gigaam-v3-e2e-ctc", "GigaAM v3 CTC", "ctc", ("v3_e2e_ctc.onnx",),
               "v3_e2e_ctc_vocab.txt", "v3_e2e_ctc_int8.onnx", False)

# The order is auto's preference when a directory holds several heads: the default head first.
HEADS: dict[str, Head] = {h.name: h for h in (E2E_RNNT, RNNT, CTC, E2E_CTC)}
DEFAULT_HEAD = E2E_RNNT
AUTO = "auto"
VARIANTS: tuple[str, ...] = (AUTO, *HEADS)
VARIANT_ENV = "GIGASTT_MODEL_VARIANT"
# Every file name any head downloads (an operator's checksum list may name any of them).
ALL_FILES: frozenset[str] = frozenset(name for h in HEADS.values() for name in h.files)


class HeadError(ValueError):
    """An unknown ``--model-variant`` value."""


def missing(model_dir: Path, head: Head) -> list[str]:
    """The head's files absent from ``model_dir``; its INT8 file stands in for the FP32 one
    (INT8-only directories, docs/decisions.md D53)."""
    return [name for name in head.files if not (model_dir / name).is_file()
            and not (name == head.encoder and (model_dir / head.int8).is_file())]


def present(model_dir: Path) -> list[Head]:
    """The heads whose files are all in ``model_dir``, in preference order."""
    return [h for h in HEADS.values() if not missing(model_dir, h)]


def parse_variant(value: str) -> str:
    """A ``--model-variant`` / ``GIGASTT_MODEL_VARIANT`` value, checked."""
    variant = value.strip().lower()
    if variant not in VARIANTS:
        raise HeadError(f"unknown model variant {value!r}: use one of {', '.join(VARIANTS)}")
    return variant


def resolve(model_dir: Path, variant: str = AUTO) -> Head:
    """The head to load: the one named, or for ``auto`` the only one present, the preferred one
    (``e2e_rnnt`` first) when several are, and ``e2e_rnnt`` (to be downloaded) when none is."""
    if variant != AUTO:
        return HEADS[parse_variant(variant)]
    found = present(model_dir)
    return found[0] if found else DEFAULT_HEAD


def describe_missing(model_dir: Path, head: Head) -> str:
    """The error text for a head whose files are not all there, naming them and what is there."""
    absent = missing(model_dir, head)
    others = [h.name for h in present(model_dir) if h is not head]
    text = f"model files missing in {model_dir} for model variant {head.name}: {', '.join(absent)}"
    if others:
        text += f" (the directory holds: {', '.join(others)})"
    return text
