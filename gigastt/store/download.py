"""Resumable, verified, locked download of the four GigaAM v3 model files (server.md §1.7).
Standard library HTTP only; one stable ``<file>.partial`` per file, resumed with ``Range``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO, cast

from gigastt import __version__
from gigastt.config import ConfigError, parse_uint
from gigastt.engine.model import missing_files
from gigastt.store import NotWritableError, StoreError

log = logging.getLogger("gigastt.store")

DEFAULT_BASE_URL = "https://huggingface.co/istupakov/gigaam-v3-onnx/resolve/main"
# The reference's pins (server.md §1.7). A mirror cannot replace them: a checksum list fetched
# from the same server as the files would protect against nothing. Private builds bring their
# own list from the local disk instead (SHA256_FILE_ENV).
SHA256_PINS: Mapping[str, str] = {
    "v3_e2e_rnnt_encoder.onnx": "cd60b3764a832e8560ae6d3ad0b10adc1a42ffae412b9476f25620aae4f4a508",
    "v3_e2e_rnnt_decoder.onnx": "7b0a16d67fd2cb37061decc93c69e364a9ab27afee3c57495d55b1c974cf7231",
    "v3_e2e_rnnt_joint.onnx": "602ff7017a93311aad34df1437c8d7f49911353c13d6eae7a6ee7b041339465c",
    "v3_e2e_rnnt_vocab.txt": "39abae20e692998290c574e606f11a9edef2902a1995463fcff63d1490cf22b7",
}
MODEL_URL_ENV = "GIGASTT_MODEL_URL"
SHA256_FILE_ENV = "GIGASTT_MODEL_SHA256_FILE"
RETRIES_ENV = "GIGASTT_DOWNLOAD_RETRIES"
LOCK_FILE = ".download.lock"
PARTIAL_SUFFIX = ".partial"
CHUNK = 256 * 1024
USER_AGENT = f"gigastt-server/{__version__}"


class DownloadError(StoreError):
    """A model file could not be fetched or verified; nothing was put under its final name."""


# --- where from, which hashes, how persistent ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Base URL (``<base>/<file>``) and the SHA-256 every downloaded file must have."""

    base_url: str = DEFAULT_BASE_URL
    pins: Mapping[str, str] = field(default_factory=lambda: dict(SHA256_PINS))

    def url(self, name: str) -> str:
        return f"{self.base_url.rstrip('/')}/{urllib.parse.quote(name)}"

    @classmethod
    def resolve(cls, model_url: str | None, env: Mapping[str, str]) -> ModelSource:
        """``model_url`` (flag or ``GIGASTT_MODEL_URL``, resolved by the caller) or Hugging Face;
        the built-in pins, replaced per file by the list named in ``GIGASTT_MODEL_SHA256_FILE``."""
        pins = dict(SHA256_PINS)
        manifest = env.get(SHA256_FILE_ENV, "").strip()
        if manifest:
            pins.update(read_sha256_file(Path(manifest)))
        return cls(base_url=model_url or DEFAULT_BASE_URL, pins=pins)


_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def read_sha256_file(path: Path) -> dict[str, str]:
    """Parse ``sha256sum`` output (``<sha256>  <file>``); names outside the model are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise DownloadError(f"cannot read {SHA256_FILE_ENV} {path}: {reason}") from exc
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SUMS_LINE.fullmatch(line.strip())
        if match is None:
            raise DownloadError(f"{path}:{number}: expected '<sha256>  <file name>'")
        name = Path(match.group(2)).name
        if name in SHA256_PINS:
            pins[name] = match.group(1).lower()
    return pins


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Transient failures (resets, timeouts, 5xx) are retried ``retries`` times in a row with
    exponential back-off; an attempt that brought new bytes resets the count."""

    retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    connect_timeout: float = 30.0
    read_timeout: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.backoff_max, self.backoff * 2 ** max(0, failures - 1)))


def retry_policy(env: Mapping[str, str]) -> RetryPolicy:
    """The default policy, with ``GIGASTT_DOWNLOAD_RETRIES`` (0 = fail fast) when set."""
    text = env.get(RETRIES_ENV, "").strip()
    if not text:
        return RetryPolicy()
    try:
        return RetryPolicy(retries=parse_uint(RETRIES_ENV, text, bits=16))
    except ConfigError as exc:
        raise DownloadError(str(exc)) from exc


# --- progress ----------------------------------------------------------------------------------


class Progress(Protocol):
    """Told about one transfer attempt: ``start``, any number of ``update``, then ``finish``."""

    def start(self, name: str, total: int | None, offset: int) -> None: ...

    def update(self, done: int) -> None: ...

    def finish(self, done: int) -> None: ...


class NullProgress:
    def start(self, name: str, total: int | None, offset: int) -> None:
        pass

    def update(self, done: int) -> None:
        pass

    def finish(self, done: int) -> None:
        pass


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    whole = int(seconds + 0.5)
    if whole >= 3600:
        return f"{whole // 3600}h{whole // 60 % 60:02d}m"
    return f"{whole // 60:d}:{whole % 60:02d}"


class _Rate:
    """Bytes, speed and ETA of one attempt (speed counts only this attempt's bytes)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.name = ""
        self.total: int | None = None
        self.offset = 0
        self.began = 0.0

    def begin(self, name: str, total: int | None, offset: int) -> None:
        self.name, self.total, self.offset, self.began = name, total, offset, self.clock()

    def speed(self, done: int) -> float | None:
        elapsed = self.clock() - self.began
        return (done - self.offset) / elapsed if elapsed > 0 and done > self.offset else None

    def eta(self, done: int) -> float | None:
        speed = self.speed(done)
        if self.total is None or speed is None:
            return None
        return max(0, self.total - done) / speed


class TerminalProgress:
    """One bar line on a terminal, rewritten in place with ``\\r`` at most ``interval`` apart."""

    def __init__(self, stream: TextIO, *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.rate = _Rate(clock)
        self._last = float("-inf")
        self._width = 0

    def start(self, name: str, total: int | None, offset: int) -> None:
        self.rate.begin(name, total, offset)
        self._last = float("-inf")
        self._width = 0
        self._draw(offset)

    def update(self, done: int) -> None:
        if self.rate.clock() - self._last >= self.interval:
            self._draw(done)

    def finish(self, done: int) -> None:
        self._draw(done)
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, done: int) -> None:
        rate = self.rate
        self._last = rate.clock()
        speed = rate.speed(done)
        shown = f"{_size(speed)}/s" if speed is not None else "--- B/s"
        if rate.total:
            percent = min(100.0, done * 100 / rate.total)
            bar = ("#" * int(percent / 5)).ljust(20, ".")
            text = (f"{rate.name} [{bar}] {percent:5.1f}% {_size(done)} / {_size(rate.total)}"
                    f"  {shown}  ETA {_duration(rate.eta(done))}")
        else:
            text = f"{rate.name} {_size(done)}  {shown}"
        # Pad over the previous, possibly longer, line so that no stale characters remain.
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)


class LineProgress:
    """A plain line about every ``step`` percent, for logs and pipes (no ``\\r``)."""

    UNKNOWN_STEP = 64 * 1024 * 1024  # bytes between lines when the size is unknown

    def __init__(self, emit: Callable[[str], None] | None = None, *, step: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit or log.info
        self.step = step
        self.rate = _Rate(clock)
        self._next = 0

    def start(self, name: str, total: int | None, offset: int) -> None:
        self.rate.begin(name, total, offset)
        size = _size(total) if total is not None else "unknown size"
        resumed = f", resuming at {_size(offset)}" if offset else ""
        self.emit(f"Downloading {name} ({size}{resumed})")
        self._next = self._mark(offset) + self._unit

    @property
    def _unit(self) -> int:
        return self.step if self.rate.total else self.UNKNOWN_STEP

    def _mark(self, done: int) -> int:
        """Progress in reporting units: percent, or bytes when the size is unknown."""
        total = self.rate.total
        value = done * 100 // total if total else done
        return value - value % self._unit

    def update(self, done: int) -> None:
        total = self.rate.total
        value = done * 100 // total if total else done
        if value < self._next:
            return
        self._next = self._mark(done) + self._unit
        speed = self.rate.speed(done)
        shown = f", {_size(speed)}/s" if speed is not None else ""
        if total:
            self.emit(f"{self.rate.name}: {value}% ({_size(done)} / {_size(total)}{shown})")
        else:
            self.emit(f"{self.rate.name}: {_size(done)}{shown}")

    def finish(self, done: int) -> None:
        pass


def progress_for(stream: TextIO) -> Progress:
    """A bar when ``stream`` is a terminal, otherwise quiet lines through the log."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalProgress(stream) if tty else LineProgress()


# --- HTTP -----------------------------------------------------------------------------------------


class _HTTPConnection(http.client.HTTPConnection):
    """``timeout`` bounds the connect; each later read waits at most ``read_timeout``."""

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self.read_timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()  # TCP and TLS handshake, both under the connect timeout
        self.sock.settimeout(self.read_timeout)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self.read_timeout = read_timeout

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req,  # type: ignore[arg-type]
                            read_timeout=self.read_timeout)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        self.context = ssl.create_default_context()
        super().__init__(context=self.context)
        self.read_timeout = read_timeout

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req,  # type: ignore[arg-type]
                            context=self.context, read_timeout=self.read_timeout)


def _opener(policy: RetryPolicy) -> urllib.request.OpenerDirector:
    # Proxies from the environment and redirects (Hugging Face redirects to its CDN; the Range
    # header survives the redirect) come from urllib's default handlers.
    return urllib.request.build_opener(_HTTPHandler(policy.read_timeout),
                                       _HTTPSHandler(policy.read_timeout))


class _Transient(Exception):
    """A failure worth retrying; ``progressed`` when the attempt wrote new bytes first."""

    def __init__(self, reason: str, progressed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.progressed = progressed


def _describe(exc: BaseException, host: str) -> tuple[str, bool]:
    """A readable reason and whether retrying can help."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        if isinstance(exc.reason, BaseException):
            return _describe(exc.reason, host)
        return str(exc.reason), False
    if isinstance(exc, socket.gaierror):
        # An unknown name will not resolve on the next try; a resolver hiccup may.
        return f"cannot resolve {host}: {exc.strerror}", exc.errno == socket.EAI_AGAIN
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {host} rejected: {exc.verify_message}", False
    if isinstance(exc, TimeoutError):
        return f"timed out talking to {host}", True
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection to {host} closed early", True
    if isinstance(exc, OSError | http.client.HTTPException):
        return f"{exc.strerror or exc}" if isinstance(exc, OSError) else f"{exc!r}", True
    return repr(exc), False


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Outcome(Enum):
    COMPLETE = 1  # the body ended where the server said it would
    RANGE_REJECTED = 2  # 416: the partial may already hold the whole file
    RANGE_MISMATCH = 3  # 206 for another range than asked: start again from zero


def _open_partial(path: Path, mode: str) -> BinaryIO:
    """Opened through one function so that tests can simulate a full disk."""
    return cast(BinaryIO, open(path, mode))  # the caller closes it (with-statement)


def _disk_error(path: Path, exc: OSError, done: int) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"No space left on device writing {path} ({_size(done)} written); free space and"
            " run again: the download resumes where it stopped"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return NotWritableError(f"Model directory {path.parent} is not writable: {exc.strerror}")
    return StoreError(f"cannot write {path}: {exc.strerror or exc}")


def _attempt(opener: urllib.request.OpenerDirector, url: str, name: str, partial: Path,
             offset: int, progress: Progress, policy: RetryPolicy) -> _Outcome:
    host = urllib.parse.urlsplit(url).hostname or url
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = opener.open(urllib.request.Request(url, headers=headers),
                               timeout=policy.connect_timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return _Outcome.RANGE_REJECTED
        if err.code >= 500 or err.code in (408, 429):
            raise _Transient(f"HTTP {err.code}") from err
        raise DownloadError(f"Download failed for {name}: HTTP {err.code}") from err
    except (OSError, http.client.HTTPException) as exc:
        reason, transient = _describe(exc, host)
        if transient:
            raise _Transient(reason) from exc
        raise DownloadError(f"Download failed for {name}: {reason}") from exc
    with response:
        length = response.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        total: int | None
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                return _Outcome.RANGE_MISMATCH
            start, total = offset, int(match.group(2)) + 1
        else:
            # 200: a fresh start, or a server that ignored Range and sends everything again.
            start, total = 0, body
        return _stream(response, name, partial, start, offset, total, progress, host)


def _stream(response: http.client.HTTPResponse, name: str, partial: Path, start: int,
            before: int, total: int | None, progress: Progress, host: str) -> _Outcome:
    """Write the body from byte ``start``; ``before`` is the partial's size before this attempt:
    only bytes beyond it count as progress (a server that ignores Range restarts at zero)."""
    done = start
    progress.start(name, total, start)
    try:
        try:
            out = _open_partial(partial, "ab" if start else "wb")
        except OSError as exc:
            raise _disk_error(partial, exc, done) from exc
        with out:
            while True:
                try:
                    # read1: what has arrived, so a stall or reset loses no received bytes
                    chunk = response.read1(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    reason, _ = _describe(exc, host)
                    raise _Transient(reason, progressed=done > before) from exc
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _disk_error(partial, exc, done) from exc
                done += len(chunk)
                progress.update(done)
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise _disk_error(partial, exc, done) from exc
    finally:
        progress.finish(done)
    # http.client returns a short body silently when the peer closes before Content-Length.
    if total is not None and done < total:
        raise _Transient(f"connection closed after {done} of {total} bytes",
                         progressed=done > before)
    return _Outcome.COMPLETE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(partial: Path, final: Path) -> None:
    """Durably move a verified partial onto its final name (atomic on one filesystem)."""
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)
    _fsync_dir(final.parent)


def fetch_file(name: str, directory: Path, source: ModelSource, *,
               progress: Progress | None = None, policy: RetryPolicy | None = None,
               opener: urllib.request.OpenerDirector | None = None) -> None:
    """Download ``name`` into ``directory``, resuming ``<name>.partial``; verify, then rename.

    The caller holds the directory lock: the stable partial name is only safe under it.
    """
    policy = policy or RetryPolicy()
    progress = progress or NullProgress()
    opener = opener or _opener(policy)
    url = source.url(name)
    expected = source.pins[name]
    partial = directory / (name + PARTIAL_SUFFIX)
    final = directory / name
    failures = 0
    refetched = False  # a resumed file that fails the hash gets one clean start
    while True:
        offset = partial.stat().st_size if partial.exists() else 0
        try:
            outcome = _attempt(opener, url, name, partial, offset, progress, policy)
        except _Transient as exc:
            failures = 1 if exc.progressed else failures + 1
            if failures > policy.retries:
                raise DownloadError(f"Download failed for {name}: {exc.reason}") from exc
            delay = policy.delay(failures)
            log.warning("%s: %s; retrying in %.1f s (%d of %d)", name, exc.reason, delay,
                        failures, policy.retries)
            time.sleep(delay)
            continue
        if outcome is _Outcome.RANGE_MISMATCH:
            log.warning("%s: the server answered another byte range; starting again", name)
            partial.unlink(missing_ok=True)
            continue
        actual = sha256_of(partial)
        if outcome is _Outcome.RANGE_REJECTED and actual != expected:
            log.warning("%s: the server refused to resume; starting again", name)
            partial.unlink(missing_ok=True)
            continue
        if actual != expected:
            partial.unlink(missing_ok=True)
            if offset and not refetched:
                # Bytes kept from an earlier run may belong to another version of the file.
                log.warning("%s: SHA-256 mismatch after resuming; downloading it again", name)
                refetched = True
                continue
            raise DownloadError(f"SHA-256 mismatch for {name}: expected {expected}, got {actual}")
        try:
            _install(partial, final)
        except OSError as exc:
            raise _disk_error(final, exc, 0) from exc
        log.info("%s: SHA-256 verified", name)
        return


# --- the directory ------------------------------------------------------------------------------


def _directory_error(directory: Path, exc: OSError) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"No space left on device creating {directory}")
    if directory.is_dir():
        return NotWritableError(f"Model directory {directory} is not writable: {exc.strerror}")
    return NotWritableError(f"Cannot create model directory {directory}: {exc.strerror}")


def make_model_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _directory_error(directory, exc) from exc


@contextlib.contextmanager
def model_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<dir>/.download.lock``; waits for another holder."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _directory_error(directory, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another gigastt process working in %s", directory)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, unlinking it would race a waiter


def _shown(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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
        log.info("Downloading %s into %s from %s", ", ".join(absent), model_dir,
                 _shown(source.base_url))
        opener = _opener(policy)
        for name in absent:
            fetch_file(name, model_dir, source, progress=progress, policy=policy,
                       opener=opener)
    log.info("Model files ready in %s", model_dir)
    return absent


__all__ = [
    "DEFAULT_BASE_URL",
    "LOCK_FILE",
    "MODEL_URL_ENV",
    "PARTIAL_SUFFIX",
    "SHA256_FILE_ENV",
    "SHA256_PINS",
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
    "progress_for",
    "read_sha256_file",
    "retry_policy",
    "sha256_of",
]
