"""Where the model comes from: the mirror URL and its credentials, the SHA-256 pins, retries.
A ``user:password@`` in the mirror URL is kept apart from the URL, which is all that is shown.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gigastt.config import ConfigError, parse_uint, read_small_file
from gigastt.engine.heads import ALL_FILES
from gigastt.store import StoreError

DEFAULT_BASE_URL = "https://huggingface.co/istupakov/gigaam-v3-onnx/resolve/main"
# The reference's pins (README "Model files"). A mirror cannot replace them: a checksum list
# fetched from the same server as the files would protect against nothing. Private builds bring
# their own list from the local disk instead (SHA256_FILE_ENV).
SHA256_PINS: Mapping[str, str] = {
    "v3_e2e_rnnt_encoder.onnx": "cd60b3764a832e8560ae6d3ad0b10adc1a42ffae412b9476f25620aae4f4a508",
    "v3_e2e_rnnt_decoder.onnx": "7b0a16d67fd2cb37061decc93c69e364a9ab27afee3c57495d55b1c974cf7231",
    "v3_e2e_rnnt_joint.onnx": "602ff7017a93311aad34df1437c8d7f49911353c13d6eae7a6ee7b041339465c",
    "v3_e2e_rnnt_vocab.txt": "39abae20e692998290c574e606f11a9edef2902a1995463fcff63d1490cf22b7",
}
# D28: the optional Silero VAD (silero-vad 6.2.3, MIT). Fetched from the same mirror as the model
# files when one is set, else from the silero-vad repository; the pin holds either way.
VAD_FILE = "silero_vad.onnx"
VAD_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
VAD_BASE_URL = "https://raw.githubusercontent.com/snakers4/silero-vad/v6.2.3/src/silero_vad/data"
MODEL_URL_ENV = "GIGASTT_MODEL_URL"
SHA256_FILE_ENV = "GIGASTT_MODEL_SHA256_FILE"
RETRIES_ENV = "GIGASTT_DOWNLOAD_RETRIES"


class DownloadError(StoreError):
    """A model file could not be fetched or verified; nothing was put under its final name."""


Origin = tuple[str, str, int]  # scheme, host, port: where credentials may be sent


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@`` part, and that user and password, percent-decoded.

    The URL is never handed to urllib with the userinfo in it: urllib would take the password for
    part of the host and print it in its errors ("nonnumeric port").
    """
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    plain = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return plain, (urllib.parse.unquote(user), urllib.parse.unquote(password))


def origin(url: str) -> Origin | None:
    """Scheme, lower-case host and port (the scheme's default when absent); None if malformed."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Base URL (``<base>/<file>``) and the SHA-256 every downloaded file must have.

    A ``user:password@`` in ``base_url`` moves to ``credentials`` (never shown: no repr), sent as
    HTTP Basic auth to the base URL's own scheme, host and port only.
    """

    base_url: str = DEFAULT_BASE_URL
    pins: Mapping[str, str] = field(default_factory=lambda: dict(SHA256_PINS))
    credentials: tuple[str, str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain, credentials = split_userinfo(self.base_url)
        if credentials is not None:
            object.__setattr__(self, "base_url", plain)
            object.__setattr__(self, "credentials", credentials)

    def url(self, name: str) -> str:
        return f"{self.base_url.rstrip('/')}/{urllib.parse.quote(name)}"

    def authorization(self) -> tuple[Origin, str] | None:
        """Where the ``Authorization`` header may go, and its value; None without credentials."""
        where = origin(self.base_url)
        if self.credentials is None or where is None:
            return None
        token = base64.b64encode(":".join(self.credentials).encode()).decode("ascii")
        return where, f"Basic {token}"

    @classmethod
    def resolve_vad(cls, model_url: str | None, env: Mapping[str, str]) -> ModelSource:
        """Where ``silero_vad.onnx`` comes from: the model mirror when set, else its own
        repository; its pin (D28), replaced by ``GIGASTT_MODEL_SHA256_FILE`` when that lists it."""
        pins = {VAD_FILE: VAD_SHA256}
        manifest = env.get(SHA256_FILE_ENV, "").strip()
        if manifest:
            listed = read_sha256_file(Path(manifest))
            if VAD_FILE in listed:
                pins[VAD_FILE] = listed[VAD_FILE]
        return cls(base_url=model_url or VAD_BASE_URL, pins=pins)

    @classmethod
    def resolve(cls, model_url: str | None, env: Mapping[str, str]) -> ModelSource:
        """``model_url`` (flag or ``GIGASTT_MODEL_URL``, resolved by the caller) or Hugging Face;
        the built-in pins, replaced per file by the list named in ``GIGASTT_MODEL_SHA256_FILE``."""
        pins = dict(SHA256_PINS)
        manifest = env.get(SHA256_FILE_ENV, "").strip()
        if manifest:
            pins.update(read_sha256_file(Path(manifest)))
        return cls(base_url=model_url or DEFAULT_BASE_URL, pins=pins)


# A list for the model files is a few hundred bytes.
MAX_SHA256_FILE_BYTES = 64 * 1024
_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def read_sha256_file(path: Path) -> dict[str, str]:
    """Parse ``sha256sum`` output (``<sha256>  <file>``); names outside the model files (of any
    head, D29) are ignored.

    Raises DownloadError (unreadable file, not UTF-8, a line that is not a checksum line).
    """
    def failed(reason: str | None) -> DownloadError:
        return DownloadError(f"cannot read {SHA256_FILE_ENV} {path}: {reason}")

    # The same guard as for the config file: a FIFO or a huge file must not hang start-up.
    raw = read_small_file(path, MAX_SHA256_FILE_BYTES, failed)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise failed(str(exc)) from exc
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SUMS_LINE.fullmatch(line.strip())
        if match is None:
            raise DownloadError(f"{path}:{number}: expected '<sha256>  <file name>'")
        name = Path(match.group(2)).name
        if name in SHA256_PINS or name == VAD_FILE or name in ALL_FILES:
            pins[name] = match.group(1).lower()
    return pins


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Transient failures (resets, timeouts, 5xx) are retried ``retries`` times in a row with
    exponential back-off; an attempt that brought new bytes resets the count. A file is started
    again from zero (its partial discarded) at most ``restarts`` times."""

    retries: int = 4
    restarts: int = 2
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
