"""Assembling an offline bundle: wheels, model files, install.sh, the deploy files, MANIFEST.json
and SHA256SUMS, written as one tar.gz with a single top-level directory (docs/deployment.md).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gigastt.bundle import BundleError
from gigastt.bundle.wheels import (
    DIST,
    Target,
    Wheel,
    download,
    glibc_needed,
    project_wheel,
    resolve,
)
from gigastt.store.download.progress import (
    LineProgress,
    NullProgress,
    Progress,
    format_size,
    progress_for,
)

log = logging.getLogger("gigastt.bundle")

FORMAT = 1  # MANIFEST.json "format": what install.sh understands
# Files shipped as package data, so that a bundle can be made from an installed gigastt; the
# unit and the example config are copies of deploy/'s (tests/test_bundle.py keeps them equal).
DATA_FILES = {"install.sh": "install.sh", "deploy/gigastt.service": "gigastt.service",
              "deploy/gigastt.example.toml": "gigastt.example.toml"}
EXECUTABLE = {"install.sh"}
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BundleRequest:
    output: Path
    target: Target
    extras: tuple[str, ...]
    model_dir: Path | None  # None: --no-model
    int8_only: bool


def model_files(model_dir: Path, *, int8_only: bool) -> tuple[list[str], str]:
    """The model files to ship and which encoder they include (``"int8"`` or ``"fp32"``).

    Without ``int8_only`` the directory goes as it is (the FP32 encoder, and the INT8 one when
    present, which the target then uses as this machine does); with it, only the INT8 encoder,
    created first when missing. The optional ``silero_vad.onnx`` goes too when the directory has
    it, checked against its pin first (docs/decisions.md D28: the target would refuse another).
    """
    from gigastt.engine.model import (
        DECODER_FILE,
        ENCODER_FILE,
        ENCODER_INT8_FILE,
        JOINT_FILE,
        VOCAB_FILE,
        missing_files,
    )
    from gigastt.store import StoreError
    from gigastt.store.download import VAD_FILE, sha256_of, vad_pin
    from gigastt.store.quantize import quantize_encoder

    absent = missing_files(model_dir)
    if absent:
        raise BundleError(f"model files missing in {model_dir}: {', '.join(absent)} (run"
                          " `gigastt download`, pass --model-dir, or --no-model)")
    if int8_only and not (model_dir / ENCODER_INT8_FILE).is_file():
        try:
            quantize_encoder(model_dir)
        except StoreError as exc:
            raise BundleError(str(exc)) from exc
    if int8_only:
        encoders = [ENCODER_INT8_FILE]
    else:
        encoders = [name for name in (ENCODER_FILE, ENCODER_INT8_FILE)
                    if (model_dir / name).is_file()]
    files = [*encoders, DECODER_FILE, JOINT_FILE, VOCAB_FILE]
    vad = model_dir / VAD_FILE
    if vad.is_file():
        try:
            pin, actual = vad_pin(os.environ), sha256_of(vad)
        except (StoreError, OSError) as exc:
            raise BundleError(f"cannot check {vad}: {exc}") from exc
        if actual != pin:
            raise BundleError(f"{vad} does not have its pinned SHA-256 ({pin}): delete it and run"
                              " `gigastt download --vad`")
        files.append(VAD_FILE)
    return files, "int8" if ENCODER_INT8_FILE in encoders else "fp32"


class _WheelBar:
    """Wheels saved out of the total: one bar line rewritten in place on a terminal, else a log
    line per wheel (the style of ``gigastt download``'s progress)."""

    def __init__(self, stream: TextIO, total: int) -> None:
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.stream, self.total, self.done, self.began = stream, total, 0, time.monotonic()
        self._width = 0

    def saved(self, name: str, size: int) -> None:
        self.done += 1
        if not self.tty:
            log.info("wheel %d/%d: %s (%s)", self.done, self.total, name, format_size(size))
            return
        bar = ("#" * (20 * self.done // max(1, self.total))).ljust(20, ".")
        text = (f"wheels [{bar}] {self.done}/{self.total}  {name} ({format_size(size)})"
                f"  {time.monotonic() - self.began:.0f} s")
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        if self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()


class _Hashing(io.RawIOBase):
    """A file read once: into the archive, through SHA-256, with progress."""

    def __init__(self, handle: io.BufferedReader, progress: Progress) -> None:
        self.handle, self.progress = handle, progress
        self.digest = hashlib.sha256()
        self.done = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.done += len(data)
        self.progress.update(self.done)
        return data


class _Archive:
    """The tar.gz being written: every member under one top directory, each hashed on the way."""

    def __init__(self, path: Path, top: str) -> None:
        # Level 1: wheels are zip files and weights barely compress; level 9 only costs time.
        self.tar = tarfile.open(path, "w:gz", compresslevel=1)  # noqa: SIM115
        self.top = top
        self.sums: dict[str, str] = {}
        self.now = int(time.time())
        self._dirs: set[str] = set()

    def _info(self, name: str, size: int, mode: int) -> tarfile.TarInfo:
        parts = name.split("/")
        for depth in range(len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in self._dirs:
                self._dirs.add(directory)
                info = tarfile.TarInfo(f"{self.top}/{directory}".rstrip("/"))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, self.now
                self.tar.addfile(info)
        info = tarfile.TarInfo(f"{self.top}/{name}")
        info.size, info.mode, info.mtime = size, mode, self.now
        return info

    def add_bytes(self, name: str, data: bytes, *, executable: bool = False) -> None:
        self.tar.addfile(self._info(name, len(data), 0o755 if executable else 0o644),
                         io.BytesIO(data))
        self.sums[name] = hashlib.sha256(data).hexdigest()

    def add_file(self, name: str, path: Path, progress: Progress) -> None:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            reader = _Hashing(handle, progress)
            progress.start(name, size, 0)
            self.tar.addfile(self._info(name, size, 0o644), reader)
            progress.finish(reader.done)
            if reader.done != size:
                raise BundleError(f"{path} changed while it was being archived")
        self.sums[name] = reader.digest.hexdigest()

    def close(self) -> None:
        # sha256sum -c format; every file but SHA256SUMS itself, which comes last.
        lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(self.sums.items()))
        info = self._info("SHA256SUMS", len(lines), 0o644)
        self.tar.addfile(info, io.BytesIO(lines.encode()))
        self.tar.close()


def _data(name: str) -> bytes:
    return (importlib.resources.files("gigastt.bundle") / name).read_bytes()


def build_bundle(request: BundleRequest, *, stream: TextIO | None = None) -> Path:
    """Write the bundle to ``request.output`` (whole or not at all); returns its path."""
    stream = stream or sys.stderr
    target = request.target
    output = request.output
    model: tuple[list[str], str] | None = None
    if request.model_dir is not None:
        model = model_files(request.model_dir, int8_only=request.int8_only)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gigastt-bundle-") as tmp:
        wheels_dir = Path(tmp) / "wheels"
        wheels_dir.mkdir()
        own = project_wheel(wheels_dir)
        version = own.name.split("-")[1]
        log.info("Resolving the wheels of %s %s%s for %s, CPython %s", DIST, version,
                 f" [{','.join(request.extras)}]" if request.extras else "", target.platform,
                 target.python)
        wheels = resolve(target, own, request.extras)
        _fetch(target, wheels, wheels_dir, stream)
        names = sorted(p.name for p in wheels_dir.iterdir())
        requirement = f"{DIST}[{','.join(request.extras)}]" if request.extras else DIST
        manifest = {
            "format": FORMAT,
            "gigastt_version": version,
            "platform": target.platform,
            "python": target.python,
            "implementation": "cpython",
            "glibc": glibc_needed(names),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "extras": list(request.extras),
            "requirement": f"{requirement}=={version}",
            "wheels": names,
            "model": None if model is None else {"encoder": model[1], "files": model[0]},
        }
        top = f"gigastt-{version}-{target.platform}-py{target.python}"
        partial = output.with_name(output.name + ".partial")
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            archive = _Archive(partial, top)
            archive.add_bytes("MANIFEST.json",
                              (json.dumps(manifest, indent=2) + "\n").encode())
            for name, source in DATA_FILES.items():
                archive.add_bytes(name, _data(source), executable=name in EXECUTABLE)
            quiet = NullProgress()
            for name in names:
                archive.add_file(f"wheels/{name}", wheels_dir / name, quiet)
            if model is not None and request.model_dir is not None:
                progress = _archive_progress(stream)
                for name in model[0]:
                    archive.add_file(f"models/{name}", request.model_dir / name, progress)
            archive.close()
            os.replace(partial, output)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise BundleError(f"cannot write {output}: {exc.strerror or exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    log.info("Bundle written to %s (%s, %d wheels%s, %.0f s); install it with: sh %s/install.sh"
             " --prefix DIR", output, format_size(output.stat().st_size), len(names),
             "" if model is None else f", {model[1]} model", time.monotonic() - began, top)
    return output


def _archive_progress(stream: TextIO) -> Progress:
    """``gigastt download``'s bar on a terminal; its 10 % lines otherwise, saying what they do."""
    progress = progress_for(stream)
    if isinstance(progress, LineProgress):
        return LineProgress(lambda text: log.info(
            "%s", "Archiving " + text.removeprefix("Downloading ")
            if text.startswith("Downloading ") else text))
    return progress


def _fetch(target: Target, wheels: Sequence[Wheel], dest: Path, stream: TextIO) -> None:
    bar = _WheelBar(stream, len(wheels))
    try:
        download(target, wheels, dest, lambda name: bar.saved(name, (dest / name).stat().st_size))
    finally:
        bar.close()
