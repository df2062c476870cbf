#!/usr/bin/env bash
# Set up ./.venv: edge-tune (editable) with the extras asked for.
#
#   bash scripts/setup.sh            # cpu,export,test: everything the tests need (scripts/test.sh)
#   bash scripts/setup.sh cpu        # the runtime only, no torch (scripts/demo.sh)
#
# Incremental: each extra installed is stamped in .venv with the hash of pyproject.toml, and a call
# whose extras are all stamped installs nothing (the editable install follows code changes by itself).
# Editing pyproject.toml reinstalls. torch is pinned exactly (an open range pulls a multi-GB CUDA
# build) and installed first, so that nothing else can ask for another one.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-cpu,export,test}
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh needs Python >= 3.11 (found $("$PY" --version 2>&1)); set PYTHON=python3.11 or newer" >&2
  exit 1
fi
STAMP=.venv/.edge-tune-setup
key=$(sha256sum pyproject.toml | cut -d' ' -f1)
missing=()
for extra in ${EXTRAS//,/ }; do
  [ -f "$STAMP" ] && grep -qxF "$key $extra" "$STAMP" || missing+=("$extra")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  fi
  PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  log=.venv/setup-pip.log  # pip's and setuptools' warnings; shown only when an install fails
  case ",$EXTRAS," in *,export,*) "${PIP[@]}" torch==2.13.0 2>"$log" || { cat "$log" >&2; exit 1; } ;; esac
  "${PIP[@]}" -e ".[$EXTRAS]" 2>>"$log" || { cat "$log" >&2; exit 1; }
  grep -vs "^$key " "$STAMP" >"$STAMP.new" || true  # lines of an older pyproject.toml go
  for extra in ${EXTRAS//,/ }; do echo "$key $extra" >>"$STAMP.new"; done
  mv "$STAMP.new" "$STAMP"
fi

# Debian packages some tests use: Fashion-MNIST (the mini-world's real data) and systemd-analyze (to
# verify the Raspberry Pi units). Best effort: without them those tests are skipped, nothing else changes.
case ",$EXTRAS," in
  *,test,*)
    want=()
    [ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
    command -v systemd-analyze >/dev/null || want+=(systemd)
    if [ ${#want[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      (apt-get install -y -q "${want[@]}" >/dev/null 2>&1 ||
       (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${want[@]}" >/dev/null 2>&1)) ||
       echo "note: could not install ${want[*]}; the tests that need them will be skipped" >&2
    fi ;;
esac
.venv/bin/python - "${missing[*]:-nothing new}" <<'EOF'
import importlib.metadata as md
import sys

versions = []
for name in ("edge-tune", "onnxruntime", "onnxruntime-gpu", "torch"):
    try:
        versions.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
print(f"environment ready ({'installed: ' + sys.argv[1] if sys.argv[1] != 'nothing new' else 'nothing to install'}): "
      + " | ".join(versions))
EOF
