"""``gigastt bundle``: a verified offline install bundle for an air-gapped or embedded Linux box.
Made on a connected machine (``build``, ``wheels``); installed there by ``install.sh`` alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
from pathlib import Path


class BundleError(RuntimeError):
    """The bundle cannot be made; the message is shown as ``Error: <message>`` (exit 1)."""


_PYTHON = re.compile(r"3\.(\d{2})")
MIN_PYTHON_MINOR = 11  # requires-python in pyproject.toml


def _python_version(text: str) -> str:
    match = _PYTHON.fullmatch(text.strip())
    if match is None or int(match.group(1)) < MIN_PYTHON_MINOR:
        raise argparse.ArgumentTypeError(
            f"expected a CPython version X.Y of at least 3.{MIN_PYTHON_MINOR}, got {text!r}")
    return f"3.{int(match.group(1))}"


def _extras(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    for name in names:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            raise argparse.ArgumentTypeError(f"not an extra name: {name!r}")
    return names


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    from gigastt.bundle.wheels import PLATFORMS

    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.tar.gz",
                        help="the archive to write")
    parser.add_argument("--platform", choices=PLATFORMS, default="host",
                        help="the target machine (default host: this machine's architecture)")
    parser.add_argument("--python", type=_python_version, default=None, metavar="X.Y",
                        help="the target's CPython version (default the running one)")
    parser.add_argument("--extras", type=_extras, default=(), metavar="LIST",
                        help="comma-separated extras to include, e.g. formats,quantize")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model directory to copy (default ~/.gigastt/models)")
    parser.add_argument("--int8-only", action="store_true",
                        help="take the INT8 encoder instead of the FP32 one (quantizing first"
                             " if needed)")
    parser.add_argument("--no-model", action="store_true", help="leave the model files out")


def run_bundle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The ``bundle`` command: usage errors exit 2 through ``parser``, failures raise
    BundleError."""
    from gigastt.bundle.build import BundleRequest, build_bundle
    from gigastt.bundle.wheels import DIST, resolve_target
    from gigastt.config import default_model_dir

    if args.no_model and (args.int8_only or args.model_dir is not None):
        parser.error("--no-model cannot go with --int8-only or --model-dir")
    try:
        known = importlib.metadata.metadata(DIST).get_all("Provides-Extra") or []
    except importlib.metadata.PackageNotFoundError:
        known = list(args.extras)  # run from a checkout: pip names an unknown extra itself
    unknown = [name for name in args.extras if name not in known]
    if unknown:
        parser.error(f"unknown extra {unknown[0]!r} (known: {', '.join(sorted(known))})")
    target = resolve_target(args.platform, args.python)
    request = BundleRequest(
        output=args.output, target=target, extras=args.extras,
        model_dir=None if args.no_model else (args.model_dir or default_model_dir()),
        int8_only=args.int8_only)
    build_bundle(request)
    return 0
