"""Resumable, verified, locked download of the four GigaAM v3 model files (README "Model files").
Parts: ``source`` (URL, credentials, pins), ``wire`` (headers), ``fetch``, ``progress``, ``layout``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from gigastt.engine.heads import DEFAULT_HEAD, Head
from gigastt.engine.heads import missing as head_missing
from gigastt.store.download.fetch import fetch_file, opener_for, redirect_refusal
from gigastt.store.download.layout import (
    LOCK_FILE,
    PARTIAL_SUFFIX,
    make_model_dir,
    model_lock,
    sha256_of,
)
from gigastt.store.download.progress import (
    LineProgress,
    NullProgress,
    Progress,
    TerminalProgress,
    progress_for,
)
from gigastt.store.download.source import (
    DEFAULT_BASE_URL,
    MODEL_URL_ENV,
    RETRIES_ENV,
    SHA256_FILE_ENV,
    SHA256_PINS,
    VAD_BASE_URL,
    VAD_FILE,
    VAD_SHA256,
    DownloadError,
    ModelSource,
    RetryPolicy,
    read_sha256_file,
    retry_policy,
    split_userinfo,
)
from gigastt.store.download.wire import ContentRange, parse_content_length, parse_content_range

log = logging.getLogger("gigastt.store")


def ensure_model(model_dir: Path, source: ModelSource | None = None, *,
                 progress: Progress | None = None,
                 policy: RetryPolicy | None = None, head: Head = DEFAULT_HEAD) -> list[str]:
    """Fetch the model files of ``head`` missing from ``model_dir``; returns the names fetched.

    Files already present are trusted and not re-hashed (as the reference). Two processes never
    download at once: the second waits for the lock, then finds the files there. A file whose
    SHA-256 is neither pinned nor listed in ``GIGASTT_MODEL_SHA256_FILE`` is never fetched (D29:
    only the ``e2e_rnnt`` files are pinned).
    """
    if not head_missing(model_dir, head):
        return []
    source = source or ModelSource()
    policy = policy or RetryPolicy()
    unpinned = [name for name in head_missing(model_dir, head) if name not in source.pins]
    if unpinned:
        raise DownloadError(
            f"no known SHA-256 for {', '.join(unpinned)} (model variant {head.name}): gigastt"
            f" pins only the {DEFAULT_HEAD.name} files, so list these files' checksums"
            f" (sha256sum format) in a file named by {SHA256_FILE_ENV}")
    make_model_dir(model_dir)
    with model_lock(model_dir):
        absent = head_missing(model_dir, head)
        if not absent:
            log.info("Model files in %s were completed by another process", model_dir)
            return []
        # base_url never holds credentials (ModelSource keeps them apart)
        log.info("Downloading %s into %s from %s", ", ".join(absent), model_dir, source.base_url)
        opener = opener_for(source, policy)
        for name in absent:
            fetch_file(name, model_dir, source, progress=progress, policy=policy, opener=opener)
    log.info("Model files ready in %s", model_dir)
    return absent


def ensure_vad(model_dir: Path, source: ModelSource, *, progress: Progress | None = None,
               policy: RetryPolicy | None = None) -> bool:
    """Fetch ``silero_vad.onnx`` into ``model_dir`` unless it is there (D28); True if fetched.

    The same path as the model files: under the directory's lock, resumable, verified against
    ``source``'s pin before it gets its name.
    """
    if (model_dir / VAD_FILE).is_file():
        return False
    policy = policy or RetryPolicy()
    make_model_dir(model_dir)
    with model_lock(model_dir):
        if (model_dir / VAD_FILE).is_file():
            return False
        log.info("Downloading %s into %s from %s", VAD_FILE, model_dir, source.base_url)
        fetch_file(VAD_FILE, model_dir, source, progress=progress, policy=policy,
                   opener=opener_for(source, policy))
    log.info("VAD model ready in %s", model_dir)
    return True


def download_vad(model_dir: Path, *, model_url: str | None, env: Mapping[str, str],
                 stream: TextIO | None = None) -> bool:
    """``gigastt download --vad``: ``ensure_vad`` from the mirror (or the VAD's own source)."""
    source = ModelSource.resolve_vad(model_url, env)
    return ensure_vad(model_dir, source, progress=progress_for(stream or sys.stderr),
                      policy=retry_policy(env))


def vad_pin(env: Mapping[str, str]) -> str:
    """The SHA-256 a ``silero_vad.onnx`` in the model directory must have (D28)."""
    return ModelSource.resolve_vad(None, env).pins[VAD_FILE]


def vad_source(model_dir: Path, vad_model: Path | None,
               env: Mapping[str, str]) -> tuple[Path, str | None]:
    """The VAD file to load and the SHA-256 it must have: ``--vad-model`` as given (the
    operator's file, no pin), else ``<model dir>/silero_vad.onnx`` with its pin (D28)."""
    if vad_model is not None:
        return vad_model, None
    return model_dir / VAD_FILE, vad_pin(env)


__all__ = [
    "DEFAULT_BASE_URL",
    "LOCK_FILE",
    "MODEL_URL_ENV",
    "PARTIAL_SUFFIX",
    "RETRIES_ENV",
    "SHA256_FILE_ENV",
    "SHA256_PINS",
    "VAD_BASE_URL",
    "VAD_FILE",
    "VAD_SHA256",
    "ContentRange",
    "DownloadError",
    "LineProgress",
    "ModelSource",
    "NullProgress",
    "Progress",
    "RetryPolicy",
    "TerminalProgress",
    "download_vad",
    "ensure_model",
    "ensure_vad",
    "fetch_file",
    "make_model_dir",
    "model_lock",
    "opener_for",
    "parse_content_length",
    "parse_content_range",
    "progress_for",
    "read_sha256_file",
    "redirect_refusal",
    "retry_policy",
    "sha256_of",
    "split_userinfo",
    "vad_pin",
    "vad_source",
]
