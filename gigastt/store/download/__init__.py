"""Resumable, verified, locked download of the four GigaAM v3 model files (README "Model files").
Parts: ``source`` (URL, credentials, pins), ``wire`` (headers), ``fetch``, ``progress``, ``layout``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gigastt.engine.model import missing_files
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
                 policy: RetryPolicy | None = None) -> list[str]:
    """Fetch the model files missing from ``model_dir``; returns the names it fetched.

    Files already present are trusted and not re-hashed (as the reference). Two processes never
    download at once: the second waits for the lock, then finds the files there.
    """
    if not missing_files(model_dir):
        return []
    source = source or ModelSource()
    policy = policy or RetryPolicy()
    make_model_dir(model_dir)
    with model_lock(model_dir):
        absent = missing_files(model_dir)
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


__all__ = [
    "DEFAULT_BASE_URL",
    "LOCK_FILE",
    "MODEL_URL_ENV",
    "PARTIAL_SUFFIX",
    "RETRIES_ENV",
    "SHA256_FILE_ENV",
    "SHA256_PINS",
    "ContentRange",
    "DownloadError",
    "LineProgress",
    "ModelSource",
    "NullProgress",
    "Progress",
    "RetryPolicy",
    "TerminalProgress",
    "ensure_model",
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
]
