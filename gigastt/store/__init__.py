"""Model files on disk: where they live, how they are fetched, verified and quantized.
``prepare_model`` is the start-up step of ``serve``, ``transcribe`` and ``download``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from gigastt.engine.heads import Head

log = logging.getLogger("gigastt.store")


class StoreError(RuntimeError):
    """The model directory cannot be made ready; the message is shown as ``Error: <message>``."""


class NotWritableError(StoreError):
    """The model directory (or its parent) cannot be written: read-only, permissions, not a dir."""


def prepare_model(
    model_dir: Path,
    *,
    model_url: str | None,
    env: Mapping[str, str],
    quantize: bool,
    on_demand: bool,
    stream: TextIO | None = None,
    int8_only: bool = False,
    head: Head | None = None,
) -> None:
    """Download missing files, then (when ``quantize``) create the INT8 encoder if it is safe to.

    ``env`` supplies ``GIGASTT_MODEL_SHA256_FILE`` and ``GIGASTT_DOWNLOAD_RETRIES`` (passed in,
    never read here, so that callers and tests control it). ``on_demand`` (serve, transcribe)
    adds to a download failure which files are missing and how to fetch them by hand.
    ``int8_only`` (``download --int8-only``) then quantizes whatever encoder is there, as
    ``gigastt quantize`` does, and deletes the FP32 encoder (docs/decisions.md D53).
    """
    from gigastt.engine.heads import DEFAULT_HEAD
    from gigastt.engine.heads import missing as head_missing

    head = head or DEFAULT_HEAD  # D29: the head chosen by --model-variant
    absent = head_missing(model_dir, head)
    if not absent and (not quantize or (model_dir / head.int8).is_file()):
        if int8_only:
            keep_int8_only(model_dir, head)
        return  # the usual start: nothing to fetch or create, no settings to read

    from gigastt.store.download import ModelSource, ensure_model, progress_for, retry_policy
    from gigastt.store.quantize import auto_quantize

    fetched: list[str] = []
    try:
        source = ModelSource.resolve(model_url, env)
        if absent:
            fetched = ensure_model(model_dir, source, progress=progress_for(stream or sys.stderr),
                                   policy=retry_policy(env), head=head)
    except StoreError as exc:
        if not on_demand or not absent:
            raise
        raise StoreError(
            f"{exc}; model files missing in {model_dir}: {', '.join(absent)} (run `gigastt"
            f" download{'' if head is DEFAULT_HEAD else ' --variant ' + head.name}` on a"
            " connected machine and copy the directory, or point GIGASTT_MODEL_URL at a mirror)"
        ) from exc
    if int8_only:
        keep_int8_only(model_dir, head)
    elif quantize:
        auto_quantize(model_dir, expected_sha256=source.pins.get(head.encoder),
                      verified=head.encoder in fetched, head=head)


def keep_int8_only(model_dir: Path, head: Head | None = None) -> None:
    """Create the INT8 encoder if it is missing, then delete the FP32 encoder (D53).

    The FP32 file goes only once the INT8 one is under its final name (written whole, then
    renamed), so an interruption never leaves a directory without an encoder.
    """
    from gigastt.engine.heads import DEFAULT_HEAD
    from gigastt.store.download import model_lock
    from gigastt.store.quantize import quantize_encoder

    head = head or DEFAULT_HEAD
    fp32 = model_dir / head.encoder
    if not (model_dir / head.int8).is_file():
        quantize_encoder(model_dir, head=head)
    with model_lock(model_dir):
        try:
            fp32.unlink(missing_ok=True)
        except OSError as exc:
            raise NotWritableError(f"Cannot delete {fp32}: {exc.strerror}") from exc
    log.info("INT8-only model directory: %s (FP32 encoder removed)", model_dir)
