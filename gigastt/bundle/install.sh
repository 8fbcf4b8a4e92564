#!/bin/sh
# Offline installer of a gigastt bundle made by `gigastt bundle` (docs/deployment.md "Air-gapped
# install"). POSIX sh and python3 only; nothing comes from any network (pip runs --no-index).
#
#   sh install.sh --prefix DIR [--systemd] [--unit-dir DIR] [--python PYTHON] [--no-compile]
#
# 1. Verifies every file against SHA256SUMS: a damaged bundle stops here, naming the file, and
#    nothing is written anywhere.
# 2. Refuses a bundle made for another platform, Python or an older glibc, naming both.
# 3. Builds DIR/venv and DIR/models in a staging directory inside DIR, then moves them into place:
#    a failure leaves DIR as it was. A second run upgrades in place and keeps DIR/gigastt.toml.
set -eu
umask 022

usage() {
    cat <<'EOF'
Usage: sh install.sh --prefix DIR [--systemd] [--unit-dir DIR] [--python PYTHON] [--no-compile]

  --prefix DIR     install into DIR: DIR/venv, DIR/models, DIR/gigastt.toml
  --systemd        also install the systemd unit gigastt.service with DIR's paths
  --unit-dir DIR   where --systemd puts the unit (default /etc/systemd/system)
  --python PYTHON  the Python interpreter to build the venv with (default python3)
  --no-compile     skip byte-compiling the venv (faster; a read-only venv then compiles
                   modules in memory at every start)
EOF
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'install.sh: %s\n' "$*" >&2
    usage >&2
    exit 2
}

prefix=
systemd=no
unit_dir=/etc/systemd/system
python=python3
compile=yes
while [ $# -gt 0 ]; do
    case $1 in
        --prefix | --unit-dir | --python)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            case $1 in
                --prefix) prefix=$2 ;;
                --unit-dir) unit_dir=$2 ;;
                *) python=$2 ;;
            esac
            shift 2
            ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --unit-dir=*) unit_dir=${1#*=}; shift ;;
        --python=*) python=${1#*=}; shift ;;
        --systemd) systemd=yes; shift ;;
        --no-compile) compile=no; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done
[ -n "$prefix" ] || usage_error "--prefix DIR is required"

bundle=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P) || die "cannot find the bundle directory"
command -v "$python" >/dev/null 2>&1 ||
    die "$python not found: install CPython (MANIFEST.json names the version) or pass --python"

# Steps 1 and 2 in Python: hashlib and json are on every box that has Python, sha256sum may not be.
# Prints the pip requirement, the version and whether a model is included.
checked=$("$python" - "$bundle" <<'PY'
import hashlib, json, os, platform, re, sys

bundle = sys.argv[1]


def fail(message):
    sys.stderr.write("install.sh: %s\n" % message)
    sys.exit(1)


def damaged(message):
    fail("the bundle is damaged: %s; nothing was installed" % message)


try:
    with open(os.path.join(bundle, "SHA256SUMS"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
except (OSError, UnicodeDecodeError) as exc:
    damaged("cannot read SHA256SUMS (%s)" % exc)

def plain_file(name):
    """A regular file reached without a symbolic link: an archive's links could point anywhere."""
    path = bundle
    for part in name.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            return False
    return os.path.isfile(path)


listed = {}
for number, line in enumerate(lines, 1):
    match = re.fullmatch(r"([0-9a-f]{64})  (\S.*)", line)
    if match is None:
        damaged("SHA256SUMS line %d is not '<sha256>  <file>'" % number)
    name = match.group(2)
    if name.startswith("/") or ".." in name.split("/"):
        damaged("SHA256SUMS names %s, outside the bundle" % name)
    listed[name] = match.group(1)
# Every file this script reads or copies must be listed, so that each one is checked.
for name in ("MANIFEST.json", "install.sh", "deploy/gigastt.service",
             "deploy/gigastt.example.toml"):
    if name not in listed:
        damaged("%s is not listed in SHA256SUMS" % name)
for name, expected in sorted(listed.items()):
    if os.path.lexists(os.path.join(bundle, name)) and not plain_file(name):
        damaged("%s is not a plain file (a link, directory or device)" % name)
    digest = hashlib.sha256()
    try:
        with open(os.path.join(bundle, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        damaged("cannot read %s (%s)" % (name, exc.strerror))
    if digest.hexdigest() != expected:
        damaged("%s does not match its SHA-256 in SHA256SUMS" % name)
# pip takes every wheel it finds: a file slipped into wheels/ (or models/) must not be installed.
for top in ("wheels", "models"):
    if os.path.islink(os.path.join(bundle, top)):
        damaged("%s is a symbolic link" % top)
    for root, dirs, files in os.walk(os.path.join(bundle, top)):
        for name in dirs + files:
            relative = os.path.relpath(os.path.join(root, name), bundle).replace(os.sep, "/")
            if os.path.islink(os.path.join(root, name)):
                damaged("%s is a symbolic link" % relative)
            if name in files and relative not in listed:
                damaged("%s is not listed in SHA256SUMS" % relative)

try:
    with open(os.path.join(bundle, "MANIFEST.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    if manifest.get("format") != 1:
        fail("MANIFEST.json has format %r; this install.sh reads format 1"
             % manifest.get("format"))
    requirement = manifest["requirement"]
    want_platform, want_python = manifest["platform"], manifest["python"]
    model = manifest.get("model")
    encoder = model["encoder"] if model else "none"
    version = manifest["gigastt_version"]
except (ValueError, KeyError, TypeError, AttributeError) as exc:
    damaged("MANIFEST.json is not a bundle manifest (%s)" % exc)
# The requirement becomes one pip argument and the version a line of output: nothing else.
if not re.fullmatch(r"gigastt-server(\[[a-z0-9._,-]+\])?==[0-9A-Za-z.+!-]+", str(requirement)) \
        or encoder not in ("int8", "fp32", "none") \
        or not re.fullmatch(r"[0-9A-Za-z.+!-]+", str(version)):
    damaged("MANIFEST.json names an unexpected requirement, version or encoder")
machine = platform.machine()
machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
system = "linux" if sys.platform.startswith("linux") else sys.platform
here_platform = "%s-%s" % (system, machine)
here_python = "%d.%d" % sys.version_info[:2]
implementation = {"cpython": "CPython"}.get(sys.implementation.name, sys.implementation.name)
if (here_platform, implementation, here_python) != (want_platform, "CPython", want_python):
    message = "this bundle is for %s, CPython %s; this machine is %s, %s %s (%s)" % (
        want_platform, want_python, here_platform, implementation, here_python, sys.executable)
    if here_platform == want_platform:
        message += "; pass --python with a CPython %s interpreter" % want_python
    else:
        message += ("; make a bundle for this machine with `gigastt bundle --platform %s"
                    " --python %s`" % (here_platform, here_python))
    fail(message)
glibc = manifest.get("glibc")
if glibc:
    libc, libc_version = platform.libc_ver()

    def key(text):
        return tuple(int(part) for part in re.findall(r"\d+", text)[:2])

    if libc != "glibc" or key(libc_version) < key(glibc):
        have = "glibc %s" % libc_version if libc == "glibc" else "no glibc (musl?)"
        fail("this bundle's wheels need glibc %s or later; this machine has %s" % (glibc, have))
print(requirement)
print(version)
print(encoder)
PY
) || exit 1
requirement=$(printf '%s\n' "$checked" | sed -n 1p)
version=$(printf '%s\n' "$checked" | sed -n 2p)
encoder=$(printf '%s\n' "$checked" | sed -n 3p)

case $prefix in
    /*) ;;
    *) prefix=$(pwd -P)/$prefix ;;
esac
check_unit_prefix() {
    case $1 in
        *[!A-Za-z0-9/._+-]*)
            die "--systemd needs a prefix of letters, digits and / . _ + - (it goes into the unit): $1" ;;
    esac
}
[ "$systemd" = no ] || check_unit_prefix "$prefix"
created=no
[ -e "$prefix" ] || created=yes
mkdir -p "$prefix" || die "cannot create $prefix"
prefix=$(CDPATH='' cd -- "$prefix" && pwd -P)
# Again once links are resolved: the unit gets the real path.
[ "$systemd" = no ] || check_unit_prefix "$prefix"
stage=$prefix/.install.$$
rm -rf "$stage"
mkdir "$stage" || die "cannot write in $prefix"
# Into place (below) moves what was there aside into the staging directory, then the new parts
# in; an exit in between (an error or a signal) puts the old parts back, so DIR holds either the
# old installation or the new one. A prefix this run created is removed again when left empty.
moving=no
parts=
undo_moves() {
    [ "$moving" = yes ] || return 0
    for part in $parts; do
        if [ ! -e "$stage/$part" ]; then
            rm -rf "${prefix:?}/$part" || true  # the new one was moved in
        fi
        if [ -e "$stage/old-$part" ] && ! mv "$stage/old-$part" "$prefix/$part"; then
            printf 'install.sh: could not put %s back: it is in %s\n' "$part" "$stage/old-$part" >&2
            keep_stage=yes
        fi
    done
    return 0
}
cleanup() {
    keep_stage=no
    undo_moves
    if [ "$keep_stage" = no ]; then
        rm -rf "$stage" || true
    fi
    if [ "$created" = yes ]; then
        rmdir "$prefix" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
printf 'install.sh: installing gigastt %s into %s\n' "$version" "$prefix" >&2

"$python" -m venv --without-pip "$stage/venv" ||
    die "$python -m venv failed (Debian/Ubuntu: apt install python3-venv); nothing was changed in $prefix"
pip_wheel=
for wheel in "$bundle"/wheels/pip-*.whl; do
    [ -f "$wheel" ] && pip_wheel=$wheel
done
[ -n "$pip_wheel" ] || die "the bundle has no pip wheel in wheels/"
# Nothing may come from a network or from the operator's pip settings: no index, no config file,
# no PIP_* variables; only the verified wheels of this bundle.
for variable in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$variable"
done
PIP_CONFIG_FILE=/dev/null
PIP_NO_INDEX=1
PIP_DISABLE_PIP_VERSION_CHECK=1
PIP_NO_INPUT=1
export PIP_CONFIG_FILE PIP_NO_INDEX PIP_DISABLE_PIP_VERSION_CHECK PIP_NO_INPUT
# pip runs straight from its wheel, so the box needs no ensurepip (python3-venv).
"$stage/venv/bin/python" "$pip_wheel/pip" install --no-index --find-links "$bundle/wheels" \
    --no-compile --quiet pip "$requirement" ||
    die "pip could not install $requirement from the bundle; nothing was changed in $prefix"
if [ "$encoder" != none ]; then
    cp -R "$bundle/models" "$stage/models" || die "cannot copy the model into $stage"
fi

# The venv was built at its staging path, which its scripts and pyvenv.cfg name: point them at
# the final one before the move (the interpreter itself finds its venv by its own location).
"$stage/venv/bin/python" - "$stage/venv" "$prefix/venv" <<'PY' || die "cannot adjust the venv's paths"
import os, sys

old, new = (path.encode() for path in sys.argv[1:3])
root = sys.argv[1]
candidates = [os.path.join(root, "pyvenv.cfg")]
candidates += [os.path.join(root, "bin", name) for name in os.listdir(os.path.join(root, "bin"))]
for path in candidates:
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "rb") as handle:
        data = handle.read()
    if old in data:
        with open(path + ".tmp", "wb") as handle:
            handle.write(data.replace(old, new))
        os.chmod(path + ".tmp", os.stat(path).st_mode & 0o7777)
        os.replace(path + ".tmp", path)
PY

parts=venv
if [ "$encoder" != none ]; then
    parts="$parts models"
    # The VAD file is optional (D28) and only in bundles made from a directory that has it:
    # an upgrade without one keeps the operator's copy.
    if [ -f "$prefix/models/silero_vad.onnx" ] && [ ! -e "$stage/models/silero_vad.onnx" ]; then
        cp "$prefix/models/silero_vad.onnx" "$stage/models/silero_vad.onnx" ||
            die "cannot keep $prefix/models/silero_vad.onnx"
    fi
fi
config=kept
if [ ! -e "$prefix/gigastt.toml" ]; then
    cp "$bundle/deploy/gigastt.example.toml" "$stage/gigastt.toml" ||
        die "cannot write the example config into $stage"
    parts="$parts gigastt.toml"
    config=new
fi
# Into place: the old parts aside (deleted with the staging directory), then the new ones in.
moving=yes
for part in $parts; do
    if [ -e "$prefix/$part" ] || [ -L "$prefix/$part" ]; then
        mv "$prefix/$part" "$stage/old-$part" ||
            die "cannot move $prefix/$part aside; nothing was changed in $prefix"
    fi
done
for part in $parts; do
    mv "$stage/$part" "$prefix/$part" ||
        die "cannot move the new $part into $prefix; the old installation is back in place"
done
moving=no
# Byte-code now, with the final paths: a service under ProtectSystem=strict cannot write it later
# (pip and test suites are never imported by the server).
if [ "$compile" = yes ]; then
    "$prefix/venv/bin/python" -m compileall -q -j 0 -x '/site-packages/pip/|/tests/' \
        "$prefix/venv/lib" >/dev/null 2>&1 || true
fi

serve="$prefix/venv/bin/gigastt serve --model-dir $prefix/models --config $prefix/gigastt.toml"
if [ "$systemd" = yes ]; then
    "$prefix/venv/bin/python" - "$bundle/deploy/gigastt.service" "$prefix" \
        >"$stage/gigastt.service" <<'PY' || die "cannot write the systemd unit"
import sys

source, prefix = sys.argv[1:3]
with open(source, encoding="utf-8") as handle:
    lines = handle.read().splitlines()
lines = lines[next(i for i, line in enumerate(lines) if line == "[Unit]"):]
text = "\n".join(line for line in lines if not line.startswith("Documentation=")) + "\n"
for old, new in (("/opt/gigastt/bin/gigastt serve", prefix + "/venv/bin/gigastt serve"),
                 ("--model-dir /var/lib/gigastt/models",
                  "--model-dir %s/models --config %s/gigastt.toml" % (prefix, prefix))):
    if old not in text:
        sys.exit("the bundled unit has no %r" % old)
    text = text.replace(old, new)
sys.stdout.write(
    "# gigastt, installed by install.sh into %s; the next install.sh --systemd rewrites this\n"
    "# file: change settings with `systemctl edit gigastt` (a drop-in, kept across upgrades).\n"
    "# Guide: docs/deployment.md (\"systemd\", \"Air-gapped install\").\n\n" % prefix + text)
PY
    mkdir -p "$unit_dir" || die "cannot create $unit_dir"
    cp "$stage/gigastt.service" "$unit_dir/.gigastt.service.new" &&
        mv "$unit_dir/.gigastt.service.new" "$unit_dir/gigastt.service" ||
        die "cannot write $unit_dir/gigastt.service"
    case $prefix in
        /home/* | /root | /root/* | /run/user/*)
            printf 'install.sh: warning: the unit has ProtectHome=yes, which hides %s from the service; prefer a prefix such as /opt/gigastt\n' "$prefix" >&2 ;;
    esac
fi

printf 'gigastt %s installed in %s (config %s: %s/gigastt.toml)\n' "$version" "$prefix" "$config" "$prefix"
if [ "$encoder" = none ] && [ ! -d "$prefix/models" ]; then
    printf 'No model in this bundle: copy a model directory to %s/models first.\n' "$prefix"
fi
printf 'Start the server:\n  %s\n' "$serve"
if [ "$systemd" = yes ]; then
    printf 'or, with the unit installed in %s:\n  systemctl daemon-reload && systemctl enable --now gigastt\n' "$unit_dir"
fi
