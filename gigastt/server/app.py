"""Server assembly: bind guard, model load on the inference lane, listener, connection cap, drain.

``run_server`` is what ``gigastt serve`` calls; it returns the process exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
from typing import TextIO

from gigastt import protocol
from gigastt.config import (
    ConfigError,
    InvalidSetting,
    Limits,
    ServeConfig,
    bind_allowed,
    bind_refusal,
    inflight_body_budget,
    is_loopback_host,
    listen_host,
    read_api_key_file,
    reload_limits,
    startup_overrides,
    with_config_file,
)
from gigastt.engine.capacity import calibrate
from gigastt.engine.executor import InferenceExecutor, recognition_executor
from gigastt.engine.heads import resolve as resolve_head
from gigastt.engine.hotwords import (
    Hotwords,
    HotwordsError,
    Phrase,
    compile_phrases,
    read_file,
)
from gigastt.engine.model import GigaamModel, ModelError
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.vad import VadError, open_vad
from gigastt.engine.vadlane import VadLane
from gigastt.jobs.runner import JobRunner
from gigastt.jobs.store import StoreError as JobStoreError
from gigastt.jobs.store import StoreThread
from gigastt.server import routes
from gigastt.server.admission import AdmissionPool
from gigastt.server.auth import ApiKeyPolicy
from gigastt.server.budget import BodyBudget
from gigastt.server.http import Body, ConnectionDriver, Reply, Request, Timeouts
from gigastt.server.lifecycle import DrainController
from gigastt.server.metrics import ServerMetrics
from gigastt.server.origin import OriginPolicy
from gigastt.server.ratelimit import RateLimiter
from gigastt.store import StoreError, prepare_model
from gigastt.store.download import vad_source

log = logging.getLogger("gigastt.server")

EVICT_INTERVAL_SECS = 60.0


def _fail(message: str, stream: TextIO = sys.stderr, code: int = 1) -> int:
    print(f"Error: {message}", file=stream)
    return code


def run_server(config: ServeConfig) -> int:
    """Start up (bind guard first, docs/architecture.md §4), then serve until drained."""
    if not bind_allowed(config.host, config.bind_all, os.environ):
        return _fail(bind_refusal(config.host))
    if not is_loopback_host(config.host):
        log.warning("binding to non-loopback address %s: put TLS and auth in front", config.host)
    try:
        # Before the model: a mistake in the file should not wait for a download to be reported.
        config = with_config_file(config)
        # D23: read once; a bad file is refused by name, and the key goes nowhere but the policy.
        auth = ApiKeyPolicy(read_api_key_file(config.api_key_file)
                            if config.api_key_file is not None else None)
    except InvalidSetting as exc:
        return _fail(str(exc), code=2)
    except ConfigError as exc:
        return _fail(str(exc))
    jobs_db = None
    if config.jobs_dir is not None:
        # D31: before the model, so that an unusable directory is reported at once.
        try:
            jobs_db = StoreThread(config.jobs_dir)
            requeued = jobs_db.run(jobs_db.store.recover)
        except JobStoreError as exc:
            return _fail(str(exc))
        log.info("jobs directory %s: %d job(s) requeued after a restart", config.jobs_dir,
                 requeued)
    try:
        return _run(config, auth, jobs_db)
    finally:
        if jobs_db is not None:
            jobs_db.close()


def _run(config: ServeConfig, auth: ApiKeyPolicy, jobs_db: StoreThread | None) -> int:
    # D29: the head (--model-variant) and the server's phrase list, both checked before any
    # download or model load.
    head = resolve_head(config.model_dir, config.model_variant)
    phrases: list[Phrase] = []
    if config.hotwords_file is not None:
        try:
            phrases = read_file(config.hotwords_file)
        except HotwordsError as exc:
            return _fail(str(exc))
    try:
        # Downloads what is missing, then creates the INT8 encoder (docs/runbook.md "Start-up and
        # model files").
        prepare_model(config.model_dir, model_url=config.model_url, env=os.environ,
                      quantize=not config.skip_quantize, on_demand=True, head=head)
    except StoreError as exc:
        return _fail(str(exc))
    limits = config.limits
    if limits.max_session_secs and limits.max_session_secs < limits.idle_timeout_secs:
        log.warning("--max-session-secs is below --idle-timeout-secs: the cap always fires first")
    try:
        vad_path, vad_sha256 = vad_source(config.model_dir, config.vad_model, os.environ)
    except StoreError as exc:
        return _fail(str(exc))

    def load() -> Recognizer:
        # D28: the VAD first (a bad file fails in milliseconds), then the model, on the lane.
        vad = open_vad(config.vad, vad_path, expected_sha256=vad_sha256)
        return Recognizer(GigaamModel(config.model_dir, threads=config.threads, head=head),
                          vad=vad)

    executor = recognition_executor(load)
    try:
        recognizer = executor.start()
    except (ModelError, VadError) as exc:
        return _fail(str(exc))
    if config.pool_auto:
        # D27: before the server listens, so /ready never answers for an unmeasured pool; on
        # the live lane, at its priority, as live passes will run.
        try:
            measured = executor.submit("calibration", calibrate, live=True).result()
        except Exception as exc:  # an operator who asked for a measured pool gets none unasked
            log.exception("capacity calibration failed")
            return _fail(f"--pool-size auto: the capacity calibration failed ({exc})")
        log.info("live capacity: %d real-time sessions (encoder %.4f s per second of audio,"
                 " re-encode factor %.2f); --pool-size auto uses it", measured.sessions,
                 measured.encode_cost, measured.reencode_factor)
        config = dataclasses.replace(config, pool_size=measured.sessions)
    hotwords = compile_phrases(phrases, recognizer.model.vocab, config.hotwords_boost)
    if phrases:
        # Counts only: the phrases themselves are never logged (docs/runbook.md "Hotwords").
        log.info("hotwords: %d phrases from %s, boost %.2f; %d cannot be written with the %s"
                 " vocabulary and are left out", len(phrases), config.hotwords_file,
                 config.hotwords_boost, len(phrases) - (len(hotwords) if hotwords else 0),
                 head.name)
    try:
        return asyncio.run(_serve(config, executor, recognizer, auth, jobs_db, hotwords))
    except OSError as exc:
        return _fail(exc.strerror or str(exc))
    finally:
        # The drain window is over: a window still being recognised is not waited for long
        # (the thread is a daemon; its result has nobody left to go to).
        executor.close(timeout=1.0)


async def _serve(config: ServeConfig, executor: InferenceExecutor[Recognizer],
                 recognizer: Recognizer, auth: ApiKeyPolicy,
                 jobs_db: StoreThread | None = None, hotwords: Hotwords | None = None) -> int:
    limits = config.limits
    state = routes.ServerState(
        config=config,
        limits=limits,
        executor=executor,
        model=recognizer.model.info,
        vocab=recognizer.model.vocab,
        pool=AdmissionPool(config.pool_size),
        origin=OriginPolicy(config.allow_origins, allow_any=config.cors_allow_any),
        metrics=ServerMetrics(pool_size=config.pool_size) if config.metrics else None,
        limiter=_limiter(limits.rate_limit_per_minute, limits.rate_limit_burst),
        auth=auth,
        # D27: with auto, the pool size is the measured capacity.
        capacity=config.pool_size if config.pool_auto else None,
        vad_lane=None if recognizer.vad is None else VadLane(recognizer.vad),
        hotwords=hotwords,
        hotwords_boost=config.hotwords_boost,
    )
    lifecycle = DrainController()
    loop = asyncio.get_running_loop()
    lifecycle.install(loop, _Reloader(state))
    timeouts = Timeouts(header=config.header_timeout_secs,
                        keepalive=config.keepalive_timeout_secs,
                        idle=lambda: float(state.limits.idle_timeout_secs),
                        close=config.close_timeout_secs)
    budget = BodyBudget(lambda: inflight_body_budget(state.limits, config.pool_size))

    async def handler(request: Request, body: Body) -> Reply:
        return await routes.handle(state, request, body)

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the connection's task is created and tracked in
        # one step, so the drain never misses (nor cancels unseen) an accepted connection.
        if len(lifecycle.connections) >= config.max_connections:
            lifecycle.track(asyncio.ensure_future(_refuse(writer)))
            return
        driver = ConnectionDriver(reader, writer, handler, timeouts, budget)
        lifecycle.track(asyncio.ensure_future(driver.run()), driver)

    host = listen_host(config.host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "::":
        server = await asyncio.start_server(on_connect, sock=_dual_stack_socket(config.port))
    else:
        server = await asyncio.start_server(on_connect, host, config.port, family=family,
                                            reuse_address=True)
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    log.info("gigastt server listening on http://%s:%d", shown, bound[1])
    log.info("WebSocket: ws://%s:%d/v1/ws; REST: http://%s:%d/v1/transcribe", shown, bound[1],
             shown, bound[1])
    if config.cors_allow_any:
        log.warning("CORS: every Origin is allowed (--cors-allow-any)")
    elif config.allow_origins:
        log.info("CORS allowlist: %s", ", ".join(config.allow_origins))
    if auth.required:
        log.info("API key required on every route but /health and /ready (%s)",
                 config.api_key_file)
    evictor = asyncio.ensure_future(_evict_forever(state))
    job_tasks: list[asyncio.Future[None]] = []
    if jobs_db is not None:
        state.jobs = JobRunner(jobs_db, executor, state.vocab, lambda: state.limits)
        state.jobs.hotwords, state.jobs.hotwords_boost = hotwords, config.hotwords_boost
        job_tasks = [asyncio.ensure_future(state.jobs.run_forever()),
                     asyncio.ensure_future(state.jobs.sweep_forever())]

    await lifecycle.stop_requested.wait()
    log.info("Shutting down server (%s)", lifecycle.signal_name)
    state.shutdown.set()
    state.pool.close()
    for task in job_tasks:  # a running job stays `running` and is redone at the next start
        task.cancel()
    await asyncio.gather(*job_tasks, return_exceptions=True)
    server.close()
    left = await lifecycle.drain(float(state.limits.shutdown_drain_secs))
    evictor.cancel()
    if left:
        log.warning("Drain window expired with %d tracked tasks still running — forcing exit",
                    left)
    else:
        log.info("Drain complete: all tracked tasks finished")
    lifecycle.uninstall(loop)
    if state.vad_lane is not None:
        state.vad_lane.close(timeout=5.0)
    return 0


def _limiter(rpm: int, burst: int) -> RateLimiter | None:
    return RateLimiter(rpm, burst) if rpm > 0 else None


async def _evict_forever(state: routes.ServerState) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(EVICT_INTERVAL_SECS)
        if state.limiter is not None:
            state.limiter.evict_idle(loop.time())


class _Reloader:
    """SIGHUP (decision D12): the file under the start-up overrides; a bad file changes nothing.

    The file is read on a worker thread of the loop's default executor (never the inference
    lanes), so a slow or stuck file system cannot stall the server; reloads apply one at a time,
    in the order the signals came.
    """

    def __init__(self, state: routes.ServerState) -> None:
        self.state = state
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reload(self) -> None:
        state = self.state
        if state.config.config_path is None:
            log.info("No config file specified, ignoring SIGHUP")
            return
        async with self.lock:
            try:
                limits = await asyncio.to_thread(reload_limits, state.config,
                                                 startup_overrides(state.config))
            except ConfigError as exc:
                log.error("config reload failed, keeping the old limits: %s", exc)
                return
            _apply(state, limits)


def _apply(state: routes.ServerState, limits: Limits) -> None:
    old = state.limits
    if (limits.rate_limit_per_minute, limits.rate_limit_burst) != (
            old.rate_limit_per_minute, old.rate_limit_burst):
        state.limiter = _limiter(limits.rate_limit_per_minute, limits.rate_limit_burst)
    state.limits = limits
    state.config = dataclasses.replace(state.config, limits=limits)
    log.info("config reloaded: idle timeout %ss -> %ss, rate limit %s -> %s rpm",
             old.idle_timeout_secs, limits.idle_timeout_secs, old.rate_limit_per_minute,
             limits.rate_limit_per_minute)
    log.info("limits now: %s", ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(limits).items()))


def _dual_stack_socket(port: int) -> socket.socket:
    """``--host ::``: one socket for IPv6 and IPv4 where the system allows it (asyncio would set
    IPV6_V6ONLY and leave IPv4 clients out; docs/deployment.md "IPv6")."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # IPv6-only hosts and kernels: keep what they give
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    return sock


async def _refuse(writer: asyncio.StreamWriter) -> None:
    """Decision D4: over the connection cap, a fixed 503 and close, without parsing anything."""
    body = protocol.rest_error("too_many_connections", "Too many open connections").encode()
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                 b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n"
                 b"retry-after: 1\r\n\r\n" + body)
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(writer.drain(), 5.0)
    writer.close()
