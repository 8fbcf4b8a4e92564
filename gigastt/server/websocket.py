"""The ``/v1/ws`` session: h11 → websockets hand-off, control messages, timers, close paths.

One coroutine owns a session's lifetime; frames, timers, passes and the drain reach it as events, so
each exit sends its ``final`` (where D7 wants one) and exactly one Close, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers as WsHeaders
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from gigastt import errors, protocol
from gigastt.engine.audio import MODEL_RATE, pcm16_to_float
from gigastt.engine.executor import InferenceExecutor, recognize
from gigastt.engine.hotwords import Hotwords, compile_phrases, parse_list
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.streaming import Pass, Segment, StreamingRecognizer
from gigastt.engine.tokenizer import Token, Vocabulary
from gigastt.engine.vad import VadStream
from gigastt.engine.vadlane import VadLane
from gigastt.errors import ErrorCode
from gigastt.server.admission import AdmissionPool, PoolClosed, PoolTimeout, Slot
from gigastt.server.http import Headers, Request, Response, SwitchProtocols, plain_response
from gigastt.server.metrics import ServerMetrics

if TYPE_CHECKING:  # routes imports this module
    from gigastt.server.routes import ServerState

log = logging.getLogger(__name__)
# websockets logs every connection close at INFO; only its warnings matter to operators.
_protocol_log = logging.getLogger(__name__ + ".protocol")
_protocol_log.setLevel(logging.WARNING)

READ_SIZE = 64 * 1024
MAX_EMPTY_FRAMES = 1000
CLOSE_GRACE_SECS = 2.0
# Frames waiting for the session coroutine; a full queue stops reading the socket (back-pressure).
QUEUE_FRAMES = 32
# More pings than this per second is a flood: each costs us a pong write (closed with 1008).
MAX_PINGS_PER_SECOND = 50

SUPPORTED_RATES = protocol.SUPPORTED_RATES


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a session needs from the server, taken at upgrade time (reloads apply to new ones)."""

    executor: InferenceExecutor[Recognizer]
    vocab: Vocabulary
    pool: AdmissionPool
    shutdown: asyncio.Event
    metrics: ServerMetrics | None
    checkout_timeout: int
    idle_timeout: int
    max_session: int
    frame_max: int
    ping_interval: int
    vad_lane: VadLane | None = None  # D28: the VAD is loaded
    # D29: the head's model id (``ready.model``), the server's phrase list and its boost.
    model_id: str = protocol.MODEL_ID
    hotwords: Hotwords | None = None
    hotwords_boost: float = 0.0


def offered_subprotocols(request: Request) -> list[str]:
    """The ``Sec-WebSocket-Protocol`` offers, in order (websockets validates their syntax)."""
    return [item.strip() for name, value in request.headers if name == b"sec-websocket-protocol"
            for item in value.decode("latin-1").split(",") if item.strip()]


def upgrade(request: Request, settings: SessionSettings,
            subprotocol: str | None = None) -> SwitchProtocols | Response:
    """Validate the upgrade in the order of docs/architecture.md §9 and prepare the session.

    ``subprotocol`` is one of the client's offers to answer with (the ``bearer.<key>`` offer of
    D23), else the answer names none.
    """
    # RFC 6455 §4.1 needs HTTP/1.1; a body would sit unread before the first frame (docs/api.md).
    if request.http_version != b"1.1":
        return plain_response(400, b"WebSocket upgrade requires HTTP/1.1")
    if request.has_body:
        return plain_response(400, b"WebSocket upgrade request must not have a body")
    h = {k: v for k, v in reversed(request.headers)}
    connection = h.get(b"connection", b"").decode("latin-1").lower()
    if "upgrade" not in [t.strip() for t in connection.split(",")]:
        return plain_response(400, b"Connection header did not include 'upgrade'", close=False)
    if h.get(b"upgrade", b"").decode("latin-1").strip().lower() != "websocket":
        return plain_response(400, b"`Upgrade` header did not include 'websocket'", close=False)
    if b"sec-websocket-key" not in h:
        return plain_response(400, b"`Sec-WebSocket-Key` header missing", close=False)
    if h.get(b"sec-websocket-version", b"").strip() != b"13":
        return plain_response(400, b"`Sec-WebSocket-Version` header did not include '13'",
                              close=False)
    headers = WsHeaders()
    for name, value in request.headers:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    # Created OPEN so that its parser reads frames from the first byte after our 101
    # (vendor_notes/websockets.md); Origin is decided by our own policy, not by websockets.
    ws = ServerProtocol(state=State.OPEN, origins=None, extensions=None,
                        subprotocols=[Subprotocol(subprotocol)] if subprotocol else None,
                        max_size=settings.frame_max, logger=_protocol_log)
    response = ws.accept(WsRequest(request.path, headers))
    if response.status_code != 101:
        return plain_response(response.status_code, bytes(response.body or b""), close=False)
    keep = {"upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol"}
    reply: Headers = [(k.lower().encode(), v.encode()) for k, v in response.headers.raw_items()
                      if k.lower() in keep]
    return SwitchProtocols(reply, Session(ws, settings, request.request_id, request.peer))


class _Closed(Exception):
    """The connection is finished (peer closed, protocol error or transport failure)."""


class Session:
    """A WebSocket session from the 101 to the last byte."""

    def __init__(self, ws: ServerProtocol, settings: SessionSettings, request_id: str,
                 peer: str | None) -> None:
        self.ws = ws
        self.settings = settings
        self.rid = request_id
        self.peer = peer
        self.rate = protocol.DEFAULT_INPUT_RATE
        self.recognizer: StreamingRecognizer | None = None
        self.audio_received = False
        self.carry = b""
        self.empty_frames = 0
        # Unbounded so that the end marker can always be queued; the reader itself stops
        # reading the socket while QUEUE_FRAMES frames wait (back-pressure).
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.room = asyncio.Event()
        self.pass_task: asyncio.Task[list[Token]] | None = None
        self.current: Pass | None = None
        # D28: the VAD's run over the audio fed so far (one at a time, like passes).
        self.vad_task: asyncio.Task[Any] | None = None
        self.vad_stream: VadStream | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.first = b""
        self.reading: asyncio.Task[None] | None = None
        self.last_activity = 0.0
        self.ping_window = (0.0, 0)
        self.fragments: tuple[Opcode, list[bytes]] | None = None
        # Seconds of audio received, recognised by the last finished pass, and to be recognised
        # by the pass in flight: the session's lag (a metric, without per-session labels: D43).
        self.received_secs = 0.0
        self.recognised_secs = 0.0
        self.pass_until = 0.0
        # Set once the session is ending: its remaining passes all lead to its last final.
        self.ending = False
        # What the client's configure messages set (docs/api.md "GET /v1/ws"); they compose.
        self.v12 = False
        self.endpoint_mode = "auto"
        self.min_silence_ms: int | None = None
        self.commit_policy = "auto"
        self.vad = settings.vad_lane is not None  # configure.vad may turn it off
        self.hotwords = settings.hotwords  # configure.hotwords replaces it (D29)

    # --- I/O edges ------------------------------------------------------------------------

    def _flush(self) -> None:
        assert self.writer is not None
        for data in self.ws.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                with contextlib.suppress(OSError):
                    self.writer.write_eof()

    async def _drain(self) -> None:
        assert self.writer is not None
        self._flush()
        try:
            await asyncio.wait_for(self.writer.drain(), self.settings.idle_timeout or None)
        except (ConnectionError, TimeoutError) as exc:
            raise _Closed from exc

    async def _send_text(self, text: str) -> None:
        if self.ws.state is not State.OPEN:
            raise _Closed
        self.ws.send_text(text.encode())
        await self._drain()

    async def _close(self, code: int, reason: str) -> None:
        """Send our Close (once) and wait briefly for the peer's, then the socket goes."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            with contextlib.suppress(_Closed):
                await self._drain()
        if self.reading is None:  # closing before Ready: nobody reads the socket yet
            assert self.reader is not None
            self.reading = asyncio.ensure_future(self._read_frames(self.reader, self.first))
        deadline = time.monotonic() + CLOSE_GRACE_SECS
        while self.ws.state is not State.CLOSED and time.monotonic() < deadline:
            try:
                frame = await asyncio.wait_for(self.frames.get(), deadline - time.monotonic())
            except TimeoutError:
                break
            if frame is None:
                break

    async def _read_frames(self, reader: asyncio.StreamReader, first: bytes) -> None:
        """Socket → protocol → queue. Ends with ``None`` on EOF, error or a protocol failure."""
        data = first
        try:
            if not data:
                data = await reader.read(READ_SIZE)
            while True:
                if data:
                    self.ws.receive_data(data)
                else:
                    self.ws.receive_eof()
                for event in self.ws.events_received():
                    assert isinstance(event, Frame)
                    if event.opcode is not Opcode.PONG:  # D20: pong replies do not count
                        self.last_activity = time.monotonic()
                    if event.opcode is Opcode.PING and self._ping_flood():
                        log.warning("ws %s: ping flood", self.rid)
                        self.ws.send_close(1008, "ping flood")
                        self._flush()
                        return
                    self.frames.put_nowait(event)
                await self._drain()  # automatic pongs and close replies, with back-pressure
                if not data or self.ws.state is State.CLOSED or self.ws.parser_exc:
                    break
                while self.frames.qsize() >= QUEUE_FRAMES:
                    self.room.clear()
                    await self.room.wait()
                data = await reader.read(READ_SIZE)
        except (ConnectionError, EOFError, _Closed):
            pass
        finally:
            self.frames.put_nowait(None)

    async def _next_frame(self) -> Frame | None:
        frame = await self.frames.get()
        self.room.set()
        return frame

    def _ping_flood(self) -> bool:
        second, count = self.ping_window
        now = time.monotonic()
        if now - second >= 1.0:
            second, count = now, 0
        self.ping_window = (second, count + 1)
        return bool(count >= MAX_PINGS_PER_SECOND)

    # --- lifetime ---------------------------------------------------------------------------

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  first_bytes: bytes) -> None:
        self.writer, self.reader, self.first = writer, reader, first_bytes
        metrics = self.settings.metrics
        if metrics:
            metrics.ws_opened()
        log.info("ws %s: connected from %s", self.rid, self.peer)
        slot: Slot | None = None
        try:
            # Frames sent while waiting for a slot are processed after Ready (docs/api.md).
            slot = await self._checkout()
            if slot is None:
                return
            if metrics:
                metrics.live_sessions.add(self)
            await self._send_text(protocol.ready(max_session_secs=self.settings.max_session,
                                                 idle_timeout_secs=self.settings.idle_timeout,
                                                 model=self.settings.model_id))
            self.reading = asyncio.ensure_future(self._read_frames(reader, self.first))
            await self._loop()
        except _Closed:
            pass
        finally:
            for task in (self.pass_task, self.vad_task):
                if task is not None and not task.done():
                    task.cancel()
            if slot is not None:
                slot.release()
            if self.reading is not None:
                self.reading.cancel()
            if metrics:
                metrics.live_sessions.discard(self)
                metrics.ws_closed()
            log.info("ws %s: session ended", self.rid)

    async def _checkout(self) -> Slot | None:
        s = self.settings
        if s.shutdown.is_set():
            await self._close(1001, "server shutdown")
            return None
        started = time.monotonic()
        acquire = asyncio.ensure_future(s.pool.acquire(s.checkout_timeout))
        stop = asyncio.ensure_future(s.shutdown.wait())
        watch = asyncio.ensure_future(self._watch_peer())
        try:
            pending: set[asyncio.Future[Any]] = {acquire, stop, watch}
            while acquire in pending and stop in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if watch in done and watch.result():
                    break
        except BaseException:  # cancelled: a slot must not be left to a task nobody awaits
            self._abandon(acquire)
            raise
        finally:
            stop.cancel()
            watch.cancel()
            await asyncio.wait({watch})  # the reader is free for _read_frames afterwards
        if s.shutdown.is_set():  # shutdown wins ties (docs/architecture.md §9)
            self._abandon(acquire)
            await self._close(1001, "server shutdown")
            return None
        if not watch.cancelled() and watch.result():
            # Gone while queued: leave the FIFO now, not at the checkout timeout.
            self._abandon(acquire)
            log.info("ws %s: client left while waiting for a slot", self.rid)
            return None
        try:
            slot = acquire.result()
        except PoolTimeout:
            if s.metrics:
                s.metrics.observe_checkout(time.monotonic() - started)
                s.metrics.pool_timeout()
            retry = errors.checkout_retry_ms(s.checkout_timeout)
            await self._send_text(errors.ws_error_message(ErrorCode.TIMEOUT, retry))
            await self._close(1013, "try again later")
            return None
        except PoolClosed:
            await self._close(1001, "server shutdown")
            return None
        if s.metrics:
            s.metrics.observe_checkout(time.monotonic() - started)
        return slot

    async def _watch_peer(self) -> bool:
        """While queued for a slot: True as soon as the client is gone (EOF or reset).

        What the client sends meanwhile is kept for after Ready (``self.first``), up to
        READ_SIZE bytes; past that the socket is left unread (back-pressure) and False comes
        back: the wait goes on without watching.
        """
        assert self.reader is not None
        try:
            while len(self.first) < READ_SIZE:
                data = await self.reader.read(READ_SIZE - len(self.first))
                if not data:
                    return True
                self.first += data
        except ConnectionError:
            return True
        return False

    @staticmethod
    def _abandon(acquire: asyncio.Future[Slot]) -> None:
        """Stop waiting for a slot; one handed over at this very moment goes back."""
        if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
            acquire.result().release()
        else:
            acquire.cancel()

    async def _loop(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.max_session if s.max_session else None
        self.last_activity = time.monotonic()
        next_ping = loop.time() + s.ping_interval if s.ping_interval else None
        getter: asyncio.Task[Frame | None] | None = None
        stop = asyncio.ensure_future(s.shutdown.wait())
        try:
            while True:
                if s.shutdown.is_set():
                    # What was read from the socket before the drain is part of what the client
                    # sent before it: processed, nothing more is read (docs/runbook.md).
                    if getter is not None and getter.done():
                        frame, getter = getter.result(), None
                        if frame is None or await self._on_frame(frame):
                            return
                    while not self.frames.empty():
                        frame = await self._next_frame()
                        if frame is None or await self._on_frame(frame):
                            return
                    await self._end(1001, "server shutdown")
                    return
                now = loop.time()
                # Behind by a whole pass: leave frames queued (the reader then stops reading the
                # socket) until the pass or VAD run in flight is done. Meanwhile the client is
                # not idle.
                holding = ((self.pass_task is not None or self.vad_task is not None)
                           and self.recognizer is not None and self.recognizer.backlogged)
                if holding:
                    self.last_activity = time.monotonic()
                if deadline is not None and now >= deadline:
                    await self._send_text(
                        errors.ws_error_message(ErrorCode.MAX_SESSION_DURATION_EXCEEDED))
                    await self._end(1008, "max session duration")
                    return
                idle_left = s.idle_timeout - (time.monotonic() - self.last_activity)
                if s.idle_timeout and idle_left <= 0:
                    log.info("ws %s: idle timeout", self.rid)
                    await self._end(1000, "idle timeout")
                    return
                if next_ping is not None and now >= next_ping:
                    self.ws.send_ping(b"")
                    await self._drain()
                    next_ping = now + s.ping_interval
                waits: list[float] = [idle_left] if s.idle_timeout else []
                if deadline is not None:
                    waits.append(deadline - now)
                if next_ping is not None:
                    waits.append(next_ping - now)
                if getter is None and not holding:
                    getter = asyncio.ensure_future(self._next_frame())
                pending: set[asyncio.Future[Any]] = {stop} if getter is None else {getter, stop}
                if self.pass_task is not None:
                    pending.add(self.pass_task)
                if self.vad_task is not None:
                    pending.add(self.vad_task)
                done, _ = await asyncio.wait(pending, timeout=max(0.0, min(waits, default=3600)),
                                             return_when=asyncio.FIRST_COMPLETED)
                if self.vad_task is not None and self.vad_task in done:
                    await self._vad_done()
                if self.pass_task is not None and self.pass_task in done:
                    await self._pass_done()
                if getter in done:
                    frame = getter.result()
                    getter = None
                    if frame is None:
                        return  # peer closed, transport error or protocol violation: no final
                    if await self._on_frame(frame):
                        return
        finally:
            stop.cancel()
            if getter is not None:
                getter.cancel()

    async def _on_frame(self, frame: Frame) -> bool:
        """Handle one client frame; True when the session is over."""
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.fragments = (frame.opcode, [bytes(frame.data)])
        elif frame.opcode is Opcode.CONT and self.fragments is not None:
            self.fragments[1].append(bytes(frame.data))
        else:
            # A client Close ends the session; websockets already echoed it (RFC 6455 §5.5.1).
            return frame.opcode is Opcode.CLOSE
        if not frame.fin:
            return False  # websockets enforces the size cap on the whole message
        opcode, parts = self.fragments
        self.fragments = None
        if opcode is Opcode.BINARY:
            return await self._on_audio(b"".join(parts))
        try:
            text = b"".join(parts).decode("utf-8")
        except UnicodeDecodeError:
            await self._close(1007, "invalid UTF-8")
            return True
        return await self._on_text(text)

    async def _on_text(self, text: str) -> bool:
        message = protocol.parse_control(text)
        if message is None:
            log.debug("ws %s: ignored text message of %d characters", self.rid, len(text))
            return False
        if isinstance(message, protocol.Stop):
            log.info("ws %s: stop", self.rid)
            await self._end(1000, "")
            return True
        if self.audio_received:
            await self._send_text(errors.ws_error_message(ErrorCode.CONFIGURE_TOO_LATE))
            return False
        version = message.protocol_version
        if version is not None and version not in protocol.PROTOCOL_VERSIONS:
            await self._send_text(errors.unsupported_protocol_version(version))
            await self._close(1002, "unsupported protocol version")
            return True
        # All or nothing: one bad value gets one error and changes nothing (docs/api.md).
        code = message.invalid_field(vad_loaded=self.settings.vad_lane is not None)
        if code == ErrorCode.INVALID_SAMPLE_RATE:
            assert message.sample_rate is not None
            await self._send_text(errors.invalid_sample_rate(message.sample_rate))
            return False
        if code is not None:
            await self._send_text(errors.ws_error_message(ErrorCode(code)))
            return False
        self._apply(message)
        return False

    def _apply(self, message: protocol.Configure) -> None:
        if message.protocol_version is not None:
            self.v12 = message.protocol_version == "1.2"
        if message.sample_rate is not None:
            self.rate = message.sample_rate
            self.recognizer = None
            log.info("ws %s: configured %d Hz", self.rid, self.rate)
        self.endpoint_mode = message.endpoint_mode or self.endpoint_mode
        self.commit_policy = message.commit_policy or self.commit_policy
        if message.min_silence_ms is not None:
            self.min_silence_ms = message.min_silence_ms
        if message.vad is not None:
            self.vad = message.vad
        if message.hotwords is not None:  # checked by invalid_field: strings within bounds
            self.hotwords = compile_phrases(
                parse_list(str(item) for item in message.hotwords),
                self.settings.vocab, self.settings.hotwords_boost)

    async def _on_audio(self, data: bytes) -> bool:
        if not data:
            self.empty_frames += 1
            if self.empty_frames > MAX_EMPTY_FRAMES:
                log.warning("ws %s: more than %d empty frames", self.rid, MAX_EMPTY_FRAMES)
                await self._close(1008, "too many empty frames")
                return True
            return False
        self.audio_received = True
        data = self.carry + data
        if len(data) % 2:
            data, self.carry = data[:-1], data[-1:]
        else:
            self.carry = b""
        seconds = len(data) / 2 / self.rate
        self.received_secs += seconds
        if self.settings.metrics:
            self.settings.metrics.live_audio_received(seconds)
        self._recognizer().feed(pcm16_to_float(data))
        self._maybe_start_vad()
        self._maybe_start_pass()
        return False

    # --- recognition passes -----------------------------------------------------------------

    def _recognizer(self) -> StreamingRecognizer:
        if self.recognizer is None:
            # 1.0 has no commits: with none reported, a partial comes only when its text changed
            # (the version is fixed by now: configure after the first audio is too late).
            self.recognizer = StreamingRecognizer(
                self.settings.vocab, input_rate=self.rate, endpoint_mode=self.endpoint_mode,
                min_silence_ms=self.min_silence_ms,
                commit_policy=self.commit_policy if self.v12 else "on_finalize",
                vad=self.vad)
            if self.vad:
                self.vad_stream = VadStream(MODEL_RATE)
        return self.recognizer

    def _maybe_start_vad(self) -> None:
        lane, stream = self.settings.vad_lane, self.vad_stream
        if self.vad_task is None and lane is not None and stream is not None and \
                self.recognizer is not None:
            audio = self.recognizer.vad_audio()
            if audio.shape[0]:
                self.vad_task = asyncio.ensure_future(lane.probabilities(stream, audio))

    async def _vad_done(self) -> None:
        task, self.vad_task = self.vad_task, None
        assert task is not None and self.recognizer is not None
        try:
            probabilities = task.result()
        except Exception:
            log.exception("ws %s: VAD failed", self.rid)
            await self._send_text(errors.ws_error_message(ErrorCode.INFERENCE_ERROR))
            return
        if self.settings.metrics and self.vad_stream is not None:
            self.settings.metrics.vad_chunks("ws", probabilities, self.vad_stream.hop / MODEL_RATE)
        self.recognizer.on_vad(probabilities)
        self._maybe_start_vad()
        self._maybe_start_pass()

    def lag_seconds(self) -> float:
        """Audio received but not yet recognised (``/metrics``)."""
        return self.received_secs - self.recognised_secs

    def _submit(self, job: Pass) -> asyncio.Task[list[Token]]:
        """Queue a pass on the live lane, finals ahead of every session's partials."""
        if self.settings.metrics:
            self.settings.metrics.live_pass_started(job.samples.shape[0] / MODEL_RATE,
                                                    self.lag_seconds())
        self.pass_until = self.received_secs
        return asyncio.ensure_future(
            recognize(self.settings.executor, self, job.samples, live=True,
                      urgent=job.final or self.ending, hotwords=self.hotwords))

    def _start(self, job: Pass) -> None:
        self.current = job
        self.pass_task = self._submit(job)

    def _maybe_start_pass(self) -> None:
        if self.pass_task is None and self.recognizer is not None:
            # Ending, a partial can only matter if it may find an endpoint (§9 step 8).
            job = self.recognizer.next_pass(
                partials=not self.ending or self.recognizer.endpoints_from_passes)
            if job is not None:
                self._start(job)

    async def _pass_done(self) -> None:
        task, job = self.pass_task, self.current
        assert task is not None and job is not None and self.recognizer is not None
        self.pass_task = self.current = None
        self.recognised_secs = self.pass_until
        try:
            tokens = task.result()
        except Exception:
            log.exception("ws %s: inference failed", self.rid)
            await self._send_text(errors.ws_error_message(ErrorCode.INFERENCE_ERROR))
            return
        for segment in self.recognizer.on_result(job, tokens):
            await self._send_segment(segment)
        self._maybe_start_pass()

    async def _send_segment(self, segment: Segment) -> None:
        if not self.v12:
            await self._send_text(protocol.segment(segment.kind, segment.words, time.time()))
            return
        await self._send_text(protocol.segment_v12(
            segment.kind, segment.words, time.time(), committed=segment.committed,
            reason=segment.reason, truncated=segment.truncated))

    async def _end(self, code: int, reason: str) -> None:
        """The session's last words: the passes due, the final passes, their finals, then Close."""
        # Passes already due run first (each may endpoint); no new audio arrives meanwhile,
        # so this ends once the recognizer has caught up with the buffer. They are urgent from
        # now on: the client waits for its last final behind them.
        self.ending = True
        # The VAD judges the rest of the audio first: its endpoints, like those of the passes
        # due, must not depend on how fast the client sent (a few ms per second of audio).
        while self.vad_task is not None:
            await asyncio.wait({self.vad_task})
            await self._vad_done()
        if self.recognizer is not None and not self.recognizer.endpoints_from_passes \
                and self.pass_task is not None and self.current is not None \
                and not self.current.final:
            # No endpoint can come from a partial now: its result would only be dropped.
            self.pass_task.cancel()
            await asyncio.wait({self.pass_task})
            self.pass_task = self.current = None
            self.recognised_secs = self.pass_until
        while self.pass_task is not None:
            await asyncio.wait({self.pass_task})
            await self._pass_done()
        # The drain and the session cap cut the utterance short (docs/api.md "Protocol 1.2").
        truncated = code in (1001, 1008)
        if self.recognizer is None:
            await self._send_segment(Segment("final", (), reason="stop"))
        else:
            self.recognizer.finish("stop", truncated)
            # Only final passes remain; the last one always answers with a final.
            while (job := self.recognizer.next_pass()) is not None:
                try:
                    tokens = await self._submit(job)
                except Exception:
                    log.exception("ws %s: inference failed on a final pass", self.rid)
                    tokens = []
                for segment in self.recognizer.on_result(job, tokens):
                    await self._send_segment(segment)
        await self._close(code, reason)


def session_settings(state: ServerState) -> SessionSettings:
    """Snapshot the server's current limits for a new session."""
    limits = state.limits
    return SessionSettings(
        executor=state.executor, vocab=state.vocab, pool=state.pool, shutdown=state.shutdown,
        metrics=state.metrics, checkout_timeout=limits.pool_checkout_timeout_secs,
        idle_timeout=limits.idle_timeout_secs, max_session=limits.max_session_secs,
        frame_max=limits.ws_frame_max_bytes, ping_interval=state.config.ws_ping_secs,
        vad_lane=state.vad_lane, model_id=state.model.head.model_id,
        hotwords=state.hotwords, hotwords_boost=state.hotwords_boost,
    )

