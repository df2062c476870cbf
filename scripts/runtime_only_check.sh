#!/usr/bin/env bash
# Proves the device story on this machine: a wheel built from the repo installs into a fresh venv with
# only the [cpu] extra (torch and transformers absent), and `edge-tune fit` + `predict` run end to end
# inside it; then the same fit again pinned to one core under an address-space limit sized like a
# 1 GB device. Prints one summary line per run; exits non-zero on any failure.
#
#   scripts/runtime_only_check.sh [--bundle B] [--data DIR] [--eval DIR] [--budget-queries N]
#                                 [--workdir DIR] [--as-limit-mb MB] [--rss-limit-mb MB] [--python EXE]
#
# Defaults: the shipped mini-world bundle and demo shots. Installing uses deploy/raspberry-pi/install.sh
# (--no-service), so the Pi installer is exercised too.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=$REPO/edge_tune/bundles/miniworld
DATA='' EVAL='' WORK='' BUDGET=400
# Address space (virtual) vs resident memory: ORT and glibc reserve far more address space than they
# touch (thread stacks, malloc arenas), so the AS cap that still lets a run finish is larger than the
# RSS it reaches. RSS is what a 1 GB device has to hold; both are checked. See deploy/README.md.
AS_LIMIT_MB=1536 RSS_LIMIT_MB=1024
PYTHON=${PYTHON:-python3}

die() { printf 'runtime_only_check: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'runtime_only_check: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
  case $1 in
    --bundle) BUNDLE=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --eval) EVAL=$2; shift 2 ;;
    --budget-queries) BUDGET=$2; shift 2 ;;
    --workdir) WORK=$2; shift 2 ;;
    --as-limit-mb) AS_LIMIT_MB=$2; shift 2 ;;
    --rss-limit-mb) RSS_LIMIT_MB=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
DEMO=$REPO/models/miniworld/demo
if [ -z "$DATA" ]; then
  if [ -d "$DEMO/shots" ]; then DATA=$DEMO/shots; else DATA=$DEMO; fi
fi
if [ -z "$EVAL" ] && [ -d "$DEMO/eval" ] && [ "$DATA" = "$DEMO/shots" ]; then EVAL=$DEMO/eval; fi
[ -f "$BUNDLE/manifest.json" ] || die "$BUNDLE: no bundle here. Pass --bundle DIR (e.g. one from 'edge-tune export tiny-random --out DIR')"
[ -d "$DATA" ] || die "$DATA: no shots folder. Pass --data DIR"
BUNDLE=$(cd "$BUNDLE" && pwd); DATA=$(cd "$DATA" && pwd)
[ -z "$EVAL" ] || EVAL=$(cd "$EVAL" && pwd)
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v prlimit >/dev/null || die "prlimit not found (util-linux)"
if [ -z "$WORK" ]; then WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)

# 1. The wheel, built without build isolation when setuptools is at hand (no network needed then).
say "building the wheel"
rm -rf "$WORK/dist"
if "$PYTHON" -c 'import setuptools, wheel' 2>/dev/null; then
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$REPO" >/dev/null
else
  "$PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO" >/dev/null
fi
WHEEL=$(ls "$WORK"/dist/edge_tune-*.whl)

# 2. A fresh venv with only [cpu], through the Raspberry Pi installer.
rm -rf "$WORK/device"
bash "$REPO/deploy/raspberry-pi/install.sh" --from "$WHEEL" --prefix "$WORK/device" --no-service --python "$PYTHON"
VENV=$WORK/device/venv
"$VENV/bin/python" - <<'EOF' || exit 1
import importlib.util, importlib.metadata as md, sys
present = [m for m in ("torch", "transformers") if importlib.util.find_spec(m)]
if present:
    sys.exit(f"runtime_only_check: error: {present} installed in the runtime-only venv")
names = sorted(d.metadata["Name"].lower() for d in md.distributions())
print("runtime_only_check: venv holds", len(names), "distributions:", " ".join(names), file=sys.stderr)
EOF

# 3. fit + predict, run from a neutral directory so the checkout's sources cannot be imported.
measure() { # LABEL LOG COMMAND...: run it, print peak RSS (MB) of the largest child process
  local label=$1 log=$2; shift 2
  (cd "$WORK" && "$VENV/bin/python" - "$label" "$@" <<'EOF') 2>"$log"
import resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
status = subprocess.call(cmd)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{label} status={status} peak_rss_mb={peak_mb:.0f} wall_s={time.perf_counter() - start:.1f}", file=sys.stderr)
sys.exit(status)
EOF
}

fit_and_predict() { # TAG PREFIX... : fit into $WORK/run-TAG under the given command prefix, then predict
  local tag=$1; shift
  local run=$WORK/run-$tag eval_args=()
  [ -z "$EVAL" ] || eval_args=(--eval "$EVAL")
  rm -rf "$run"
  measure "fit[$tag]" "$WORK/fit-$tag.log" env EDGE_TUNE_CACHE="$WORK/cache-$tag" "$@" "$VENV/bin/edge-tune" fit --data "$DATA" "${eval_args[@]}" \
    --bundle "$BUNDLE" --budget-queries "$BUDGET" --seed 0 --out "$run" --json "${FIT_EXTRA[@]}" \
    >"$WORK/fit-$tag.json" || { cat "$WORK/fit-$tag.log" >&2; die "fit [$tag] failed"; }
  grep '^fit\[' "$WORK/fit-$tag.log"
  measure "predict[$tag]" "$WORK/predict-$tag.log" "$@" "$VENV/bin/edge-tune" predict "$run" "${PREDICT_INPUTS[@]}" \
    --json >"$WORK/predict-$tag.json" || { cat "$WORK/predict-$tag.log" >&2; die "predict [$tag] failed"; }
  grep '^predict\[' "$WORK/predict-$tag.log"
  "$VENV/bin/python" - "$tag" "$run" "$WORK/fit-$tag.json" "$WORK/predict-$tag.json" "$RSS_LIMIT_MB" \
    "$WORK/fit-$tag.log" <<'EOF'
import json, pathlib, re, sys
tag, run, fit_json, predict_json, rss_limit, fit_log = sys.argv[1:]
def fail(why):
    sys.exit(f"runtime_only_check: error: [{tag}] {why}")
for name in ("classifier.npz", "prompt.npz", "result.json"):
    if not (pathlib.Path(run) / name).is_file():
        fail(f"{run}/{name} was not written")
result = json.loads(pathlib.Path(fit_json).read_text())
predictions = json.loads(pathlib.Path(predict_json).read_text())["predictions"]
if not predictions or not all(p["label"] in result["classnames"] for p in predictions):
    fail(f"predict gave no usable predictions: {predictions[:2]}")
peak = float(re.search(r"peak_rss_mb=(\d+)", pathlib.Path(fit_log).read_text()).group(1))
print(f"result[{tag}] zero_shot={result['zero_shot_accuracy']:.3f} tuned={result['tuned_accuracy']:.3f} "
      f"queries={result['queries']} predictions={len(predictions)} fit_peak_rss_mb={peak:.0f}")
if peak > float(rss_limit):
    fail(f"fit peaked at {peak:.0f} MB RSS, above the {rss_limit} MB of the device")
EOF
}

mapfile -t PREDICT_INPUTS < <(find "${EVAL:-$DATA}" -mindepth 1 -maxdepth 1 -type d | sort | head -n 3)
[ "${#PREDICT_INPUTS[@]}" -gt 0 ] || PREDICT_INPUTS=("${EVAL:-$DATA}")

FIT_EXTRA=()
say "fit + predict in the runtime-only venv"
fit_and_predict free

# 4. Like a 1 GB device: one core, one ORT thread, and a cap on the address space.
FIT_EXTRA=(--threads 1)
say "again on one core (taskset -c 0) with the address space capped at ${AS_LIMIT_MB} MB"
fit_and_predict one-core taskset -c 0 prlimit --as=$((AS_LIMIT_MB * 1024 * 1024)) --
say "ok: $WHEEL installs with [cpu] only and fits + predicts, also on one core within ${AS_LIMIT_MB} MB of address space"
