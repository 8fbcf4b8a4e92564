"""The wheels of an offline bundle: the target's platform tags, gigastt's own wheel, and pip.
pip resolves (``--dry-run --report``) and downloads (``--require-hashes``) for the target only.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gigastt.bundle import BundleError

log = logging.getLogger("gigastt.bundle")

DIST = "gigastt-server"
PLATFORMS = ("host", "linux-x86_64", "linux-aarch64")
# Wheels are taken up to manylinux_2_28 (glibc 2.28: Debian 10, Ubuntu 20.04, RHEL 8 and later),
# the level onnxruntime's Linux wheels need; each bundle records the glibc its wheels need, and
# install.sh checks it (docs/decisions.md D54).
GLIBC_MAX_MINOR = 28
_GLIBC_MIN_MINOR = {"x86_64": 5, "aarch64": 17}  # the oldest manylinux of each architecture
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_")
_LEGACY = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


@dataclass(frozen=True, slots=True)
class Target:
    """What the bundle installs on: Linux ``arch`` with CPython ``python`` (``"3.11"``)."""

    arch: str
    python: str

    @property
    def platform(self) -> str:
        return f"linux-{self.arch}"

    def pip_args(self) -> list[str]:
        """pip's options for binary wheels of this target only (never sdists: nothing builds
        on the target)."""
        args = ["--only-binary", ":all:", "--implementation", "cp",
                "--python-version", self.python]
        for minor in range(GLIBC_MAX_MINOR, _GLIBC_MIN_MINOR[self.arch] - 1, -1):
            args += ["--platform", f"manylinux_2_{minor}_{self.arch}"]
        for legacy, minor in _LEGACY.items():
            if minor >= _GLIBC_MIN_MINOR[self.arch]:
                args += ["--platform", f"{legacy}_{self.arch}"]
        return args


def resolve_target(name: str, python: str | None) -> Target:
    """``--platform`` and ``--python`` as a Target; ``host`` is this machine."""
    version = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    if name != "host":
        return Target(arch=name.removeprefix("linux-"), python=version)
    machine = _MACHINES.get(platform.machine().lower())
    if not sys.platform.startswith("linux") or machine is None:
        raise BundleError(
            f"this machine ({sys.platform} {platform.machine()}) is not a bundle platform; pass"
            " --platform linux-x86_64 or --platform linux-aarch64")
    return Target(arch=machine, python=version)


def glibc_needed(wheel_names: Iterable[str]) -> str | None:
    """The glibc version the wheels need together (``"2.28"``); None for pure-Python wheels.

    A wheel runs where any one of its platform tags does, so it needs the lowest of them.
    """
    needed: int | None = None
    for name in wheel_names:
        lowest: int | None = None
        for tag in name.removesuffix(".whl").split("-")[-1].split("."):
            match = _MANYLINUX.match(tag)
            minor = int(match.group(2)) if match else _LEGACY.get(tag.split("_", 1)[0])
            if minor is not None:
                lowest = minor if lowest is None else min(lowest, minor)
        if lowest is not None:
            needed = lowest if needed is None else max(needed, lowest)
    return None if needed is None else f"2.{needed}"


# --- gigastt's own wheel ----------------------------------------------------------------------


def _sha256_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def project_wheel(dest: Path) -> Path:
    """gigastt-server's wheel in ``dest``, made from the gigastt that is running.

    Run from a source tree (an editable install, or a checkout on ``PYTHONPATH``): built from a
    copy of that tree with ``pip wheel``. Run from a normal install (pip, from a wheel or an
    index): packed again from the installed files, each checked against pip's RECORD, so the
    bundle holds the same bytes pip installed here, and nothing is fetched for it.
    """
    package = Path(__file__).resolve().parents[1]
    tree = package.parent
    if (tree / "pyproject.toml").is_file():
        return _build_from_source(tree, dest)
    found = list(importlib.metadata.Distribution.discover(name=DIST, path=[str(tree)]))
    if not found:
        raise BundleError(f"{DIST} in {tree} was not installed by pip (no {DIST} .dist-info);"
                          " reinstall it with pip")
    return _repack(found[0], dest)


def _repack(dist: importlib.metadata.Distribution, dest: Path) -> Path:
    files = dist.files or []
    info_dir = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info_dir is None:
        raise BundleError(f"{DIST} was not installed by pip (no RECORD); reinstall it with pip")
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines()
            if line.startswith("Tag:")]
    tag = tags[0] if tags else "py3-none-any"
    skip_info = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    members: list[tuple[str, bytes]] = []
    for item in files:
        if item.parts[0] == ".." or "__pycache__" in item.parts or item.suffix == ".pyc":
            continue  # console scripts (pip writes them anew) and compiled caches
        if item.parts[0] == info_dir and item.name in skip_info:
            continue
        data = Path(str(item.locate())).read_bytes()
        if item.hash is not None and item.hash.mode == "sha256" \
                and _sha256_b64(data) != item.hash.value:
            raise BundleError(f"installed file {item} differs from what pip installed (RECORD);"
                              f" reinstall {DIST} before making a bundle")
        members.append((item.as_posix(), data))
    version = dist.version
    path = dest / f"{DIST.replace('-', '_')}-{version}-{tag}.whl"
    record = [f"{name},sha256={_sha256_b64(data)},{len(data)}" for name, data in members]
    record.append(f"{info_dir}/RECORD,,")
    members.append((f"{info_dir}/RECORD", ("\n".join(record) + "\n").encode()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(members, key=lambda m: m[0].endswith("/RECORD")):
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return path


def _build_from_source(source: Path, dest: Path) -> Path:
    # A copy keeps pip's in-tree build/ and egg-info out of the operator's checkout.
    with tempfile.TemporaryDirectory(prefix="gigastt-src-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for child in source.iterdir():
            if child.is_file() and (child.suffix in (".toml", ".cfg", ".in")
                                    or child.name in ("setup.py", "README.md")
                                    or child.name.startswith("LICENSE")):
                shutil.copy2(child, copy / child.name)
        shutil.copytree(source / "gigastt", copy / "gigastt",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.partial"))
        before = set(dest.glob("*.whl"))
        result = run_pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest), str(copy)])
        if result.returncode != 0:
            raise BundleError(f"cannot build the {DIST} wheel from {source}:"
                              f" {_last_error(result.stderr)}")
    built = sorted(set(dest.glob(f"{DIST.replace('-', '_')}-*.whl")) - before)
    if len(built) != 1:
        raise BundleError(f"pip wheel built {len(built)} wheels from {source}, expected one")
    return built[0]


# --- pip ---------------------------------------------------------------------------------------


def run_pip(args: Sequence[str], *, on_line: Callable[[str], None] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """``python -m pip ARGS`` with the operator's pip settings (index, proxy, certificates)."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PIP_PROGRESS_BAR="off", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "pip", *args]
    if on_line is None:
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    else:
        # stdout line by line for the progress display; stderr kept for the error message.
        with tempfile.TemporaryFile("w+") as errors:
            with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors,
                                  text=True) as proc:
                assert proc.stdout is not None
                lines = []
                for line in proc.stdout:
                    lines.append(line)
                    on_line(line.rstrip("\n"))
            errors.seek(0)
            result = subprocess.CompletedProcess(command, proc.returncode, "".join(lines),
                                                 errors.read())
    if result.returncode != 0 and "No module named pip" in result.stderr:
        raise BundleError(f"gigastt bundle needs pip in {sys.prefix}: {sys.executable} -m"
                          " ensurepip")
    return result


def _last_error(stderr: str) -> str:
    errors = [line.removeprefix("ERROR: ").strip() for line in stderr.splitlines()
              if line.startswith("ERROR:")]
    if errors:
        return "; ".join(errors[-2:])
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "pip failed without a message"


@dataclass(frozen=True, slots=True)
class Wheel:
    """One wheel pip chose: its project name, version, file name, URL and SHA-256."""

    name: str
    version: str
    filename: str
    url: str
    sha256: str


def resolve(target: Target, own: Path, extras: Sequence[str]) -> list[Wheel]:
    """Every wheel that ``gigastt-server[extras]`` and pip need on ``target`` (own excluded).

    A requirement with no wheel for the target is a BundleError naming it and the target.
    """
    wanted = f"{DIST}[{','.join(extras)}]" if extras else DIST
    with tempfile.TemporaryDirectory(prefix="gigastt-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        result = run_pip(["install", "--dry-run", "--ignore-installed", "--quiet",
                          "--report", str(report), *target.pip_args(),
                          f"{wanted} @ {own.resolve().as_uri()}", "pip"])
        if result.returncode != 0:
            raise BundleError(missing_wheel_message(result.stderr, target))
        data = json.loads(report.read_text(encoding="utf-8"))
    wheels: list[Wheel] = []
    for item in data.get("install", []):
        meta = item["metadata"]
        info = item["download_info"]
        if meta["name"].lower() == DIST:
            continue
        url = info["url"]
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest is None:
            raise BundleError(f"the package index gave no SHA-256 for {meta['name']} ({url})")
        filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        if not filename.endswith(".whl"):
            raise BundleError(f"{meta['name']} {meta['version']} has no wheel for"
                              f" {target.platform} (pip chose {filename})")
        wheels.append(Wheel(meta["name"], meta["version"], filename, url, digest))
    return wheels


def missing_wheel_message(stderr: str, target: Target) -> str:
    """pip's resolution failure as one line naming the package and the target."""
    match = _NO_MATCH.search(stderr)
    where = f"{target.platform}, CPython {target.python}"
    if match is None:
        return f"cannot resolve the wheels for {where}: {_last_error(stderr)}"
    requirement = match.group(1)
    package = re.split(r"[<>=!~;\[ (]", requirement, maxsplit=1)[0]
    return (f"the package index has no wheel of {package} ({requirement}) for {where}: pick"
            " another --python or --platform, or leave out the extra that needs it")


def download(target: Target, wheels: Sequence[Wheel], dest: Path,
             saved: Callable[[str], None]) -> None:
    """Download ``wheels`` into ``dest``, each checked against its SHA-256 by pip;
    ``saved(filename)`` is called as each one arrives (the progress display)."""
    if not wheels:
        return
    with tempfile.TemporaryDirectory(prefix="gigastt-pins-") as tmp:
        pins = Path(tmp) / "requirements.txt"
        pins.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n"
                                for w in wheels), encoding="utf-8")
        names = {w.filename for w in wheels}

        def line(text: str) -> None:
            for prefix in ("Saved ", "File was already downloaded "):
                if text.startswith(prefix):
                    name = Path(text[len(prefix):].strip()).name
                    if name in names:
                        saved(name)

        result = run_pip(["download", "--no-deps", "--require-hashes", "--dest", str(dest),
                          *target.pip_args(), "-r", str(pins)], on_line=line)
    if result.returncode != 0:
        raise BundleError(missing_wheel_message(result.stderr, target))
    absent = sorted(names - {p.name for p in dest.iterdir()})
    if absent:
        raise BundleError(f"pip did not download {', '.join(absent)} for {target.platform}")
