"""The ``gigastt`` command line: ``serve``, ``transcribe``, ``download``, ``quantize``, ``bundle``,
``stream``.
Exit 0 ok, 1 runtime, 2 usage. Logs (and download progress) go to stderr; stdout carries only
what a command prints (the transcript).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gigastt import __version__
from gigastt.config import (
    ConfigError,
    add_hotwords_arguments,
    add_model_variant_argument,
    add_serve_arguments,
    add_vad_arguments,
    argparse_model_url,
    default_model_dir,
    model_settings,
    parse_bool,
    parse_model_url,
    parse_setting,
    serve_config,
    vad_settings,
)
from gigastt.export import FORMATS, render
from gigastt.server.lifecycle import hold_hangups, release_hangups

if TYPE_CHECKING:
    from gigastt.engine.vad import SileroVad

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
    transcribe.add_argument("--max-audio-secs", type=_max_audio_secs, default=None,
                            metavar="N",
                            help="refuse longer audio (env GIGASTT_MAX_AUDIO_SECS, default"
                                 " 14400; 0 = no duration cap)")
    _add_model_url(transcribe)
    add_vad_arguments(transcribe)
    add_model_variant_argument(transcribe)
    add_hotwords_arguments(transcribe)
    transcribe.add_argument("--no-vad", dest="vad", action="store_const", const="off",
                            help="do not use the VAD for this file (same as --vad off)")

    download = commands.add_parser(
        "download", parents=[common],
        help="download the model files (verified, resumable), then create the INT8 encoder")
    _add_model_dir(download)
    _add_model_url(download)
    download.add_argument("--skip-quantize", action="store_true", default=None,
                          help="do not create the INT8 encoder (env GIGASTT_SKIP_QUANTIZE)")
    download.add_argument("--int8-only", action="store_true",
                          help="create the INT8 encoder, then delete the FP32 one (small boxes)")
    add_model_variant_argument(download, "--variant", "--model-variant")
    download.add_argument("--vad", action="store_true",
                          help="also fetch the Silero VAD file silero_vad.onnx (verified, MIT"
                               " licence; docs/runbook.md \"Voice activity detection\")")

    quantize = commands.add_parser(
        "quantize", parents=[common],
        help="create the INT8 encoder from the FP32 one (needs the 'quantize' extra)")
    _add_model_dir(quantize)
    quantize.add_argument("--force", action="store_true",
                          help="re-create the INT8 encoder even if it exists")
    add_model_variant_argument(quantize)

    from gigastt.bundle import add_bundle_arguments

    add_bundle_arguments(commands.add_parser(
        "bundle", parents=[common],
        help="build a verified offline install bundle (wheels, model, install.sh)"))

    from gigastt.client import add_stream_arguments

    add_stream_arguments(commands.add_parser(
        "stream", parents=[common],
        help="stream a file or standard input to a running server and print the transcript"))
    return parser


def _max_audio_secs(value: str) -> int:
    """``transcribe --max-audio-secs``: range-checked like ``serve``'s (D30)."""
    try:
        return parse_setting("max_audio_secs", "value", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
            if args.int8_only and args.skip_quantize:
                parser.error("--int8-only quantizes the encoder; it cannot go with --skip-quantize")
            try:
                variant = model_settings(args, os.environ)[0]
            except ConfigError as exc:
                parser.error(str(exc))
            code = _download(args.model_dir or default_model_dir(), model_url,
                             bool(skip) and not args.int8_only, int8_only=args.int8_only,
                             variant=variant)
            if args.vad:
                _download_vad(args.model_dir or default_model_dir(), model_url)
            return code
        if args.command == "bundle":
            from gigastt.bundle import BundleError, run_bundle

            try:
                return run_bundle(args, parser)
            except BundleError as exc:
                raise RuntimeFailure(str(exc)) from exc
        if args.command == "stream":
            from gigastt.client import run_stream

            return run_stream(args, parser)
        if args.command == "quantize":
            try:
                variant = model_settings(args, os.environ)[0]
            except ConfigError as exc:
                parser.error(str(exc))
            return _quantize(args.model_dir or default_model_dir(), args.force, variant)
        try:
            model_url = _model_url(args)
            if args.max_audio_secs is None:
                args.max_audio_secs = _env_max_audio_secs()
            args.model_variant, args.hotwords_file, args.hotwords_boost = model_settings(
                args, os.environ)
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


def _env_max_audio_secs() -> int:
    """``GIGASTT_MAX_AUDIO_SECS``, else the server's default (D30)."""
    from gigastt.config import Limits

    env = os.environ.get("GIGASTT_MAX_AUDIO_SECS")
    if env is None:
        return Limits().max_audio_secs
    return parse_setting("max_audio_secs", "GIGASTT_MAX_AUDIO_SECS", env)


def _download(model_dir: Path, model_url: str | None, skip_quantize: bool, *,
              int8_only: bool = False, variant: str = "auto") -> int:
    from gigastt.engine.heads import resolve
    from gigastt.store import StoreError, prepare_model

    try:
        prepare_model(model_dir, model_url=model_url, env=os.environ,
                      quantize=not skip_quantize, on_demand=False, int8_only=int8_only,
                      head=resolve(model_dir, variant))
    except StoreError as exc:
        raise RuntimeFailure(str(exc)) from exc
    log.info("Model ready at %s", model_dir)
    return 0


def _open_vad(args: argparse.Namespace, model_dir: Path) -> SileroVad | None:
    """``--vad``/``--vad-model``/``--no-vad`` (and their env) as ``serve`` reads them (D28)."""
    from gigastt.engine.vad import VadError, open_vad
    from gigastt.store import StoreError
    from gigastt.store.download import vad_source

    try:
        mode, path = vad_settings(args, os.environ)
        vad_path, sha256 = vad_source(model_dir, path, os.environ)
        return open_vad(mode, vad_path, expected_sha256=sha256)
    except (ConfigError, StoreError, VadError) as exc:
        raise RuntimeFailure(str(exc)) from exc


def _download_vad(model_dir: Path, model_url: str | None) -> None:
    """``download --vad`` (D28): the pinned VAD file, by the model files' download path."""
    from gigastt.store import StoreError
    from gigastt.store.download import download_vad

    try:
        download_vad(model_dir, model_url=model_url, env=os.environ)
    except StoreError as exc:
        raise RuntimeFailure(str(exc)) from exc


def _quantize(model_dir: Path, force: bool, variant: str = "auto") -> int:
    from gigastt.engine.heads import resolve
    from gigastt.store import StoreError
    from gigastt.store.quantize import quantize_encoder

    try:
        quantize_encoder(model_dir, force=force, head=resolve(model_dir, variant))
    except StoreError as exc:
        raise RuntimeFailure(str(exc)) from exc
    return 0


def _transcribe(args: argparse.Namespace, model_url: str | None) -> int:
    from gigastt.engine.audio import (
        MODEL_RATE,
        AudioError,
        expected_samples,
        model_blocks,
        open_audio,
    )
    from gigastt.engine.heads import resolve
    from gigastt.engine.hotwords import HotwordsError, compile_phrases, read_file
    from gigastt.engine.model import GigaamModel, ModelError
    from gigastt.engine.recognizer import Recognizer, own_words, transcript_of
    from gigastt.engine.transcript import Word
    from gigastt.engine.windows import FileWindows, read_spans
    from gigastt.progress import TerminalProgress
    from gigastt.store import StoreError, prepare_model

    model_dir: Path = args.model_dir or default_model_dir()
    head = resolve(model_dir, args.model_variant)  # D29
    try:
        phrases = read_file(args.hotwords_file) if args.hotwords_file is not None else []
    except HotwordsError as exc:
        raise RuntimeFailure(str(exc)) from exc
    try:
        cap = float(args.max_audio_secs) if args.max_audio_secs else math.inf  # 0: no cap
        # The header only: the samples are read from disk window by window (D30).
        source = open_audio(args.file, max_seconds=cap)
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {args.file}: {exc.strerror}") from exc
    except AudioError as exc:
        raise RuntimeFailure(f"invalid audio: {exc}") from exc
    try:
        # Fetch what is missing, but leave quantizing to `download`/`serve` (README "Model files").
        prepare_model(model_dir, model_url=model_url, env=os.environ, quantize=False,
                      on_demand=True, head=head)
    except StoreError as exc:
        raise RuntimeFailure(str(exc)) from exc
    try:
        vad = _open_vad(args, model_dir)
        recognizer = Recognizer(GigaamModel(model_dir, head=head), vad=vad)
    except ModelError as exc:
        raise RuntimeFailure(str(exc)) from exc
    hotwords = compile_phrases(phrases, recognizer.model.vocab, args.hotwords_boost)
    # Window by window, as the server's file routes do, so that progress can be shown: a line
    # on a terminal, nothing on a pipe or file (README "Command line"), a summary in the log.
    expected = expected_samples(source)
    progress = (TerminalProgress(sys.stderr, expected / MODEL_RATE)
                if expected and sys.stderr.isatty() and log.isEnabledFor(logging.ERROR)
                else None)
    started = time.monotonic()
    words: list[Word] = []
    try:
        spans, total = None, 0
        if vad is not None:  # D28: the VAD reads the file first; pauses are skipped
            spans, _, total = read_spans(vad, model_blocks(source))
        windows = FileWindows(model_blocks(source), spans)
        for window, audio in windows:
            tokens = recognizer.tokens(audio, hotwords)
            words += own_words(recognizer.model.vocab, window, tokens)[1]
            if progress is not None and expected:
                progress.update(min(1.0, window.stop / expected))
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {args.file}: {exc.strerror}") from exc
    except AudioError as exc:
        raise RuntimeFailure(f"invalid audio: {exc}") from exc
    if progress is not None:
        progress.finish()
    total = total or windows.samples  # with spans, the VAD's reading counted the file
    transcript = transcript_of(words, total)
    seconds = total / MODEL_RATE
    elapsed = time.monotonic() - started
    log.info("transcribed %.1f s of audio into %d words in %.1f s (real-time factor %.3f)",
             seconds, len(transcript.words), elapsed, elapsed / seconds if seconds else 0.0)
    # The same writer as `/v1/transcribe?format=` (docs/api.md); JSON gets the newline a
    # terminal needs, the other formats end in one already.
    body = render(transcript, args.format)
    sys.stdout.write(body + "\n" if args.format == "json" else body)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
