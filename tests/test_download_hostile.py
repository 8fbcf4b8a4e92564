"""Model download against hostile or broken mirrors (issue 15): unusable 206 answers, header numbers
that are not ASCII digits, mirror credentials, HTTPS downgrades; loopback servers and the real CLI.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import os
import ssl
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gigastt.engine.model import MODEL_FILES
from gigastt.store.download import (
    DownloadError,
    ModelSource,
    RetryPolicy,
    fetch_file,
    redirect_refusal,
)
from tests.conftest import ROOT

ENCODER = MODEL_FILES[0]
FAST = RetryPolicy(retries=2, backoff=0.01, connect_timeout=5, read_timeout=5)
# Small stand-ins for the four files: `download --skip-quantize` only checks their SHA-256.
FILES = {name: (name.encode() + bytes(range(256))) * 200 for name in MODEL_FILES}
USER, PASSWORD = "svc-gigastt", "p@ss:wörd/1"
QUOTED = urllib.parse.quote(PASSWORD, safe="")  # p%40ss%3Aw%C3%B6rd%2F1
TOKEN = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, QUOTED, "p@ss", "p%40ss", base64.b64encode(f"{USER}:{PASSWORD}".encode())
           .decode())


# --- a mirror whose every answer the test writes -----------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]  # lower-case names


Handler = http.server.BaseHTTPRequestHandler
Answer = Callable[["Mirror", Handler], None]


class Mirror:
    """A loopback HTTP (or, with ``tls``, HTTPS) server: ``answer`` writes each response; every
    request is recorded in ``seen``. Past ``LIMIT`` requests it answers 404, so that a client
    that loops on its answers (the defects guarded against here) ends with a wrong error
    instead of hanging the test."""

    LIMIT = 50

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        owner = self

        class Recorder(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with owner.lock:
                    owner.seen.append(Seen(self.path, {k.lower(): v for k, v in
                                                       self.headers.items()}))
                    over = len(owner.seen) > owner.LIMIT
                self.close_connection = True
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if over:
                        reply(self, 404)
                    else:
                        owner.answer(owner, self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.port = self.httpd.server_address[1]
        self.origin = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.url = f"{self.origin}/models"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirrors() -> Iterator[Callable[..., Mirror]]:
    made: list[Mirror] = []

    def make(answer: Answer, tls: ssl.SSLContext | None = None) -> Mirror:
        made.append(Mirror(answer, tls))
        return made[-1]

    yield make
    for mirror in made:
        mirror.close()


def reply(h: Handler, status: int, body: bytes = b"", **headers: str) -> None:
    h.send_response(status)
    headers.setdefault("Content-Length", str(len(body)))
    for name, value in headers.items():
        h.send_header(name.replace("_", "-"), value)
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(body)


def file_of(h: Handler) -> bytes | None:
    return FILES.get(h.path.rsplit("/", 1)[-1])


def serve_files(mirror: Mirror, h: Handler) -> None:
    """A well-behaved mirror: 200 with the whole file (Range is not needed here)."""
    data = file_of(h)
    if data is None:
        reply(h, 404)
    else:
        reply(h, 200, data)


def with_auth(answer: Answer) -> Answer:
    """``answer`` behind HTTP Basic auth (401 without the right credentials), as nginx does."""

    def guarded(mirror: Mirror, h: Handler) -> None:
        if h.headers.get("Authorization") != TOKEN:
            reply(h, 401, b"unauthorized", WWW_Authenticate='Basic realm="models"')
            return
        answer(mirror, h)

    return guarded


# --- running the command -------------------------------------------------------------------------


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "SHA256SUMS"
    path.write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in FILES.items()))
    return path


def download(model_dir: Path, url: str, manifest: Path, *args: str,
             **env: str) -> subprocess.CompletedProcess[str]:
    """``gigastt download`` as a user runs it; a download still running after 60 s is a failure
    (the loops this file guards against never end)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GIGASTT_", "SSL_CERT")) and "proxy" not in k.lower()}
    clean.update(GIGASTT_MODEL_URL=url, GIGASTT_MODEL_SHA256_FILE=str(manifest),
                 GIGASTT_DOWNLOAD_RETRIES="0")
    clean.update(env)
    try:
        return subprocess.run([sys.executable, "-m", "gigastt", "download", "--skip-quantize",
                               "--model-dir", str(model_dir), *args], cwd=ROOT, env=clean,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("gigastt download was still running after 60 s")


def assert_clean_error(run: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 1 with ``Error: <message...>`` as the last line and no traceback."""
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    last = run.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"Error: {message}"), run.stderr


def assert_no_secret(run: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr, (secret, run.stderr)


def assert_complete(model_dir: Path) -> None:
    for name, data in FILES.items():
        assert (model_dir / name).read_bytes() == data, name


# --- 206 answers that cannot be used, header numbers that are not numbers -------------------------


def partial_answer(content_range: str | None) -> Answer:
    """Every request answered 206 with the whole file and ``content_range`` ({n}: its size)."""

    def answer(mirror: Mirror, h: Handler) -> None:
        data = file_of(h) or b""
        n = len(data)
        headers = {} if content_range is None else {
            "Content_Range": content_range.format(n=n, last=n - 1)}
        reply(h, 206, data, **headers)

    return answer


@pytest.mark.parametrize("content_range", [
    None,  # no Content-Range at all
    "bytes */{n}",  # the 416 form
    "bytes 5-{last}/{n}",  # another start than asked for
    "bytes {last}-0/{n}",  # end before start
    "bytes 0-{last}/{last}",  # end past the total
    "bytes 0-{last}/{n}²",  # a superscript digit
    "bytes ¹-{last}/{n}",  # a superscript start
    "bytes 0-{last}/{n}" + "0" * 20,  # a total beyond 2**63
])
def test_206_without_a_usable_content_range_is_a_clean_error(
        mirrors: Callable[..., Mirror], manifest: Path, tmp_path: Path,
        content_range: str | None) -> None:
    mirror = mirrors(partial_answer(content_range))
    run = download(tmp_path, mirror.url, manifest)
    assert_clean_error(run, f"Download failed for {ENCODER}: HTTP 206 without a usable"
                            " Content-Range (asked for bytes 0-, got ")
    # one request: asking again without a Range would get the same answer
    assert len(mirror.seen) == 1
    assert not (tmp_path / ENCODER).exists() and not (tmp_path / (ENCODER + ".partial")).exists()


def test_206_without_content_range_when_resuming_starts_once_from_zero(
        mirrors: Callable[..., Mirror], manifest: Path, tmp_path: Path) -> None:
    (tmp_path / (ENCODER + ".partial")).write_bytes(FILES[ENCODER][:1000])
    mirror = mirrors(partial_answer(None))
    run = download(tmp_path, mirror.url, manifest)
    assert_clean_error(run, f"Download failed for {ENCODER}: HTTP 206 without a usable")
    assert [s.headers.get("range") for s in mirror.seen] == ["bytes=1000-", None]
    assert "the server answered another byte range; starting again" in run.stderr


@pytest.mark.parametrize("length", [
    "10²", "+1", "1_0", "1e3", "0x10", "-1", "1 0", "99999999999999999999", "",
])
def test_content_length_that_is_not_ascii_digits_is_a_clean_error(
        mirrors: Callable[..., Mirror], manifest: Path, tmp_path: Path, length: str) -> None:
    def answer(mirror: Mirror, h: Handler) -> None:
        data = file_of(h) or b""
        h.send_response(200)
        h.send_header("Content-Length", length)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)

    mirror = mirrors(answer)
    run = download(tmp_path, mirror.url, manifest)
    assert_clean_error(run, f"Download failed for {ENCODER}: invalid Content-Length {length!a}")
    assert len(mirror.seen) == 1
    assert not (tmp_path / ENCODER).exists()


def test_conflicting_content_lengths_are_a_clean_error(
        mirrors: Callable[..., Mirror], manifest: Path, tmp_path: Path) -> None:
    def answer(mirror: Mirror, h: Handler) -> None:
        data = file_of(h) or b""
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Content-Length", "3")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)

    run = download(tmp_path, mirrors(answer).url, manifest)
    assert_clean_error(run, f"Download failed for {ENCODER}: invalid Content-Length ")


def test_a_206_that_stops_short_of_the_end_is_continued(
        mirrors: Callable[..., Mirror], tmp_path: Path) -> None:
    """A server may send less than the rest it was asked for; the download asks for the rest."""
    data = FILES[ENCODER]

    def answer(mirror: Mirror, h: Handler) -> None:
        start = int(h.headers.get("Range", "bytes=0-")[6:-1])
        end = min(len(data), start + 10_000)
        reply(h, 206, data[start:end], Content_Range=f"bytes {start}-{end - 1}/{len(data)}")

    mirror = mirrors(answer)
    fetch_file(ENCODER, tmp_path, ModelSource(mirror.url, {ENCODER: hashlib.sha256(data)
                                                           .hexdigest()}), policy=FAST)
    assert (tmp_path / ENCODER).read_bytes() == data
    assert [s.headers.get("range") for s in mirror.seen] == [None] + [
        f"bytes={n}-" for n in range(10_000, len(data), 10_000)]


def test_a_mirror_that_never_lets_a_file_finish_is_given_up(
        mirrors: Callable[..., Mirror], tmp_path: Path) -> None:
    """416 to every Range and half the file to every fresh request: each round makes progress,
    so only the bound on fresh starts ends it."""
    data = FILES[ENCODER]

    def answer(mirror: Mirror, h: Handler) -> None:
        if h.headers.get("Range"):
            reply(h, 416, Content_Range=f"bytes */{len(data)}")
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])  # then the connection closes

    mirror = mirrors(answer)
    source = ModelSource(mirror.url, {ENCODER: hashlib.sha256(data).hexdigest()})
    with pytest.raises(DownloadError, match=f"^Download failed for {ENCODER}: the server refused"
                                            " to resume, also after 2 fresh starts$"):
        fetch_file(ENCODER, tmp_path, source, policy=FAST)
    assert [s.headers.get("range") for s in mirror.seen] == [None, f"bytes={len(data) // 2}-"] * 3


# --- credentials in the mirror URL ---------------------------------------------------------------


def credentials_url(mirror: Mirror, password: str = QUOTED) -> str:
    return f"http://{USER}:{password}@127.0.0.1:{mirror.port}/models"


def test_mirror_behind_basic_auth(mirrors: Callable[..., Mirror], manifest: Path,
                                  tmp_path: Path) -> None:
    mirror = mirrors(with_auth(serve_files))
    run = download(tmp_path, credentials_url(mirror), manifest)
    assert run.returncode == 0, run.stderr
    assert_complete(tmp_path)
    assert [s.headers.get("authorization") for s in mirror.seen] == [TOKEN] * 4
    assert f"from http://127.0.0.1:{mirror.port}/models" in run.stderr  # shown without userinfo
    assert_no_secret(run)


def test_mirror_credentials_given_with_the_flag(mirrors: Callable[..., Mirror], manifest: Path,
                                                tmp_path: Path) -> None:
    mirror = mirrors(with_auth(serve_files))
    run = download(tmp_path, "http://unused.invalid/", manifest,
                   "--model-url", credentials_url(mirror))
    assert run.returncode == 0, run.stderr
    assert_complete(tmp_path)
    assert_no_secret(run)


def test_wrong_password_is_a_clean_error_without_it(mirrors: Callable[..., Mirror],
                                                    manifest: Path, tmp_path: Path) -> None:
    mirror = mirrors(with_auth(serve_files))
    run = download(tmp_path, credentials_url(mirror, "p%40ss-wrong"), manifest)
    assert_clean_error(run, f"Download failed for {ENCODER}: HTTP 401 (wrong or missing"
                            " user:password in the mirror URL)")
    assert "ss-wrong" not in run.stderr
    assert_no_secret(run)
    assert len(mirror.seen) == 1


def test_no_port_url_with_credentials_through_a_proxy(mirrors: Callable[..., Mirror],
                                                      manifest: Path, tmp_path: Path) -> None:
    """``http://user:pw@localhost/models`` (no port): urllib took ``pw@localhost`` for a port.
    Port 80 cannot be bound here, so the request goes through an HTTP proxy (``http_proxy``,
    honoured by the downloader), which here is the mirror itself and sees the absolute URL."""
    proxy = mirrors(with_auth(serve_files))
    run = download(tmp_path, f"http://{USER}:{QUOTED}@localhost/models", manifest,
                   http_proxy=proxy.origin)
    assert run.returncode == 0, run.stderr
    assert_complete(tmp_path)
    assert [s.path for s in proxy.seen] == [f"http://localhost/models/{n}" for n in MODEL_FILES]
    assert all(s.headers.get("host") == "localhost" for s in proxy.seen)
    assert_no_secret(run)


def test_no_port_url_with_credentials_unreachable(manifest: Path, tmp_path: Path) -> None:
    """The reported case: the error used to be ``nonnumeric port: '<password>@localhost'``."""
    run = download(tmp_path, f"http://{USER}:{QUOTED}@localhost:1/models", manifest)
    assert_clean_error(run, f"Download failed for {ENCODER}: ")
    assert_no_secret(run)
    run = download(tmp_path, f"http://{USER}:hunter2@localhost/models", manifest)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "hunter2" not in run.stderr


def test_no_port_url_with_credentials_is_split() -> None:
    source = ModelSource(f"http://{USER}:{QUOTED}@localhost/models")
    assert source.base_url == "http://localhost/models"
    assert source.credentials == (USER, PASSWORD)
    assert source.authorization() == (("http", "localhost", 80), TOKEN)
    assert urllib.request.Request(source.url(ENCODER)).host == "localhost"
    assert PASSWORD not in repr(source) and QUOTED not in repr(source)
    https = ModelSource("https://only-user@Mirror.example:8443/m/")
    assert https.base_url == "https://Mirror.example:8443/m/"
    assert https.authorization() == (("https", "mirror.example", 8443),
                                     "Basic " + base64.b64encode(b"only-user:").decode())
    assert ModelSource("http://m/x").authorization() is None


@pytest.mark.parametrize("same_origin", [True, False])
def test_credentials_never_follow_a_redirect_to_another_origin(
        mirrors: Callable[..., Mirror], manifest: Path, tmp_path: Path, same_origin: bool) -> None:
    cdn = mirrors(serve_files)  # another port: another origin

    def redirect(mirror: Mirror, h: Handler) -> None:
        if h.path.startswith("/models/"):
            target = mirror.origin if same_origin else cdn.origin
            reply(h, 302, Location=target + h.path.replace("/models/", "/cdn/", 1))
        else:
            serve_files(mirror, h)

    mirror = mirrors(with_auth(redirect))
    run = download(tmp_path, credentials_url(mirror), manifest)
    assert run.returncode == 0, run.stderr
    assert_complete(tmp_path)
    assert all(s.headers.get("authorization") == TOKEN for s in mirror.seen)
    assert len(mirror.seen) == (8 if same_origin else 4)
    assert all("authorization" not in s.headers for s in cdn.seen)
    assert len(cdn.seen) == (0 if same_origin else 4)
    assert_no_secret(run)


def test_redirect_location_with_credentials_is_followed_without_them(
        mirrors: Callable[..., Mirror], manifest: Path, tmp_path: Path) -> None:
    cdn = mirrors(serve_files)

    def redirect(mirror: Mirror, h: Handler) -> None:
        reply(h, 302, Location=f"http://x:{QUOTED}@127.0.0.1:{cdn.port}{h.path}")

    run = download(tmp_path, mirrors(redirect).url, manifest)
    assert run.returncode == 0, run.stderr
    assert len(cdn.seen) == 4 and all("authorization" not in s.headers for s in cdn.seen)
    assert_no_secret(run)


@pytest.mark.parametrize("url", [
    f"ftp://{USER}:hunter2@mirror.internal/models",  # not http(s)
    f"http://{USER}:hunter2@mirror.internal:port/models",  # a port that is not a number
    f"http://{USER}:hun#ter2@mirror.internal/models",  # '#' not percent-encoded: port "hun"
    f"http://{USER}:hunter2@[::1/models",  # unclosed IPv6 literal (urlsplit raises ValueError)
    f"http://{USER}:hunter2@/models",  # no host
])
def test_invalid_mirror_url_is_not_echoed(manifest: Path, tmp_path: Path, url: str) -> None:
    for args, env in ((("--model-url", url), {}), ((), {"GIGASTT_MODEL_URL": url})):
        run = download(tmp_path, "", manifest, *args, **env)
        assert run.returncode == 2, run.stderr
        assert "invalid URL (not shown: it may hold a password)" in run.stderr
        assert "Traceback" not in run.stderr
        assert "hunter2" not in run.stderr and "ter2" not in run.stderr


# --- HTTPS: trusted through SSL_CERT_FILE, never downgraded --------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for 127.0.0.1, and the certificate."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


def test_https_mirror_with_a_private_ca(mirrors: Callable[..., Mirror], manifest: Path,
                                       tmp_path: Path, tls: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = tls
    mirror = mirrors(with_auth(serve_files), tls=context)
    url = f"https://{USER}:{QUOTED}@127.0.0.1:{mirror.port}/models"
    untrusted = download(tmp_path, url, manifest)
    assert_clean_error(untrusted, f"Download failed for {ENCODER}: TLS certificate of 127.0.0.1"
                                  " rejected")
    run = download(tmp_path, url, manifest, SSL_CERT_FILE=str(cert))
    assert run.returncode == 0, run.stderr
    assert_complete(tmp_path)
    assert_no_secret(run)


def test_https_to_http_redirect_is_refused(mirrors: Callable[..., Mirror], manifest: Path,
                                          tmp_path: Path, tls: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = tls
    plain = mirrors(serve_files)

    def downgrade(mirror: Mirror, h: Handler) -> None:
        reply(h, 302, Location=plain.origin + h.path)

    mirror = mirrors(downgrade, tls=context)
    run = download(tmp_path, mirror.url, manifest, SSL_CERT_FILE=str(cert))
    assert_clean_error(run, f"Download failed for {ENCODER}: refused a redirect from https to"
                            f" plain http ('{plain.origin}/models/{ENCODER}')")
    assert len(mirror.seen) == 1 and plain.seen == []
    assert not (tmp_path / ENCODER).exists()


def test_redirect_policy() -> None:
    assert redirect_refusal("https://hf.co/a", "https://cdn.hf.co/a") is None
    assert redirect_refusal("http://m/a", "https://m/a") is None
    assert redirect_refusal("http://m/a", "http://n/a") is None
    assert redirect_refusal("https://m/a", "HTTP://m/a") == (
        "refused a redirect from https to plain http ('HTTP://m/a')")
    assert redirect_refusal("HTTPS://m/a", "http://u:pw@m/a") == (
        "refused a redirect from https to plain http ('http://m/a')")
    assert redirect_refusal("http://m/a", "file:///etc/passwd") == (
        "refused a redirect to 'file:///etc/passwd': not an http(s) URL")
    assert redirect_refusal("http://m/a", "ftp://m/a") == (
        "refused a redirect to 'ftp://m/a': not an http(s) URL")
