"""A GigaAM v3 head's model files, loaded once into onnxruntime sessions, their contract checked.

Tensors are addressed by name; sizes (encoder width, LSTM, vocabulary) are read from the graphs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gigastt.engine.heads import DEFAULT_HEAD, Head, describe_missing
from gigastt.engine.heads import missing as head_missing
from gigastt.engine.tokenizer import Vocabulary, VocabularyError

log = logging.getLogger(__name__)

# The default head's file names (heads.py owns them all).
ENCODER_FILE, DECODER_FILE, JOINT_FILE = DEFAULT_HEAD.graphs
ENCODER_INT8_FILE = DEFAULT_HEAD.int8
VOCAB_FILE = DEFAULT_HEAD.vocab
MODEL_FILES = DEFAULT_HEAD.files

# name -> (onnx element type, rank); batch and time axes are dynamic in the export.
_CONTRACT: dict[str, tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]]]] = {
    "encoder": (
        {"audio_signal": ("tensor(float)", 3), "length": ("tensor(int64)", 1)},
        {"encoded": ("tensor(float)", 3), "encoded_len": ("tensor(int32)", 1)},
    ),
    "decoder": (
        {"x": ("tensor(int64)", 2), "h.1": ("tensor(float)", 3), "c.1": ("tensor(float)", 3)},
        {"dec": ("tensor(float)", 3), "h": ("tensor(float)", 3), "c": ("tensor(float)", 3)},
    ),
    "joint": (
        {"enc": ("tensor(float)", 3), "dec": ("tensor(float)", 3)},
        {"joint": ("tensor(float)", 4)},
    ),
    # The CTC heads' one graph (onnx-asr's GigaamV2Ctc): log-probabilities [B, T', V].
    "ctc": (
        {"features": ("tensor(float)", 3), "feature_lengths": ("tensor(int64)", 1)},
        {"log_probs": ("tensor(float)", 3)},
    ),
}
# Feature frames fed once at load time to read a CTC graph's output width when it is not declared.
_PROBE_FRAMES = 64

F32 = npt.NDArray[np.float32]


class ModelError(RuntimeError):
    """The model directory is missing files or holds files that are not GigaAM v3 RNN-T."""


def missing_files(model_dir: Path) -> list[str]:
    """Names of the required model files absent from ``model_dir``.

    The INT8 encoder stands in for the FP32 one: a directory with it and without the 885 MB
    FP32 encoder is complete (INT8-only, for small boxes: docs/decisions.md D53).
    """
    return head_missing(model_dir, DEFAULT_HEAD)


def session_options(threads: int) -> ort.SessionOptions:
    """Options shared by the three sessions.

    Each call comes from one of the executor's lane threads and runs its graph in order, so
    inter-op parallelism buys nothing; intra-op threads (0 = onnxruntime's choice, one per core)
    parallelise the encoder's matrix work.
    """
    # Local-first: the Linux wheel carries a telemetry client; make sure it stays silent.
    ort.disable_telemetry_events()
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # onnxruntime plans a memory pattern per input shape; passes and windows rarely repeat a
    # shape, so planning buys no speed and leaves the arena holding blocks sized for earlier
    # shapes (INT8 encoder, 12 s and 20.5 s windows alternating: +86 MB with it, +42 MB without).
    options.enable_mem_pattern = False
    # Idle intra-op workers sleep instead of spinning: live passes come a fraction of a second
    # apart, and spinning between them cost 1.7x the CPU per pass (docs/benchmarks.md §4b).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The arena and weight prepacking stay on (docs/benchmarks.md §7, INT8-only full-size model):
    # without prepacking RSS is 80-165 MB lower, but the greedy loop's FP32 joint/decoder calls
    # take 1.3-1.4x as long (the encoder up to 1.07x); without the arena, or with initializers
    # allocated outside it, nothing was saved. With these defaults 4 live streams peak at 537 MB.
    options.log_severity_level = 3
    return options


def _check(kind: str, session: ort.InferenceSession) -> None:
    want_in, want_out = _CONTRACT[kind]
    for want, have in ((want_in, session.get_inputs()), (want_out, session.get_outputs())):
        found = {arg.name: (arg.type, len(arg.shape)) for arg in have}
        for name, (dtype, rank) in want.items():
            if name not in found:
                raise ModelError(f"{kind} graph has no tensor {name!r} (found {sorted(found)})")
            if found[name] != (dtype, rank):
                raise ModelError(
                    f"{kind} tensor {name!r} is {found[name][0]} of rank {found[name][1]},"
                    f" expected {dtype} of rank {rank}"
                )


def _static_dim(session: ort.InferenceSession, name: str, axis: int) -> int | None:
    for arg in session.get_inputs():
        if arg.name == name and isinstance(arg.shape[axis], int):
            return int(arg.shape[axis])
    return None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    encoder: str  # "int8" or "fp32"
    vocab_size: int
    pred_hidden: int  # 0 for the CTC heads (no prediction network)
    head: Head = DEFAULT_HEAD  # D29: which of the four GigaAM v3 heads


class GigaamModel:
    """One head's sessions (RNN-T: encoder, decoder, joint; CTC: one graph) plus the vocabulary;
    immutable once loaded, so the executor's two lanes may call it at the same time
    (onnxruntime's ``run`` is thread-safe)."""

    decoder: ort.InferenceSession | None
    joint: ort.InferenceSession | None

    def __init__(self, model_dir: Path, *, threads: int = 0, head: Head = DEFAULT_HEAD) -> None:
        self.head = head
        absent = head_missing(model_dir, head)
        if absent and head is DEFAULT_HEAD:
            raise ModelError(
                f"model files missing in {model_dir}: {', '.join(absent)}"
                " (run `gigastt download` to fetch them)"
            )
        if absent:
            raise ModelError(f"{describe_missing(model_dir, head)} (run `gigastt download"
                             f" --variant {head.name}` to fetch them)")
        int8 = model_dir / head.int8
        encoder_path = int8 if int8.is_file() else model_dir / head.encoder
        options = session_options(threads)
        providers = ["CPUExecutionProvider"]
        self.decoder = self.joint = None
        try:
            self.vocab = Vocabulary.load(model_dir / head.vocab, separator=head.char_level)
            self.encoder = ort.InferenceSession(str(encoder_path), options, providers=providers)
            if head.kind == "rnnt":
                self.decoder = ort.InferenceSession(
                    str(model_dir / head.graphs[1]), options, providers=providers
                )
                self.joint = ort.InferenceSession(
                    str(model_dir / head.graphs[2]), options, providers=providers
                )
        except VocabularyError as exc:
            raise ModelError(f"{head.vocab}: {exc}") from exc
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"cannot load model from {model_dir}: {exc}") from exc
        if head.kind == "ctc":
            hidden = 0
            _check("ctc", self.encoder)
            self._check_ctc_width(encoder_path.name)
        else:
            for kind in ("encoder", "decoder", "joint"):
                _check(kind, getattr(self, kind))
            assert self.decoder is not None and self.joint is not None
            found = _static_dim(self.decoder, "h.1", 2)
            if found is None:
                raise ModelError("decoder input 'h.1' has no static hidden size")
            hidden = found
            vocab_out = self.joint.get_outputs()[0].shape[-1]
            if isinstance(vocab_out, int) and vocab_out != len(self.vocab):
                raise ModelError(
                    f"joint emits {vocab_out} scores but the vocabulary has {len(self.vocab)}"
                    " tokens"
                )
        self.pred_hidden = hidden
        self.info = ModelInfo(
            encoder="int8" if encoder_path == int8 else "fp32",
            vocab_size=len(self.vocab),
            pred_hidden=hidden,
            head=head,
        )
        log.info(
            "model loaded from %s (variant %s, encoder %s, vocab %d, pid %d)",
            model_dir,
            head.name,
            self.info.encoder,
            len(self.vocab),
            os.getpid(),
        )

    def _check_ctc_width(self, name: str) -> None:
        """The CTC graph must score exactly one column per vocabulary entry (its blank included):
        read from the declared shape, else from one short run on silence-level features."""
        width = self.encoder.get_outputs()[0].shape[-1]
        if not isinstance(width, int):
            probe = np.full((1, 64, _PROBE_FRAMES), -20.0, dtype=np.float32)
            try:
                (out,) = self.encoder.run(["log_probs"], {
                    "features": probe,
                    "feature_lengths": np.array([_PROBE_FRAMES], dtype=np.int64)})
            except Exception as exc:  # a graph that cannot run is a bad file
                raise ModelError(f"cannot run {name}: {exc}") from exc
            width = int(np.asarray(out).shape[-1])
        if width != len(self.vocab):
            raise ModelError(
                f"{name} emits {width} scores per frame but {self.head.vocab} has"
                f" {len(self.vocab)} tokens"
            )

    def ctc_log_probs(self, features: F32,
                      lengths: npt.NDArray[np.int64]) -> tuple[F32, npt.NDArray[np.int64]]:
        """CTC graph over ``[B, 64, T]`` features → (log-probabilities ``[B, T', V]``, valid
        frames ``[B]``: ``(T - 1) // 4 + 1``, the subsampling's length, as onnx-asr computes)."""
        (log_probs,) = self.encoder.run(
            ["log_probs"], {"features": features, "feature_lengths": lengths})
        return np.asarray(log_probs, dtype=np.float32), (lengths - 1) // 4 + 1

    def encode(self, features: F32, lengths: npt.NDArray[np.int64]) -> tuple[F32, Any]:
        """Encoder over ``[B, 64, T]`` features → (``[B, D, T']``, lengths ``[B]``)."""
        encoded, encoded_len = self.encoder.run(
            ["encoded", "encoded_len"], {"audio_signal": features, "length": lengths}
        )
        return encoded, encoded_len

    def decode_step(
        self, tokens: npt.NDArray[np.int64], h: F32, c: F32
    ) -> tuple[F32, F32, F32]:
        """Prediction network: tokens ``[B, 1]`` and state → (``dec [B, 1, H]``, h, c)."""
        assert self.decoder is not None, "a CTC head has no prediction network"
        dec, h2, c2 = self.decoder.run(["dec", "h", "c"], {"x": tokens, "h.1": h, "c.1": c})
        return dec, h2, c2

    def joint_scores(self, enc: F32, dec: F32) -> F32:
        """Joint over ``enc [B, D, 1]`` and ``dec [B, H, 1]`` → log-probabilities ``[B, V]``."""
        assert self.joint is not None, "a CTC head has no joint network"
        (scores,) = self.joint.run(["joint"], {"enc": enc, "dec": dec})
        return np.asarray(scores, dtype=np.float32).reshape(enc.shape[0], -1)
