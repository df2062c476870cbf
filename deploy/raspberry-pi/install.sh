#!/usr/bin/env bash
# Install edge-tune's runtime on a Raspberry Pi (64-bit Raspberry Pi OS) or any aarch64/x86_64 Linux,
# and optionally the re-fit service. No torch, no transformers: only `edge-tune[cpu]`.
#
#   sudo bash install.sh --from ./edge_tune-0.1.0-py3-none-any.whl --bundle ./bundle      # + service
#   bash install.sh --from /path/to/edge-tune --prefix ~/edge-tune --no-service            # just a venv
#
# Options:
#   --from WHEEL_OR_DIR   an edge-tune wheel or a source checkout (required)
#   --bundle DIR          a bundle exported on a workstation; copied to PREFIX/bundle
#   --prefix DIR          where the venv, bundle and scripts go (default /opt/edge-tune)
#   --no-service          skip the system user and the systemd units (no root needed)
#   --python EXE          the interpreter for the venv (default python3; must be >= 3.11)
set -euo pipefail

FROM='' BUNDLE='' PREFIX=/opt/edge-tune SERVICE=1 PYTHON=python3
HERE=$(cd "$(dirname "$0")" && pwd)

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'install.sh: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
  case $1 in
    --from) FROM=${2:?--from needs a wheel or a directory}; shift 2 ;;
    --bundle) BUNDLE=${2:?--bundle needs a directory}; shift 2 ;;
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --no-service) SERVICE=0; shift ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ -n "$FROM" ] || die "--from is required: the edge-tune wheel (built with 'pip wheel --no-deps .') or a checkout"
[ -e "$FROM" ] || die "$FROM: no such wheel or directory"

# 1. The platform: onnxruntime publishes no wheel for 32-bit ARM, and none for Python < 3.11.
case $(uname -m) in
  aarch64|arm64|x86_64) ;;
  armv7l|armv6l) die "this is a 32-bit OS ($(uname -m)); onnxruntime has no wheel for it. Install Raspberry Pi OS (64-bit) and run this again" ;;
  *) die "unsupported machine $(uname -m); onnxruntime publishes wheels for aarch64 and x86_64" ;;
esac
command -v "$PYTHON" >/dev/null || die "$PYTHON not found. Install it: sudo apt install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$("$PYTHON" --version 2>&1) is too old: this installer takes onnxruntime's current line, which needs Python >= 3.11 (Raspberry Pi OS Bookworm has 3.11; for 3.10 see deploy/README.md, Jetson)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "the venv module is missing. Install it: sudo apt install python3-venv"

if [ "$SERVICE" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "installing the service needs root: run with sudo, or pass --no-service"
  command -v systemctl >/dev/null || die "systemd not found: pass --no-service and run 'edge-tune fit' yourself"
fi

# 2. The venv. onnxruntime 1.21.x crashed with "Illegal instruction" on the Pi 4 (Cortex-A72):
#    excluded. The KleidiAI memory growth is fixed from 1.27 on, where the Python version allows it.
VENV=$PREFIX/venv
mkdir -p "$PREFIX"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'onnxruntime!=1.21.*\ntorch<0\ntransformers<0\n' >"$CONSTRAINTS"
if [ -d "$FROM" ]; then SPEC="$(cd "$FROM" && pwd)[cpu]"; else SPEC="$(cd "$(dirname "$FROM")" && pwd)/$(basename "$FROM")[cpu]"; fi
say "installing $SPEC into $VENV"
"$VENV/bin/python" -m pip install -q --constraint "$CONSTRAINTS" "$SPEC"

# 3. Smoke test in a child process: an illegal-instruction build dies with SIGILL (status 132).
status=0
"$VENV/bin/python" -c 'import onnxruntime as ort; print("onnxruntime", ort.__version__, ort.get_available_providers())' || status=$?
if [ "$status" = 132 ]; then
  die "onnxruntime crashed with 'Illegal instruction' on this CPU. Install another version: $VENV/bin/pip install 'onnxruntime==1.22.1'"
fi
[ "$status" = 0 ] || die "onnxruntime does not import (status $status); see the message above"
if "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("torch") or u.find_spec("transformers")))'; then
  die "torch or transformers ended up in $VENV; the runtime must not need them"
fi

mkdir -p "$PREFIX/bin" "$PREFIX/deploy"
install -m 0755 "$HERE/edge-tune-refit" "$PREFIX/bin/edge-tune-refit"
[ -f "$HERE/../README.md" ] && install -m 0644 "$HERE/../README.md" "$PREFIX/deploy/README.md"

# 4. The bundle, checked (hashes, graphs, one timed forward) before anything relies on it.
if [ -n "$BUNDLE" ]; then
  [ -f "$BUNDLE/manifest.json" ] || die "$BUNDLE: not a bundle (no manifest.json). Export one with 'edge-tune export' on a workstation"
  rm -rf "$PREFIX/bundle.new"
  cp -r "$BUNDLE" "$PREFIX/bundle.new"
  "$VENV/bin/edge-tune" info "$PREFIX/bundle.new" >/dev/null || die "the bundle does not load; see the message above"
  rm -rf "$PREFIX/bundle.old"
  [ -d "$PREFIX/bundle" ] && mv "$PREFIX/bundle" "$PREFIX/bundle.old"
  mv "$PREFIX/bundle.new" "$PREFIX/bundle"
  rm -rf "$PREFIX/bundle.old"
fi

if [ "$SERVICE" = 0 ]; then
  say "done: $VENV/bin/edge-tune (no service installed)"
  exit 0
fi

# 5. The service: a system user, its state directory with an inbox people may write to, the units.
id edge-tune >/dev/null 2>&1 ||
  useradd --system --home-dir /var/lib/edge-tune --no-create-home --shell /usr/sbin/nologin edge-tune
install -d -o edge-tune -g edge-tune -m 0775 /var/lib/edge-tune /var/cache/edge-tune
install -d -o edge-tune -g edge-tune -m 2775 /var/lib/edge-tune/inbox /var/lib/edge-tune/shots
[ -n "${SUDO_USER:-}" ] && usermod -a -G edge-tune "$SUDO_USER" && say "added $SUDO_USER to group edge-tune (log in again to use it)"
[ -f /etc/default/edge-tune ] || install -m 0644 "$HERE/edge-tune.env" /etc/default/edge-tune
if [ "$PREFIX" != /opt/edge-tune ]; then
  sed -i "s#/opt/edge-tune#$PREFIX#g" /etc/default/edge-tune
fi
for unit in edge-tune-refit.service edge-tune-refit.path edge-tune-refit.timer; do
  sed "s#/opt/edge-tune#$PREFIX#g" "$HERE/$unit" >"/etc/systemd/system/$unit"
done
systemctl daemon-reload
systemctl enable --now edge-tune-refit.path edge-tune-refit.timer
say "done. Put labelled photos in /var/lib/edge-tune/inbox/<class name>/; follow with: journalctl -fu edge-tune-refit"
