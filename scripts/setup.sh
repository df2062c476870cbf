#!/usr/bin/env bash
# Set up a development environment in ./.venv: the runtime, the torch export side and the test tools.
# torch is pinned exactly (an open range pulls a multi-GB CUDA build); it is installed first so that
# nothing else can ask for another one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "edge-tune needs Python >= 3.11 (onnxruntime's floor); found $("$PY" --version)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[cpu,export,test]'
# Debian packages some tests use: Fashion-MNIST (the mini-world's real data) and systemd-analyze (to
# verify the Raspberry Pi units). Best effort: without them those tests are skipped, nothing else changes.
want=()
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
command -v systemd-analyze >/dev/null || want+=(systemd)
if [ ${#want[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q "${want[@]}" >/dev/null 2>&1 ||
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${want[@]}" >/dev/null 2>&1)) ||
   echo "note: could not install ${want[*]}; the tests that need them will be skipped" >&2
fi
echo "environment ready: $(.venv/bin/python -c 'import edge_tune, onnxruntime, torch; print("edge-tune", edge_tune.__version__, "| onnxruntime", onnxruntime.__version__, "| torch", torch.__version__)')"
