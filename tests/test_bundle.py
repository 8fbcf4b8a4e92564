"""``gigastt bundle`` and its ``install.sh`` (docs/deployment.md "Air-gapped install"): bundles are
built from the package registry; installing them never reaches any index or network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

import gigastt
from gigastt.bundle import BundleError
from gigastt.bundle.build import model_files
from gigastt.bundle.wheels import Target, glibc_needed, resolve
from gigastt.engine.model import ENCODER_FILE, ENCODER_INT8_FILE, MODEL_FILES
from gigastt.testing.audio import tone_sequence, wav_bytes

ROOT = Path(__file__).resolve().parents[1]
HELLO = ["▁При", "вет", ",", "▁мир", "."]
TEXT = "Привет, мир.\n"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
NOWHERE = "http://127.0.0.1:9/"
x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="needs an x86_64 host")


def _clean_env() -> dict[str, str]:
    """This environment without GIGASTT_* (pip keeps the machine's settings: index, certs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}


def _offline_env() -> dict[str, str]:
    """pip pointed nowhere: any attempt to reach an index fails."""
    env = {k: v for k, v in _clean_env().items() if not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_INDEX_URL=NOWHERE, PIP_CONFIG_FILE="/dev/null",
               GIGASTT_MODEL_URL=NOWHERE, GIGASTT_DOWNLOAD_RETRIES="0")
    return env


def _no_network() -> list[str]:
    """``unshare -n`` (an empty network namespace) where this machine allows it, as root does."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True,
                                  check=False).returncode == 0:
        return [unshare, "-n"]
    return []


def _bundle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gigastt", "bundle", *args],
                          env=_clean_env(), capture_output=True, text=True, timeout=600,
                          check=False)


def _install(bundle: Path, prefix: Path, *args: str,
             path_first: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = _offline_env()
    if path_first is not None:  # commands that install.sh runs, replaced for a test
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', os.defpath)}"
    return subprocess.run([*_no_network(), "sh", str(bundle / "install.sh"), "--prefix",
                           str(prefix), *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def _extract(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tops = {name.split("/", 1)[0] for name in tar.getnames()}
        assert len(tops) == 1, tops
        tar.extractall(into, filter="data")
    return into / tops.pop()


def _wheel_tags(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL"))
        text = wheel.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Tag:")]


@dataclass
class Built:
    archive: Path
    root: Path  # the extracted top-level directory


@pytest.fixture(scope="module")
def host_bundle(tone_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("host-bundle")
    archive = work / "host.tar.gz"
    result = _bundle("--output", str(archive), "--model-dir", str(tone_model))
    assert result.returncode == 0, result.stderr
    return Built(archive, _extract(archive, work / "x"))


@dataclass
class Installed:
    prefix: Path
    units: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def installed(host_bundle: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("installed")
    prefix, units = work / "opt" / "gigastt", work / "units"
    result = _install(host_bundle.root, prefix, "--systemd", "--unit-dir", str(units))
    assert result.returncode == 0, result.stdout + result.stderr
    return Installed(prefix, units, result)


@pytest.fixture(scope="module")
def aarch64_bundle(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Made by the gigastt that install.sh installed (a normal pip install, as users have it),
    from the registry: its own wheel is packed again from the installed files."""
    work = tmp_path_factory.mktemp("aarch64-bundle")
    archive = work / "aarch64.tar.gz"
    result = subprocess.run(
        [str(installed.prefix / "venv" / "bin" / "gigastt"), "bundle", "-o", str(archive),
         "--platform", "linux-aarch64", "--no-model"],
        env=_clean_env(), cwd="/", capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    return Built(archive, _extract(archive, work / "x"))


@pytest.fixture(scope="module")
def hello_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "hello.wav"
    path.write_bytes(wav_bytes(tone_sequence(HELLO)))
    return path


def _transcribe(prefix: Path, clip: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_no_network(), str(prefix / "venv" / "bin" / "gigastt"), "transcribe",
                           str(clip), "--model-dir", str(prefix / "models")],
                          env=_offline_env(), cwd="/", capture_output=True, text=True,
                          timeout=120, check=False)


# --- the host bundle --------------------------------------------------------------------------


def test_host_bundle_layout_and_manifest(host_bundle: Built, tone_model: Path) -> None:
    root = host_bundle.root
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    wheels = [f for f in files if f.startswith("wheels/")]
    assert [f for f in files if not f.startswith("wheels/")] == sorted([
        "MANIFEST.json", "SHA256SUMS", "install.sh", "deploy/gigastt.service",
        "deploy/gigastt.example.toml", *(f"models/{name}" for name in MODEL_FILES)])
    assert os.access(root / "install.sh", os.X_OK)
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["gigastt_version"] == gigastt.__version__
    assert (manifest["platform"], manifest["python"]) == (f"linux-{platform.machine()}", PYTHON)
    assert manifest["extras"] == [] and manifest["requirement"] == (
        f"gigastt-server=={gigastt.__version__}")
    assert datetime.fromisoformat(manifest["created"].replace("Z", "+00:00")).tzinfo is not None
    assert manifest["model"] == {"encoder": "fp32", "files": list(MODEL_FILES)}
    assert sorted(f"wheels/{w}" for w in manifest["wheels"]) == wheels
    names = {w.split("-")[0].lower() for w in manifest["wheels"]}
    assert {"gigastt_server", "onnxruntime", "numpy", "websockets", "h11", "pip"} <= names
    assert all(w.endswith(".whl") for w in wheels)
    for name in MODEL_FILES:
        assert (root / "models" / name).read_bytes() == (tone_model / name).read_bytes()


def test_sha256sums_lists_every_other_file_and_passes_sha256sum(host_bundle: Built) -> None:
    root = host_bundle.root
    listed = {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(listed) == files - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        checked = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=root,
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_install_offline_then_transcribe(installed: Installed, hello_wav: Path) -> None:
    prefix = installed.prefix
    assert sorted(p.name for p in prefix.iterdir()) == ["gigastt.toml", "models", "venv"]
    assert sorted(p.name for p in (prefix / "models").iterdir()) == sorted(MODEL_FILES)
    assert f"{prefix}/venv/bin/gigastt serve --model-dir {prefix}/models" in (
        installed.result.stdout)
    result = _transcribe(prefix, hello_wav)
    assert (result.returncode, result.stdout) == (0, TEXT), result.stderr
    # The venv was staged elsewhere and moved: its scripts name their final place.
    assert (prefix / "venv" / "bin" / "gigastt").read_text().startswith(
        f"#!{prefix}/venv/bin/python")


def test_systemd_unit_has_the_prefix_paths_and_verifies(installed: Installed) -> None:
    unit = installed.units / "gigastt.service"
    text = unit.read_text()
    prefix = installed.prefix
    (exec_start,) = re.findall(r"(?m)^ExecStart=(.*)$", text)
    assert exec_start.startswith(f"{prefix}/venv/bin/gigastt serve ")
    assert f"--model-dir {prefix}/models --config {prefix}/gigastt.toml" in exec_start
    assert "/opt/gigastt/bin" not in text and "/var/lib/gigastt/models" not in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("`systemd-analyze` is not installed (Debian package listed in"
                    " .ci/apt-packages)")
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                              check=False)
    output = verified.stdout + verified.stderr
    assert verified.returncode == 0 and "gigastt.service:" not in output, output


def test_second_run_upgrades_in_place_and_keeps_the_config(
        host_bundle: Built, installed: Installed, hello_wav: Path) -> None:
    prefix = installed.prefix
    config = prefix / "gigastt.toml"
    config.write_text("idle_timeout_secs = 60  # the operator's\n")
    stale = prefix / "venv" / "stale-marker"
    stale.write_text("from the first install\n")
    # The operator's VAD file (`gigastt download --vad` elsewhere, copied in): this bundle has
    # none, so the upgrade keeps it.
    vad = prefix / "models" / "silero_vad.onnx"
    vad.write_bytes(b"the operator's VAD file\n")
    result = _install(host_bundle.root, prefix, "--no-compile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config kept" in result.stdout
    assert config.read_text() == "idle_timeout_secs = 60  # the operator's\n"
    assert not stale.exists()  # a new venv replaced the old one
    assert vad.read_bytes() == b"the operator's VAD file\n"
    vad.unlink()
    assert sorted(p.name for p in prefix.iterdir()) == ["gigastt.toml", "models", "venv"]
    transcribed = _transcribe(prefix, hello_wav)
    assert (transcribed.returncode, transcribed.stdout) == (0, TEXT), transcribed.stderr


def test_an_installed_gigastt_bundles_the_same_wheel(host_bundle: Built,
                                                     aarch64_bundle: Built) -> None:
    """From a normal (non-editable) install, gigastt's wheel is packed again from its files:
    the same members, byte for byte, as the wheel that was installed."""
    (original,) = (host_bundle.root / "wheels").glob("gigastt_server-*.whl")
    (rebuilt,) = (aarch64_bundle.root / "wheels").glob("gigastt_server-*.whl")
    assert rebuilt.name == original.name

    def members(path: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(path) as wheel:
            return {n: wheel.read(n) for n in wheel.namelist() if not n.endswith("/RECORD")}

    assert members(rebuilt) == members(original)
    assert "gigastt/bundle/install.sh" in members(rebuilt)


# --- damaged bundles ----------------------------------------------------------------------------


def _copy(bundle: Built, into: Path) -> Path:
    """A copy of the module's bundle for one test to damage. Wheels and model files (tens of MB)
    are hard links to the original's, plain files all the same to install.sh; every test changes
    them only by replacing or renaming them, never by writing through the link."""

    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith((".whl", ".onnx")):
            with contextlib.suppress(OSError):  # another file system: copied after all
                os.link(src, dst)
                return
        shutil.copy2(src, dst)

    shutil.copytree(bundle.root, into, copy_function=link_or_copy)
    return into


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.unlink()  # a new file: the original may be a hard link of the module's bundle
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["wheels/onnxruntime-*.whl", f"models/{ENCODER_FILE}"])
def test_a_flipped_byte_stops_everything(host_bundle: Built, tmp_path: Path,
                                         victim: str) -> None:
    copy = _copy(host_bundle, tmp_path / "bundle")
    (target,) = copy.glob(victim)
    _flip(target)
    prefix = tmp_path / "prefix"
    result = _install(copy, prefix)
    assert result.returncode == 1
    relative = target.relative_to(copy).as_posix()
    assert f"the bundle is damaged: {relative} does not match its SHA-256" in result.stderr
    assert not (prefix / "venv").exists() and not prefix.exists()


def test_an_unlisted_wheel_is_refused(host_bundle: Built, tmp_path: Path) -> None:
    copy = _copy(host_bundle, tmp_path / "bundle")
    shutil.copy(next((copy / "wheels").glob("h11-*.whl")),
                copy / "wheels" / "evil-1.0-py3-none-any.whl")
    result = _install(copy, tmp_path / "prefix")
    assert result.returncode == 1
    assert "wheels/evil-1.0-py3-none-any.whl is not listed in SHA256SUMS" in result.stderr
    assert not (tmp_path / "prefix").exists()


def test_a_linked_file_is_refused(host_bundle: Built, tmp_path: Path) -> None:
    """A model file replaced by a symbolic link to the same bytes: its checksum matches, but an
    archive's links may point anywhere, so it is refused."""
    copy = _copy(host_bundle, tmp_path / "bundle")
    victim = copy / "models" / ENCODER_FILE
    outside = tmp_path / "elsewhere.onnx"
    victim.rename(outside)
    victim.symlink_to(outside)
    result = _install(copy, tmp_path / "prefix")
    assert result.returncode == 1
    assert f"models/{ENCODER_FILE} is not a plain file" in result.stderr
    assert not (tmp_path / "prefix").exists()


def test_every_file_it_uses_must_be_listed(host_bundle: Built, tmp_path: Path) -> None:
    copy = _copy(host_bundle, tmp_path / "bundle")
    sums = (copy / "SHA256SUMS").read_text()
    (copy / "SHA256SUMS").write_text(
        "".join(line for line in sums.splitlines(keepends=True)
                if not line.endswith("  deploy/gigastt.service\n")))
    result = _install(copy, tmp_path / "prefix")
    assert result.returncode == 1
    assert "deploy/gigastt.service is not listed in SHA256SUMS" in result.stderr
    assert not (tmp_path / "prefix").exists()


def test_a_failed_move_puts_the_old_installation_back(host_bundle: Built,
                                                      tmp_path: Path) -> None:
    """The new venv is moved in, then moving the new model in fails (an ``mv`` that refuses
    it): the old venv and model are back, no config was written, no staging is left."""
    prefix = tmp_path / "prefix"
    for part in ("venv", "models"):
        (prefix / part).mkdir(parents=True)
        (prefix / part / "old-marker").write_text(f"the old {part}\n")
    shims = tmp_path / "shims"
    shims.mkdir()
    real_mv = shutil.which("mv")
    assert real_mv is not None
    (shims / "mv").write_text(
        "#!/bin/sh\n"
        'case $1 in */.install.*/models) echo "mv: injected failure" >&2; exit 1 ;; esac\n'
        f'exec {real_mv} "$@"\n')
    (shims / "mv").chmod(0o755)
    result = _install(host_bundle.root, prefix, "--no-compile", path_first=shims)
    assert result.returncode == 1
    assert "cannot move the new models into" in result.stderr
    assert sorted(p.name for p in prefix.iterdir()) == ["models", "venv"]
    for part in ("venv", "models"):
        assert sorted(p.name for p in (prefix / part).iterdir()) == ["old-marker"]


def test_a_python_mismatch_names_both(host_bundle: Built, tmp_path: Path) -> None:
    """A bundle re-signed for CPython 3.99 (consistent sums): refused before anything is made."""
    copy = _copy(host_bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    manifest["python"] = "3.99"
    data = json.dumps(manifest).encode()
    (copy / "MANIFEST.json").write_bytes(data)
    sums = (copy / "SHA256SUMS").read_text()
    sums = re.sub(r"(?m)^[0-9a-f]{64}(?=  MANIFEST\.json$)", hashlib.sha256(data).hexdigest(),
                  sums)
    (copy / "SHA256SUMS").write_text(sums)
    result = _install(copy, tmp_path / "prefix")
    assert result.returncode == 1
    assert f"CPython 3.99; this machine is linux-{platform.machine()}, CPython {PYTHON}" in (
        result.stderr)
    assert "--python" in result.stderr
    assert not (tmp_path / "prefix").exists()


def test_install_sh_usage(host_bundle: Built) -> None:
    result = subprocess.run(["sh", str(host_bundle.root / "install.sh")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2 and "--prefix DIR is required" in result.stderr
    result = subprocess.run(["sh", str(host_bundle.root / "install.sh"), "--prefix", "/x",
                             "--bogus"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "unknown argument: --bogus" in result.stderr


# --- other targets ----------------------------------------------------------------------------


@x86_64_only
def test_aarch64_bundle_has_aarch64_wheels_and_refuses_here(aarch64_bundle: Built,
                                                             tmp_path: Path) -> None:
    root = aarch64_bundle.root
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert (manifest["platform"], manifest["model"]) == ("linux-aarch64", None)
    assert not (root / "models").exists()
    for package in ("onnxruntime", "numpy"):
        (wheel,) = (root / "wheels").glob(f"{package}-*.whl")
        assert "aarch64" in wheel.name and "x86_64" not in wheel.name
        tags = _wheel_tags(wheel)
        assert tags and all(tag.endswith("_aarch64") for tag in tags), tags
    result = _install(root, tmp_path / "prefix")
    assert result.returncode == 1
    assert "this bundle is for linux-aarch64" in result.stderr
    assert "this machine is linux-x86_64" in result.stderr
    assert not (tmp_path / "prefix").exists()


def test_a_missing_wheel_names_the_package_and_platform(host_bundle: Built) -> None:
    (own,) = (host_bundle.root / "wheels").glob("gigastt_server-*.whl")
    with pytest.raises(BundleError) as caught:
        resolve(Target(arch="aarch64", python="3.19"), own, ())
    message = str(caught.value)
    assert re.search(r"no wheel of (onnxruntime|numpy|websockets) \(", message), message
    assert "for linux-aarch64, CPython 3.19" in message


# --- pieces -------------------------------------------------------------------------------------


def test_target_platform_tags() -> None:
    args = Target(arch="aarch64", python="3.12").pip_args()
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert "manylinux_2_28_aarch64" in platforms and "manylinux2014_aarch64" in platforms
    assert not any("x86_64" in p or "manylinux_2_29" in p for p in platforms)
    assert args[args.index("--python-version") + 1] == "3.12"
    assert args[args.index("--only-binary") + 1] == ":all:"


def test_glibc_needed() -> None:
    assert glibc_needed(["h11-0.16.0-py3-none-any.whl"]) is None
    assert glibc_needed([
        "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl",
        "websockets-17.4-cp311-cp311-manylinux1_x86_64.manylinux_2_5_x86_64.whl"]) == "2.27"


def test_int8_only_model_files_quantize_first(tone_model: Path, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(tone_model, directory)
    files, encoder = model_files(directory, int8_only=True)
    assert (files, encoder) == ([ENCODER_INT8_FILE, *MODEL_FILES[1:]], "int8")
    assert (directory / ENCODER_INT8_FILE).is_file()
    assert model_files(directory, int8_only=False) == (
        [ENCODER_FILE, ENCODER_INT8_FILE, *MODEL_FILES[1:]], "int8")


def test_model_files_take_the_vad_only_with_its_pin(tone_model: Path, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(tone_model, directory)
    (directory / "silero_vad.onnx").write_bytes(b"not the pinned file")
    with pytest.raises(BundleError, match=r"silero_vad\.onnx does not have its pinned SHA-256"):
        model_files(directory, int8_only=False)
    vad = ROOT.parent / "shared" / "fixtures" / "vad" / "silero_vad.onnx"
    if not vad.is_file():
        pytest.skip("shared/fixtures/vad/silero_vad.onnx not present")
    shutil.copy(vad, directory / "silero_vad.onnx")
    assert model_files(directory, int8_only=False) == ([*MODEL_FILES, "silero_vad.onnx"], "fp32")


def test_model_files_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"model files missing in .*--no-model"):
        model_files(tmp_path, int8_only=False)


def test_packaged_deploy_files_are_deploys_own() -> None:
    package = ROOT / "gigastt" / "bundle"
    assert (package / "gigastt.service").read_bytes() == (
        ROOT / "deploy" / "systemd" / "gigastt.service").read_bytes()
    assert (package / "gigastt.example.toml").read_bytes() == (
        ROOT / "deploy" / "gigastt.example.toml").read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (["--no-model", "--int8-only"], "--no-model cannot go with"),
    (["--python", "3.9"], "at least 3.11"),
    (["--extras", "nope"], "unknown extra 'nope'"),
    (["--platform", "windows"], "invalid choice"),
])
def test_bundle_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = _bundle("-o", str(tmp_path / "b.tar.gz"), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())
