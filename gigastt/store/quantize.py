"""INT8 encoder: onnxruntime dynamic quantization of the FP32 encoder's MatMul weights.
Needs the optional ``onnx`` package (extra ``quantize``); written to a partial file, then renamed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gigastt.engine.heads import DEFAULT_HEAD, Head
from gigastt.store import NotWritableError, StoreError
from gigastt.store.download import model_lock, sha256_of

log = logging.getLogger("gigastt.store")

INSTALL_HINT = "pip install 'gigastt-server[quantize]'"
PARTIAL_SUFFIX = ".partial"


class QuantizeError(StoreError):
    """The INT8 encoder could not be created; nothing was put under its final name."""


class QuantizeUnavailable(QuantizeError):
    """The optional ``onnx`` package that onnxruntime's quantizer imports is not installed."""


def _quantizer() -> Callable[..., Any]:
    """``quantize_dynamic`` and ``QuantType.QInt8``, or QuantizeUnavailable naming the extra."""
    try:
        # onnxruntime.quantization imports onnx without declaring it as a dependency.
        import onnx  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise QuantizeUnavailable(
            f"INT8 quantization needs the optional package 'onnx': {INSTALL_HINT}"
        ) from exc

    def run(source: Path, target: Path) -> None:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])

    return run


def quantize_available() -> bool:
    """Whether the ``onnx`` package is installed (looked up, not imported: importing it and the
    quantizer costs about a second, which a start-up that will not quantize should not pay)."""
    return importlib.util.find_spec("onnx") is not None


@contextlib.contextmanager
def _quantizer_logs_demoted() -> Iterator[None]:
    """The quantizer warns on the root logger ("consider pre-processing"), which would reach
    stderr unformatted; keep those lines, at debug level, in our log instead."""
    def demote(record: logging.LogRecord) -> bool:
        log.debug("onnxruntime.quantization: %s", record.getMessage())
        return False

    root = logging.getLogger()
    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _write_int8(run: Callable[[Path, Path], None], fp32: Path, int8: Path) -> None:
    partial = int8.with_name(int8.name + PARTIAL_SUFFIX)
    log.info("Quantizing %s to INT8 (one-time; about a minute for the real encoder)", fp32)
    began = time.monotonic()
    try:
        with _quantizer_logs_demoted():
            run(fp32, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, int8)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise QuantizeError(f"Cannot write {int8}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # onnx and protobuf raise their own types for a malformed graph.
        partial.unlink(missing_ok=True)
        raise QuantizeError(f"Cannot quantize {fp32}: {exc}") from exc
    log.info("Quantized model saved to %s (%.1f MB -> %.1f MB, %.1f s)", int8, _mb(fp32),
             _mb(int8), time.monotonic() - began)


def quantize_encoder(model_dir: Path, *, force: bool = False,
                     head: Head = DEFAULT_HEAD) -> Path | None:
    """Create ``v3_e2e_rnnt_encoder_int8.onnx`` (or the INT8 file of another head's encoder or
    CTC model, D29); None when it exists and ``force`` is off."""
    fp32 = model_dir / head.encoder
    int8 = model_dir / head.int8

    def exists() -> bool:
        if int8.is_file() and not force:
            log.info("INT8 model already exists: %s", int8)
            log.info("Use --force to re-quantize.")
            return True
        return False

    if exists():
        return None
    if not fp32.is_file():
        raise QuantizeError(f"Cannot quantize: FP32 encoder not found at {fp32}")
    run = _quantizer()
    # The lock makes the stable partial name safe and keeps two start-ups from both quantizing.
    with model_lock(model_dir):
        if exists():
            return None
        _write_int8(run, fp32, int8)
    return int8


def auto_quantize(model_dir: Path, *, expected_sha256: str | None, verified: bool,
                  head: Head = DEFAULT_HEAD) -> None:
    """The ``serve``/``download`` step: create the INT8 encoder when it is missing and safe to.

    Only the pinned encoder (or one named in ``GIGASTT_MODEL_SHA256_FILE``) is quantized
    automatically: the quantizer parses the whole graph with onnx, so it should only see a
    verified file, and a custom or test model keeps exactly the encoder its owner put there.
    ``verified`` says the file was hashed by the download that just fetched it. A missing
    ``onnx`` package or a read-only directory leaves the FP32 encoder in use (an info/warning
    line, not a failure).
    """
    fp32 = model_dir / head.encoder
    int8 = model_dir / head.int8
    if int8.is_file():
        return
    if not fp32.is_file():
        raise QuantizeError(f"Cannot quantize: FP32 encoder not found at {fp32}")
    if not quantize_available():
        _no_onnx()
        return
    if not os.access(model_dir, os.W_OK):
        log.warning("INT8 encoder not created: %s is not writable; using the FP32 encoder",
                    model_dir)
        return
    if not verified:
        log.info("Checking the SHA-256 of %s before quantizing it", fp32)
        if expected_sha256 is None or sha256_of(fp32) != expected_sha256:
            log.info("INT8 encoder not created automatically: %s is not the pinned GigaAM v3"
                     " encoder (custom or test model); run `gigastt quantize` to create it", fp32)
            return
    try:
        quantize_encoder(model_dir, head=head)
    except QuantizeUnavailable:
        _no_onnx()  # installed but not importable (a broken or partial install)
    except NotWritableError as exc:
        log.warning("INT8 encoder not created: %s; using the FP32 encoder", exc)


def _no_onnx() -> None:
    log.info("INT8 encoder not created: the optional package 'onnx' is not installed (%s);"
             " using the FP32 encoder", INSTALL_HINT)
