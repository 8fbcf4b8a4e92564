"""HTTP transfer of one model file: resume with ``Range``, retries, checks of what the mirror says.
Standard library only; credentials go to the mirror's own origin, redirects never downgrade TLS.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from enum import Enum
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from gigastt import __version__
from gigastt.store.download.layout import PARTIAL_SUFFIX, disk_error, install, sha256_of
from gigastt.store.download.progress import NullProgress, Progress
from gigastt.store.download.source import (
    DownloadError,
    ModelSource,
    Origin,
    RetryPolicy,
    origin,
    split_userinfo,
)
from gigastt.store.download.wire import (
    parse_content_length,
    parse_content_range,
    range_header,
)

log = logging.getLogger("gigastt.store")

CHUNK = 256 * 1024
USER_AGENT = f"gigastt-server/{__version__}"


# --- the opener: timeouts, redirects, credentials -------------------------------------------


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
        # The system's trust store; SSL_CERT_FILE / SSL_CERT_DIR point it at a private CA.
        self.context = ssl.create_default_context()
        super().__init__(context=self.context)
        self.read_timeout = read_timeout

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req,  # type: ignore[arg-type]
                            context=self.context, read_timeout=self.read_timeout)


class _Refused(Exception):
    """A redirect the download does not follow; the message says why."""


def redirect_refusal(source: str, target: str) -> str | None:
    """Why a redirect from ``source`` to ``target`` is not followed, or None when it is.

    Only http(s) targets, and never from https down to http: the operator chose TLS, and a
    plain-text hop would show the network what is fetched and let it answer in the mirror's name.
    """
    scheme = urllib.parse.urlsplit(target).scheme.lower()
    shown = ascii(split_userinfo(target)[0][:200])
    if scheme not in ("http", "https"):
        return f"refused a redirect to {shown}: not an http(s) URL"
    if scheme == "http" and urllib.parse.urlsplit(source).scheme.lower() == "https":
        return f"refused a redirect from https to plain http ({shown})"
    return None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (Hugging Face serves its files from a CDN; the Range header survives),
    minus ``redirect_refusal``, and with any ``user:password@`` dropped from the new URL."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage,
                         newurl: str) -> urllib.request.Request | None:
        refusal = redirect_refusal(req.full_url, newurl)
        if refusal is not None:
            fp.close()
            raise _Refused(refusal)
        return super().redirect_request(req, fp, code, msg, headers, split_userinfo(newurl)[0])


class _Authorization(urllib.request.BaseHandler):
    """Basic credentials on every request to the mirror's own scheme, host and port. Added as an
    unredirected header, which urllib never copies onto a redirect, and only where the origin
    matches: a redirect to a CDN or any other host never carries them."""

    def __init__(self, where: Origin, value: str) -> None:
        self.where = where
        self.value = value

    def http_request(self, req: urllib.request.Request) -> urllib.request.Request:
        if origin(req.full_url) == self.where:
            req.add_unredirected_header("Authorization", self.value)
        return req

    https_request = http_request


def opener_for(source: ModelSource, policy: RetryPolicy) -> urllib.request.OpenerDirector:
    """An opener with our timeouts, redirect rules and the source's credentials; proxies come
    from the environment (urllib's default handler)."""
    handlers: list[urllib.request.BaseHandler] = [
        _HTTPHandler(policy.read_timeout), _HTTPSHandler(policy.read_timeout), _Redirects()]
    authorization = source.authorization()
    if authorization is not None:
        handlers.append(_Authorization(*authorization))
    return urllib.request.build_opener(*handlers)


# --- one attempt ----------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying; ``progressed`` when the attempt wrote new bytes first."""

    def __init__(self, reason: str, progressed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.progressed = progressed


class _UnusableRange(Exception):
    """A 206 answer that is not the range asked for: the partial cannot be continued from it."""


class _Outcome(Enum):
    COMPLETE = 1  # the body ended where the server said the file does
    MORE = 2  # a 206 that stopped short of the file's end, as it may: ask for the rest
    RANGE_REJECTED = 3  # 416: the partial may already hold the whole file


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


def _quoted(value: str) -> str:
    """A header value as sent, safe for a terminal (escaped, cut short)."""
    return ascii(value[:60])


def _content_length(headers: Message, name: str) -> int | None:
    """The declared length; an unparsable or conflicting one breaks HTTP, and retrying cannot
    help."""
    values = headers.get_all("Content-Length") or []
    lengths = {parse_content_length(value) for value in values}
    if None in lengths or len(lengths) > 1:
        raise DownloadError(
            f"Download failed for {name}: invalid Content-Length {_quoted(', '.join(values))}")
    return lengths.pop() if lengths else None


def _open_partial(path: Path, mode: str) -> BinaryIO:
    """Opened through one function so that tests can simulate a full disk."""
    return cast(BinaryIO, open(path, mode))  # the caller closes it (with-statement)


def _attempt(opener: urllib.request.OpenerDirector, url: str, name: str, partial: Path,
             offset: int, progress: Progress, policy: RetryPolicy) -> _Outcome:
    host = urllib.parse.urlsplit(url).hostname or url
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = range_header(offset)
    try:
        response = opener.open(urllib.request.Request(url, headers=headers),
                               timeout=policy.connect_timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return _Outcome.RANGE_REJECTED
        if err.code >= 500 or err.code in (408, 429):
            raise _Transient(f"HTTP {err.code}") from err
        hint = " (wrong or missing user:password in the mirror URL)" if err.code == 401 else ""
        raise DownloadError(f"Download failed for {name}: HTTP {err.code}{hint}") from err
    except _Refused as exc:
        raise DownloadError(f"Download failed for {name}: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        reason, transient = _describe(exc, host)
        if transient:
            raise _Transient(reason) from exc
        raise DownloadError(f"Download failed for {name}: {reason}") from exc
    with response:
        body = _content_length(response.headers, name)
        until: int | None
        total: int | None
        if response.status == 206:
            value = response.headers.get("Content-Range")
            got = parse_content_range(value or "")
            if got is None or got.start != offset or body not in (None, got.end + 1 - got.start):
                shown = "none" if value is None else _quoted(value)
                raise _UnusableRange(f"HTTP 206 without a usable Content-Range (asked for bytes"
                                     f" {offset}-, got {shown})")
            start, until = offset, got.end + 1
            total = got.total if got.total is not None else until
        else:
            # 200: a fresh start, or a server that ignored Range and sends everything again.
            start, until, total = 0, body, body
        return _stream(response, name, partial, start, offset, until, total, progress, host)


def _stream(response: http.client.HTTPResponse, name: str, partial: Path, start: int,
            before: int, until: int | None, total: int | None, progress: Progress,
            host: str) -> _Outcome:
    """Write the body from byte ``start`` up to ``until`` (the server's word; None: until the
    connection closes) of a ``total``-byte file. ``before`` is the partial's size before this
    attempt: only bytes beyond it count as progress (a server that ignores Range restarts at 0)."""
    done = start
    progress.start(name, total, start)
    try:
        try:
            out = _open_partial(partial, "ab" if start else "wb")
        except OSError as exc:
            raise disk_error(partial, exc, done) from exc
        with out:
            while until is None or done < until:
                try:
                    # read1: what has arrived, so a stall or reset loses no received bytes
                    chunk = response.read1(CHUNK if until is None else min(CHUNK, until - done))
                except (OSError, http.client.HTTPException) as exc:
                    reason, _ = _describe(exc, host)
                    raise _Transient(reason, progressed=done > before) from exc
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise disk_error(partial, exc, done) from exc
                done += len(chunk)
                progress.update(done)
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise disk_error(partial, exc, done) from exc
    finally:
        progress.finish(done)
    # http.client returns a short body silently when the peer closes before Content-Length.
    if until is not None and done < until:
        raise _Transient(f"connection closed after {done} of {until} bytes",
                         progressed=done > before)
    return _Outcome.MORE if total is not None and done < total else _Outcome.COMPLETE


# --- one file ----------------------------------------------------------------------------------


def fetch_file(name: str, directory: Path, source: ModelSource, *,
               progress: Progress | None = None, policy: RetryPolicy | None = None,
               opener: urllib.request.OpenerDirector | None = None) -> None:
    """Download ``name`` into ``directory``, resuming ``<name>.partial``; verify, then rename.

    The caller holds the directory lock: the stable partial name is only safe under it. Every
    loop is bounded: ``policy.retries`` failures in a row, ``policy.restarts`` fresh starts.
    """
    policy = policy or RetryPolicy()
    progress = progress or NullProgress()
    opener = opener or opener_for(source, policy)
    url = source.url(name)
    expected = source.pins[name]
    partial = directory / (name + PARTIAL_SUFFIX)
    failures = restarts = 0

    def start_again(reason: str) -> None:
        nonlocal restarts
        partial.unlink(missing_ok=True)
        restarts += 1
        if restarts > policy.restarts:
            raise DownloadError(f"Download failed for {name}: {reason}, also after"
                                f" {policy.restarts} fresh starts")
        log.warning("%s: %s; starting again", name, reason)

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
        except _UnusableRange as exc:
            if not offset:  # nothing was asked for: starting again would get the same answer
                raise DownloadError(f"Download failed for {name}: {exc}") from exc
            start_again("the server answered another byte range")
            continue
        if outcome is _Outcome.MORE:
            failures = 0
            continue
        actual = sha256_of(partial)
        if actual == expected:
            install(partial, directory / name)
            log.info("%s: SHA-256 verified", name)
            return
        if outcome is _Outcome.RANGE_REJECTED:
            start_again("the server refused to resume")
        elif offset:
            # Bytes kept from an earlier run may belong to another version of the file.
            start_again("SHA-256 mismatch after resuming")
        else:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"SHA-256 mismatch for {name}: expected {expected}, got {actual}")
