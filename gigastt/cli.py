"""The ``gigastt`` command line: ``serve``, ``transcribe``, ``download``, ``quantize``.
Exit 0 ok, 1 runtime, 2 usage. Logs (and download progress) go to stderr; stdout carries only
what a command prints (the transcript).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gigastt import __version__
from gigastt.config import (
    ConfigError,
    add_serve_arguments,
    argparse_model_url,
    default_model_dir,
    parse_bool,
    parse_model_url,
    serve_config,
)
from gigastt.export import FORMATS, render
from gigastt.server.lifecycle import hold_hangups, release_hangups

LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
EXIT_RUNTIME = 1  # usage errors exit 2 through argparse

log = logging.getLogger("gigastt")


class RuntimeFailure(Exception):
    """A command failed at run time; its message is printed as ``Error: <message>`` (exit 1)."""


def _log_level(text: str) -> str:
    lowered = text.lower()
    if lowered not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r} ({', '.join(LOG_LEVELS)})")
    return lowered


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a sub-command's default from overwriting a value given before it.
    common.add_argument("--log-level", type=_log_level, default=argparse.SUPPRESS,
                        help="off, error, warn, info (default), debug, trace")
    parser = argparse.ArgumentParser(
        prog="gigastt", description="Local Russian speech recognition (GigaAM v3 RNN-T).",
        parents=[common],
    )
    parser.add_argument("-V", "--version", action="version", version=f"gigastt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the HTTP/WebSocket server")
    add_serve_arguments(serve)

    transcribe = commands.add_parser("transcribe", parents=[common],
                                     help="transcribe one audio file and print the result")
    transcribe.add_argument("file", type=Path, help="audio file (WAV; more with extras)")
    transcribe.add_argument("--model-dir", type=Path, default=None,
                            help="model directory (default ~/.gigastt/models)")
    transcribe.add_argument("--format", choices=FORMATS, default="text",
                            help="output format (default text)")
    _add_model_url(transcribe)

    download = commands.add_parser(
        "download", parents=[common],
        help="download the model files (verified, resumable), then create the INT8 encoder")
    _add_model_dir(download)
    _add_model_url(download)
    download.add_argument("--skip-quantize", action="store_true", default=None,
                          help="do not create the INT8 encoder (env GIGASTT_SKIP_QUANTIZE)")

    quantize = commands.add_parser(
        "quantize", parents=[common],
        help="create the INT8 encoder from the FP32 one (needs the 'quantize' extra)")
    _add_model_dir(quantize)
    quantize.add_argument("--force", action="store_true",
                          help="re-create the INT8 encoder even if it exists")
    return parser


def _add_model_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model directory (default ~/.gigastt/models)")


def _add_model_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-url", type=argparse_model_url, default=None, metavar="URL",
                        help="download missing model files from this mirror instead of Hugging"
                             " Face (env GIGASTT_MODEL_URL)")


def setup_logging(level: str) -> None:
    numeric = {
        "off": logging.CRITICAL + 10, "error": logging.ERROR, "warn": logging.WARNING,
        "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG,
    }[level]
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime  # the "Z" in the format promises UTC
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger("gigastt")
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: a SIGHUP (systemctl reload) during start-up is held for the server, not fatal.
    hold_hangups()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        release_hangups()  # a terminal hang-up still ends `transcribe`, `download`, `quantize`
    setup_logging(getattr(args, "log_level", "info"))
    try:
        if args.command == "serve":
            try:
                config = serve_config(args, os.environ)
            except ConfigError as exc:
                parser.error(str(exc))
            from gigastt.server.app import run_server

            return run_server(config)
        if args.command == "download":
            try:
                model_url = _model_url(args)
                skip = args.skip_quantize
                if skip is None and "GIGASTT_SKIP_QUANTIZE" in os.environ:
                    skip = parse_bool("GIGASTT_SKIP_QUANTIZE", os.environ["GIGASTT_SKIP_QUANTIZE"])
            except ConfigError as exc:
                parser.error(str(exc))
            return _download(args.model_dir or default_model_dir(), model_url, bool(skip))
        if args.command == "quantize":
            return _quantize(args.model_dir or default_model_dir(), args.force)
        try:
            model_url = _model_url(args)
        except ConfigError as exc:
            parser.error(str(exc))
        return _transcribe(args, model_url)
    except KeyboardInterrupt:
        return 130
    except RuntimeFailure as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _model_url(args: argparse.Namespace) -> str | None:
    """``--model-url``, else ``GIGASTT_MODEL_URL``, else None (Hugging Face)."""
    if args.model_url is not None:
        return str(args.model_url)
    env = os.environ.get("GIGASTT_MODEL_URL", "")
    return parse_model_url("GIGASTT_MODEL_URL", env) if env.strip() else None


def _download(model_dir: Path, model_url: str | None, skip_quantize: bool) -> int:
    from gigastt.store import StoreError, prepare_model

    try:
        prepare_model(model_dir, model_url=model_url, env=os.environ,
                      quantize=not skip_quantize, on_demand=False)
    except StoreError as exc:
        raise RuntimeFailure(str(exc)) from exc
    log.info("Model ready at %s", model_dir)
    return 0


def _quantize(model_dir: Path, force: bool) -> int:
    from gigastt.store import StoreError
    from gigastt.store.quantize import quantize_encoder

    try:
        quantize_encoder(model_dir, force=force)
    except StoreError as exc:
        raise RuntimeFailure(str(exc)) from exc
    return 0


def _transcribe(args: argparse.Namespace, model_url: str | None) -> int:
    from gigastt.engine.audio import AudioError, load_audio
    from gigastt.engine.model import GigaamModel, ModelError
    from gigastt.engine.recognizer import Recognizer
    from gigastt.store import StoreError, prepare_model

    model_dir: Path = args.model_dir or default_model_dir()
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {args.file}: {exc.strerror}") from exc
    try:
        samples = load_audio(data)
    except AudioError as exc:
        raise RuntimeFailure(f"invalid audio: {exc}") from exc
    try:
        # Fetch what is missing, but leave quantizing to `download`/`serve` (README "Model files").
        prepare_model(model_dir, model_url=model_url, env=os.environ, quantize=False,
                      on_demand=True)
    except StoreError as exc:
        raise RuntimeFailure(str(exc)) from exc
    try:
        recognizer = Recognizer(GigaamModel(model_dir))
    except ModelError as exc:
        raise RuntimeFailure(str(exc)) from exc
    transcript = recognizer.transcribe(samples)
    # The same writer as `/v1/transcribe?format=` (docs/api.md); JSON gets the newline a
    # terminal needs, the other formats end in one already.
    body = render(transcript, args.format)
    sys.stdout.write(body + "\n" if args.format == "json" else body)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
