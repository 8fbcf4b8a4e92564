"""Model files on disk: where they live, how they are fetched, verified and quantized.
``prepare_model`` is the start-up step of ``serve``, ``transcribe`` and ``download``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

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
) -> None:
    """Download missing files, then (when ``quantize``) create the INT8 encoder if it is safe to.

    ``env`` supplies ``GIGASTT_MODEL_SHA256_FILE`` and ``GIGASTT_DOWNLOAD_RETRIES`` (passed in,
    never read here, so that callers and tests control it). ``on_demand`` (serve, transcribe)
    adds to a download failure which files are missing and how to fetch them by hand.
    """
    from gigastt.engine.model import ENCODER_FILE, ENCODER_INT8_FILE, missing_files

    absent = missing_files(model_dir)
    if not absent and (not quantize or (model_dir / ENCODER_INT8_FILE).is_file()):
        return  # the usual start: nothing to fetch or create, no settings to read

    from gigastt.store.download import ModelSource, ensure_model, progress_for, retry_policy
    from gigastt.store.quantize import auto_quantize

    fetched: list[str] = []
    try:
        source = ModelSource.resolve(model_url, env)
        if absent:
            fetched = ensure_model(model_dir, source, progress=progress_for(stream or sys.stderr),
                                   policy=retry_policy(env))
    except StoreError as exc:
        if not on_demand or not absent:
            raise
        raise StoreError(
            f"{exc}; model files missing in {model_dir}: {', '.join(absent)} (run `gigastt"
            " download` on a connected machine and copy the directory, or point"
            " GIGASTT_MODEL_URL at a mirror)"
        ) from exc
    if quantize:
        auto_quantize(model_dir, expected_sha256=source.pins.get(ENCODER_FILE),
                      verified=ENCODER_FILE in fetched)
