"""``gigastt stream``: a command-line client that streams a file or standard input to ``/v1/ws``.
Reads and paces the audio, prints partials and finals, answers Ctrl-C with ``stop`` (docs/api.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gigastt.config import (
    STREAM_FRAME_MS,
    STREAM_URL,
    ConfigError,
    read_api_key_file,
)
from gigastt.protocol import SUPPORTED_RATES

if TYPE_CHECKING:  # numpy loads only when a file is streamed (`gigastt --help` stays light)
    import numpy as np
    import numpy.typing as npt

__all__ = ["OUTPUT_FORMATS", "Printer", "StreamFailure", "add_stream_arguments", "run_stream"]

OUTPUT_FORMATS = ("text", "json", "srt")
EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130
# The rate a file is resampled to when the server does not take its own (the model's rate).
FALLBACK_RATE = 16000
# The server's close code after its `timeout` error: no inference slot in time (docs/api.md).
CLOSE_BUSY = 1013
_CLOSE_MEANINGS = {
    1001: "the server is shutting down",
    1002: "protocol error",
    1006: "connection lost",
    1007: "invalid data",
    1008: "policy violation",
    1009: "message too big",
    1011: "server error",
    CLOSE_BUSY: "server busy, try again later",
}
# Frames read ahead of the sender from standard input (a bounded queue: --fast never buffers a
# whole pipe in memory).
_STDIN_QUEUE = 16


class StreamFailure(Exception):
    """The session failed (connection, upgrade or server error); printed as one line, exit 1."""


class UsageError(Exception):
    """Bad arguments that argparse cannot see alone; printed by argparse, exit 2."""


# --- arguments ----------------------------------------------------------------------------------


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", nargs="?", default="-",
                        help="audio file (WAV; more formats with extras; at most 600 s), or -"
                             " (the default) for raw PCM16 little-endian mono on standard input"
                             " (needs --rate)")
    parser.add_argument("--url", default=STREAM_URL,
                        help=f"the server's WebSocket endpoint (default {STREAM_URL}); ws:// or"
                             " wss://, user:password@ for a proxy's basic auth")
    parser.add_argument("--rate", type=int, default=None,
                        help="sample rate of the raw PCM16 on standard input: "
                             + ", ".join(map(str, SUPPORTED_RATES)))
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="fast", action="store_false", default=False,
                      help=f"send {STREAM_FRAME_MS} ms frames at the pace of real time (default)")
    pace.add_argument("--fast", dest="fast", action="store_true",
                      help="send as fast as the server takes the audio")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="text",
                        help="text: finals as lines (partials on a refreshing line on a"
                             " terminal); json: every server message, one per line; srt:"
                             " subtitles of the finals at the end (default text)")
    parser.add_argument("--api-key-file", type=Path, default=None, metavar="F",
                        help="send the key in this file (the server's --api-key-file)")
    # Usage errors found after parsing show this sub-command's usage, not the top level's.
    parser.set_defaults(stream_parser=parser)


@dataclass(frozen=True)
class StreamOptions:
    """What ``gigastt stream`` was asked to do, validated."""

    source: str  # a path, or "-" for standard input
    url: str
    rate: int | None
    fast: bool
    fmt: str
    api_key: str | None = field(default=None, repr=False)


def stream_options(args: argparse.Namespace) -> StreamOptions:
    """Validate the parsed arguments; raises UsageError with a message for argparse."""
    url = args.url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("ws", "wss") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port, an unclosed [IPv6 host
        valid = False
    if not valid:
        raise UsageError(f"invalid --url {shown_url(url)}: expected ws://host[:port]/path or"
                         " wss://host[:port]/path")
    if args.file == "-":
        if args.rate is None:
            raise UsageError("raw PCM16 on standard input (FILE -) needs --rate")
        if args.rate not in SUPPORTED_RATES:
            raise UsageError(f"--rate must be one of {', '.join(map(str, SUPPORTED_RATES))}")
    elif args.rate is not None:
        raise UsageError("--rate is only for raw PCM16 on standard input (FILE -); a file"
                         " states its own rate")
    key = None
    if args.api_key_file is not None:
        try:
            key = read_api_key_file(args.api_key_file)
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
    return StreamOptions(args.file, url, args.rate, args.fast, args.format, key)


def shown_url(url: str) -> str:
    """The URL without any ``user:password@`` (never printed: it may hold a password)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# --- audio sources ------------------------------------------------------------------------------


@dataclass
class Audio:
    """PCM16 frames at ``rate``, from a decoded file or from standard input."""

    rate: int
    frames: AsyncIterator[bytes]


def frame_bytes(rate: int) -> int:
    return rate * STREAM_FRAME_MS // 1000 * 2


def file_audio(path: str) -> Audio:
    """A file read with the server's own decoder as it is sent, a block at a time (D30: hours
    of audio cost a block of memory); a rate the server does not take is resampled to 16 kHz.
    Raises StreamFailure for an unreadable or undecodable file, now or when sending reaches
    the bad part."""
    import numpy as np

    from gigastt.engine.audio import AudioError, Resampler, open_audio

    try:
        source = open_audio(Path(path))
    except OSError as exc:
        raise StreamFailure(f"cannot read {path}: {exc.strerror}") from exc
    except AudioError as exc:
        raise StreamFailure(f"invalid audio in {path}: {exc}") from exc
    rate = source.rate if source.rate in SUPPORTED_RATES else FALLBACK_RATE
    step = frame_bytes(rate)

    def pcm(samples: npt.NDArray[np.float32]) -> bytes:
        return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()

    def blocks() -> Iterator[bytes]:
        resampler = None if rate == source.rate else Resampler(source.rate, rate)
        try:
            for block in source.blocks():
                yield pcm(block if resampler is None else resampler.process(block))
            if resampler is not None:
                yield pcm(resampler.flush())
        except OSError as exc:
            raise StreamFailure(f"cannot read {path}: {exc.strerror}") from exc
        except AudioError as exc:
            raise StreamFailure(f"invalid audio in {path}: {exc}") from exc

    async def frames() -> AsyncIterator[bytes]:
        held = b""
        # Decoded on the loop: a block takes milliseconds, a frame is 100 ms of audio.
        for data in blocks():
            held += data
            whole = len(held) // step * step
            for start in range(0, whole, step):
                yield held[start : start + step]
            held = held[whole:]
        if held:
            yield held

    return Audio(rate, frames())


def stdin_audio(rate: int, stream: Any) -> Audio:
    """Raw PCM16 from ``stream`` (binary), read by a daemon thread: a read that blocks (a
    microphone pipe) never holds up the event loop, nor the exit after Ctrl-C."""
    step = frame_bytes(rate)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_STDIN_QUEUE)

    def put(item: bytes | BaseException | None) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except (RuntimeError, asyncio.CancelledError):  # the loop has ended: stop reading
            return False
        return True

    def read() -> None:
        try:
            while chunk := stream.read(step):
                if not put(chunk):
                    return
        except (OSError, ValueError) as exc:
            put(exc)
            return
        put(None)

    threading.Thread(target=read, name="stdin-reader", daemon=True).start()

    async def frames() -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise StreamFailure(f"cannot read standard input: {item}")
            yield item

    return Audio(rate, frames())


# --- output -------------------------------------------------------------------------------------


def printable(value: object, limit: int = 100_000) -> str:
    """Server text as it may reach a terminal: no control characters (a hostile server could
    otherwise send escape sequences), at most ``limit`` characters."""
    return "".join(ch for ch in str(value)[:limit] if ch.isprintable())


class Printer:
    """Turns server messages into output; sans-I/O apart from writing to ``out``.

    ``text`` on a terminal shows the current partial on one line that each message rewrites,
    and each final as a line of its own; elsewhere only finals, as plain lines. ``json`` writes
    each message as the server sent it. ``srt`` keeps the finals' words for ``finish``.
    """

    def __init__(self, fmt: str, out: TextIO, *, tty: bool = False,
                 width: Callable[[], int] = lambda: shutil.get_terminal_size().columns) -> None:
        self.fmt = fmt
        self.out = out
        self.tty = tty
        self._width = width
        self._partial_shown = False
        self.finals: list[dict[str, Any]] = []

    def message(self, raw: str, parsed: dict[str, Any]) -> None:
        kind = parsed.get("type")
        if kind == "final":
            self.finals.append(parsed)
        if self.fmt == "json":
            self._write(raw + "\n")
        elif self.fmt == "text":
            if kind == "partial" and self.tty:
                self._write("\r\x1b[2K" + self._fit(printable(parsed.get("text", ""))))
                self._partial_shown = True
            elif kind == "final":
                text = printable(parsed.get("text", ""))
                self._clear_partial()
                if text:
                    self._write(text + "\n")

    def _fit(self, text: str) -> str:
        # The line must not wrap, or "\r" would rewrite only its last row: keep its tail.
        room = max(self._width() - 1, 8)
        return text if len(text) <= room else "…" + text[-(room - 1):]

    def _clear_partial(self) -> None:
        if self._partial_shown:
            self._write("\r\x1b[2K")
            self._partial_shown = False

    def finish(self, duration: float) -> None:
        """End of the session: a shown partial is cleared; ``srt`` writes its subtitles."""
        self._clear_partial()
        if self.fmt == "srt":
            from gigastt.engine.transcript import Transcript, Word
            from gigastt.subtitles import render_srt

            words = tuple(Word(printable(w["word"]), float(w["start"]), float(w["end"]),
                               float(w.get("confidence", 0.0)))
                          for final in self.finals for w in final.get("words", []))
            text = " ".join(printable(f["text"]) for f in self.finals if f.get("text"))
            self._write(render_srt(Transcript(text, words, duration)))

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


# --- the session --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How the session ended, as the receiver saw it."""

    close_code: int | None = None
    close_reason: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)


def failure_line(outcome: Outcome) -> str | None:
    """The one line that explains a failed session, or None when it ended well (Close 1000
    without an ``error`` message)."""
    code = outcome.close_code or 1006
    if code == CLOSE_BUSY:
        return "server busy: no inference slot in time, try again later (WebSocket close 1013)"
    last = outcome.errors[-1] if outcome.errors else None
    said = (f"{printable(last.get('message'), 200)} ({printable(last.get('code'), 50)})"
            if last else "")
    if code == 1000:
        return f"server error: {said}" if said else None
    reason = printable(outcome.close_reason, 200) or _CLOSE_MEANINGS.get(code, "closed")
    return f"{said + ': ' if said else ''}{reason} (WebSocket close {code})"


async def _connect(opts: StreamOptions) -> Any:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.typing import Subprotocol

    headers: dict[str, str] = {}
    subprotocols: list[Subprotocol] | None = None
    if opts.api_key is not None:
        if "@" in urllib.parse.urlsplit(opts.url).netloc:
            # The Authorization header carries the proxy's basic auth: the key goes as the
            # subprotocol instead (D23 in docs/decisions.md).
            subprotocols = [Subprotocol("bearer." + opts.api_key)]
        else:
            headers["Authorization"] = "Bearer " + opts.api_key
    url = shown_url(opts.url)
    try:
        return await connect(
            opts.url, additional_headers=headers, subprotocols=subprotocols,
            compression=None, max_size=None, open_timeout=15,
            # The server pings us (--ws-ping-secs); our own pings would sit behind audio that a
            # server holding us back (TCP back-pressure) has not read, and time out (D55).
            ping_interval=None, close_timeout=10,
            ssl=ssl.create_default_context() if opts.url.startswith("wss:") else None)
    except InvalidStatus as exc:
        status = exc.response.status_code
        detail = _refusal_detail(exc.response.body)
        raise StreamFailure(f"{url} refused the WebSocket upgrade: HTTP {status}"
                            f"{' (' + detail + ')' if detail else ''}") from exc
    except InvalidHandshake as exc:
        raise StreamFailure(f"{url}: not a WebSocket endpoint ({exc})") from exc
    except ssl.SSLError as exc:
        raise StreamFailure(f"cannot connect to {url}: TLS: {exc.reason or exc}") from exc
    except (OSError, TimeoutError) as exc:
        # asyncio words a refused connection as "Connect call failed (...)": say it plainly. A
        # failed name lookup (socket.gaierror) has a negative EAI_* errno that os.strerror does
        # not know; its own strerror says it ("Name or service not known").
        code = exc.errno
        reason = (os.strerror(code) if code is not None and code > 0
                  else exc.strerror or str(exc) or type(exc).__name__)
        raise StreamFailure(f"cannot connect to {url}: {reason}") from exc


def _refusal_detail(body: bytes | bytearray | None) -> str:
    """The message of a JSON error body (ours), else its first line, printable and short."""
    if not body:
        return ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            message = parsed.get("error", parsed.get("message"))
            if isinstance(message, dict):  # OpenAI's shape
                message = message.get("message")
            if isinstance(message, str):
                return printable(message, 200)
    except ValueError:
        pass
    line = body.decode("utf-8", "replace").strip().splitlines()
    return printable(line[0], 200) if line else ""


async def _receive(ws: Any, printer: Printer, outcome: Outcome) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for raw in ws:
            if not isinstance(raw, str):
                continue  # the server sends only text; never fail on anything else
            try:
                parsed = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(parsed, dict):
                continue
            if parsed.get("type") == "error":
                outcome.errors.append(parsed)
            printer.message(raw, parsed)
    except ConnectionClosed:
        pass
    received = ws.protocol.close_rcvd
    outcome.close_code = received.code if received is not None else 1006
    outcome.close_reason = received.reason if received is not None else ""


@dataclass
class Sent:
    """Seconds of audio sent so far (kept outside the sender, which may be cancelled)."""

    seconds: float = 0.0


async def _send(ws: Any, audio: Audio, fast: bool, stop: asyncio.Event, sent: Sent) -> None:
    """Send configure and the frames (paced, unless ``fast``) until the audio ends or ``stop``."""
    await ws.send(json.dumps({"type": "configure", "sample_rate": audio.rate}))
    started = time.monotonic()
    total = 0
    async for frame in audio.frames:
        if stop.is_set():
            break
        await ws.send(frame)
        total += len(frame)
        sent.seconds = total / (2 * audio.rate)
        if not fast:
            # Against the clock, not frame by frame: sleeps that run late do not add up.
            delay = started + sent.seconds - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


async def stream(opts: StreamOptions, out: TextIO, stdin: Any) -> int:
    """One session: connect, send, print; the exit code (StreamFailure for a failed session).

    Ctrl-C is ours from before the connection is made: the first one ends the audio with
    ``stop`` and waits for the final; a second one gives up at once (exit 130).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    interrupts = 0

    def interrupted() -> None:
        nonlocal interrupts
        interrupts += 1
        stop.set()
        if interrupts > 1 and main is not None:
            main.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
        loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        return await _session(opts, out, stdin, stop)
    except asyncio.CancelledError:
        if interrupts > 1:
            return EXIT_INTERRUPTED
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _session(opts: StreamOptions, out: TextIO, stdin: Any, stop: asyncio.Event) -> int:
    from websockets.exceptions import ConnectionClosed

    audio = stdin_audio(opts.rate or 0, stdin) if opts.source == "-" else file_audio(opts.source)
    printer = Printer(opts.fmt, out, tty=opts.fmt == "text" and out.isatty())
    ws = await _connect(opts)
    outcome, sent = Outcome(), Sent()
    receiver = asyncio.ensure_future(_receive(ws, printer, outcome))
    sender = asyncio.ensure_future(_send(ws, audio, opts.fast, stop, sent))
    try:
        await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not receiver.done():
            # The audio ended (or Ctrl-C, or standard input failed): ask for the final.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"type": "stop"}))
        await receiver  # the final that answers `stop`, then the server's Close
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        with contextlib.suppress(Exception):
            await ws.close()
    printer.finish(sent.seconds)
    if not sender.cancelled():  # done either way: gathered above
        failed = sender.exception()
        if isinstance(failed, StreamFailure):
            raise failed
    problem = failure_line(outcome)
    if problem is not None:
        raise StreamFailure(problem)
    return EXIT_OK


def run_stream(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``gigastt stream``: 0 when the session ended with its final, 1 on a connection or server
    error (one line on stderr), 2 on a usage error (through argparse), 130 on a second Ctrl-C."""
    try:
        opts = stream_options(args)
    except UsageError as exc:
        getattr(args, "stream_parser", parser).error(str(exc))
    try:
        return asyncio.run(stream(opts, sys.stdout, sys.stdin.buffer))
    except StreamFailure as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader of our output went away (`| head`): nothing left to say to anyone.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
