#!/usr/bin/env bash
# The wheel works anywhere: build it, install it with [cpu] into a fresh venv, and from a folder far
# from the checkout run info / fit / eval / predict on the bundle the wheel embeds (no --bundle), with
# onnx, torch and transformers absent; then add [export] and export tiny-random.
#
#   scripts/wheel_check.sh [--workdir DIR] [--python EXE] [--no-export]
#
# Prints one line per step; exits non-zero on the first failure. tests/test_packaging.py runs it.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK='' PYTHON=${PYTHON:-python3} EXPORT=1
die() { printf 'wheel_check: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'wheel_check: %s\n' "$*"; }
while [ $# -gt 0 ]; do
  case $1 in
    --workdir) WORK=${2:?--workdir needs a directory}; shift 2 ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --no-export) EXPORT=0; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
PYTHON=$(command -v "$PYTHON") || die "no interpreter $PYTHON"
case $PYTHON in /*) ;; *) PYTHON=$PWD/$PYTHON ;; esac
if [ -z "$WORK" ]; then WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
DEMO=$REPO/models/miniworld/demo
[ -d "$DEMO/shots" ] || die "$DEMO/shots is missing (the demo task is part of the checkout)"

# 1. The wheel; without build isolation when setuptools is at hand (nothing to download then).
rm -rf "$WORK/dist" "$WORK/venv" "$WORK/user"
if "$PYTHON" -c 'import setuptools, wheel' 2>/dev/null; then isolation=--no-build-isolation; else isolation=; fi
(cd "$WORK" && "$PYTHON" -m pip wheel -q --no-deps $isolation -w "$WORK/dist" "$REPO" >/dev/null 2>&1) ||
  die "pip wheel failed"
WHEEL=$(ls "$WORK"/dist/edge_tune-*.whl)
say "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

# 2. A fresh venv with the runtime only.
"$PYTHON" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "$WHEEL[cpu]" 2>"$WORK/pip.log" || die "pip install $WHEEL[cpu] failed"
absent=$("$WORK/venv/bin/python" -c 'import importlib.util as u; print(" ".join(m for m in ("onnx", "torch", "transformers") if u.find_spec(m)))')
[ -z "$absent" ] || die "[cpu] pulled in $absent"
say "installed with [cpu] only (no onnx, torch or transformers)"

# 3. The user's folder: nothing of the checkout is importable or reachable by a relative path.
mkdir -p "$WORK/user"; cd "$WORK/user"
ET=$WORK/venv/bin/edge-tune
export EDGE_TUNE_CACHE=$WORK/user/cache
"$ET" info >info.txt || die "edge-tune info failed: $(tail -3 info.txt)"
grep -Eq "hashes +all verified" info.txt || die "info did not verify the embedded bundle: $(cat info.txt)"
grep -q "$WORK/venv/" info.txt || die "info did not read the bundle inside the wheel: $(head -3 info.txt)"
say "info: the embedded bundle verified"
"$ET" fit --data "$DEMO/shots" --budget-queries 160 --folds 2 --out run >fit.txt 2>fit.err ||
  die "edge-tune fit failed: $(tail -3 fit.err)"
for f in classifier.npz prompt.npz result.json; do [ -f "run/$f" ] || die "fit wrote no run/$f"; done
say "fit: $(grep -m1 -i shipped fit.txt || tail -1 fit.txt)"
"$ET" eval --data "$DEMO/eval" --run run >eval.txt || die "edge-tune eval failed"
say "eval: $(cat eval.txt)"
"$ET" predict run "$DEMO/eval/sandal" --json >predict.json || die "edge-tune predict failed"
"$WORK/venv/bin/python" -c 'import json, sys; p = json.load(open(sys.argv[1]))["predictions"]; assert len(p) == 50 and all(x["label"] for x in p), p[:2]' predict.json ||
  die "predict gave no usable predictions"
say "predict: 50 predictions"

# 4. The exporter from the same wheel: the registry and the BPE file are package data.
if [ "$EXPORT" = 1 ]; then
  { "${PIP[@]}" torch==2.13.0 && "${PIP[@]}" "$WHEEL[export]"; } 2>>"$WORK/pip.log" || die "pip install $WHEEL[export] failed"
  "$ET" export tiny-random --out tiny >export.txt 2>&1 || die "export tiny-random failed: $(tail -3 export.txt)"
  "$ET" info tiny >/dev/null || die "info on the exported bundle failed"
  say "export tiny-random: $(tail -1 export.txt)"
fi
say "ok"
