"""The ``gigastt`` command line: ``serve`` and ``transcribe``; exit 0 ok, 1 runtime, 2 usage.

Logs go to stderr; stdout carries only what a command prints (the transcript).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gigastt import __version__
from gigastt.config import ConfigError, add_serve_arguments, default_model_dir, serve_config

LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
EXIT_RUNTIME, EXIT_USAGE = 1, 2

log = logging.getLogger("gigastt")


class UsageError(Exception):
    """A command-line or environment value is invalid (exit 2)."""


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
    transcribe.add_argument("--format", choices=("text", "json", "srt", "vtt"), default="text",
                            help="output format (default text)")
    return parser


def setup_logging(level: str) -> None:
    numeric = {
        "off": logging.CRITICAL + 10, "error": logging.ERROR, "warn": logging.WARNING,
        "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG,
    }[level]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    ))
    logging.Formatter.converter = __import__("time").gmtime
    root = logging.getLogger("gigastt")
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"))
    try:
        if args.command == "serve":
            try:
                config = serve_config(args, os.environ)
            except ConfigError as exc:
                parser.error(str(exc))
            from gigastt.server.app import run_server

            return run_server(config)
        return _transcribe(args)
    except KeyboardInterrupt:
        return 130
    except RuntimeFailure as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


class RuntimeFailure(Exception):
    """A command failed at run time; its message is printed as ``Error: <message>`` (exit 1)."""


def _transcribe(args: argparse.Namespace) -> int:
    from gigastt.engine.audio import AudioError, load_audio
    from gigastt.engine.model import GigaamModel, ModelError
    from gigastt.engine.recognizer import Recognizer

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
        recognizer = Recognizer(GigaamModel(model_dir))
    except ModelError as exc:
        raise RuntimeFailure(str(exc)) from exc
    transcript = recognizer.transcribe(samples)
    out = sys.stdout
    if args.format == "json":
        from gigastt.protocol import transcribe_body

        out.write(transcribe_body(transcript) + "\n")
    elif args.format in ("srt", "vtt"):
        from gigastt.subtitles import render_subtitles

        out.write(render_subtitles(transcript, args.format))
    else:
        out.write(transcript.text + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
