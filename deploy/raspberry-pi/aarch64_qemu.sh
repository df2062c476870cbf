#!/usr/bin/env bash
# The Pi path on an x86-64 Debian machine: the runtime-only wheel and PyPI's aarch64 wheels, run by
# an aarch64 CPython 3.11 (Raspberry Pi OS Bookworm's) under qemu-user; then the same fit, eval and
# predict natively, and both results side by side.
#
#   sudo bash deploy/raspberry-pi/aarch64_qemu.sh [WORK_DIR]     # Debian 12 x86-64, needs apt and pip
#
# What it does: installs qemu-user-static, adds the arm64 architecture to apt, downloads Bookworm's
# arm64 python3.11 and the libraries it links (`apt-get download`, unpacked with `dpkg -x`, nothing
# installed for arm64), builds the edge-tune wheel, installs it with its [cpu] dependencies for
# aarch64 into WORK_DIR/site (`pip install --target --platform`), and runs `fit` on the mini-world
# demo shots (400 queries), `eval` zero-shot and tuned on the demo's 500 evaluation images, and
# `predict` on six of them: once under qemu, once with ./.venv (bash scripts/setup.sh cpu).
#
# onnxruntime is pinned to 1.27.0 under qemu: 1.28.0 to 1.32.0 (aarch64) die with SIGSEGV at import
# under Debian 12's qemu-user 7.2, with -cpu cortex-a72, cortex-a76 or max alike (measured
# 2026-12-02); 1.19.2, 1.22.0 and 1.27.0 import and run. On a real Pi, pip picks the newest.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/edge-tune-aarch64}
ORT_UNDER_QEMU=1.27.0
DEMO=models/miniworld/demo
PIP=(.venv/bin/python -m pip)
mkdir -p "$WORK/debs" "$WORK/root"

bash scripts/setup.sh cpu >/dev/null
if ! command -v qemu-aarch64-static >/dev/null; then
  apt-get install -y -q qemu-user-static >/dev/null
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -q >/dev/null
fi
if [ ! -x "$WORK/root/usr/bin/python3.11" ]; then
  (cd "$WORK/debs" && for package in python3.11-minimal libpython3.11-minimal libpython3.11-stdlib \
      libc6 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 \
      libtinfo6 libreadline8 libuuid1 libdb5.3 libgdbm6 libcrypt1 libstdc++6 libgcc-s1 libgomp1 \
      libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 \
      libkeyutils1; do
    apt-get download -q "$package:arm64" >/dev/null 2>&1
  done)
  for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done
fi

rm -rf "$WORK/dist" "$WORK/site"
"${PIP[@]}" wheel -q --no-deps -w "$WORK/dist" . 2>/dev/null
platform=(--platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
          --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --abi cp311
          --only-binary=:all:)
"${PIP[@]}" install -q --target "$WORK/site" "${platform[@]}" \
  "$(ls "$WORK"/dist/edge_tune-*.whl)[cpu]" "onnxruntime==$ORT_UNDER_QEMU" 2>/dev/null

arm() {
  qemu-aarch64-static -L "$WORK/root" -E PYTHONPATH="$WORK/site" -E EDGE_TUNE_CACHE="$WORK/cache" \
    "$WORK/root/usr/bin/python3.11" -m edge_tune "$@"
}
native() {
  EDGE_TUNE_CACHE="$WORK/cache-x86" .venv/bin/python -m edge_tune "$@"
}
photos=("$DEMO"/eval/sandal/*0.png)
for side in arm native; do
  rm -rf "$WORK/run-$side"
  start=$(date +%s)
  "$side" fit --data "$DEMO/shots" --out "$WORK/run-$side" --budget-queries 400 --json \
    >"$WORK/fit-$side.json"
  fitted=$(date +%s)
  "$side" eval --data "$DEMO/eval" --json >"$WORK/zero-$side.json"
  "$side" eval --data "$DEMO/eval" --run "$WORK/run-$side" --json >"$WORK/tuned-$side.json"
  "$side" predict "$WORK/run-$side" "${photos[@]:0:6}" --json >"$WORK/predict-$side.json"
  echo "$((fitted - start)) $(($(date +%s) - fitted))" >"$WORK/seconds-$side"
done

.venv/bin/python - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])


def read(name):
    return json.loads((work / name).read_text())


print("| | aarch64 (qemu) | x86-64 |")
print("|---|---|---|")
rows = {}
for side in ("arm", "native"):
    fit, zero, tuned = read(f"fit-{side}.json"), read(f"zero-{side}.json"), read(f"tuned-{side}.json")
    predicted = [p["label"] for p in read(f"predict-{side}.json")["predictions"]]
    fit_s, rest_s = map(int, (work / f"seconds-{side}").read_text().split())
    rows[side] = {
        "zero-shot accuracy on 500 eval images (loss)": f"{100 * zero['accuracy']:.1f}% "
        f"({zero['loss']:.6f})",
        "tuned accuracy on 500 eval images (loss)": f"{100 * tuned['accuracy']:.1f}% "
        f"({tuned['loss']:.6f})",
        "shipped (cross-validated accuracy)": f"{fit['shipped']} ({100 * fit['tuned_accuracy']:.1f}%)",
        "queries": str(fit["queries"]),
        "fit, wall seconds": str(fit_s),
        "eval twice + predict, wall seconds": str(rest_s),
        "predict, 6 sandal images": ", ".join(predicted),
    }
for key in rows["arm"]:
    print(f"| {key} | {rows['arm'][key]} | {rows['native'][key]} |")
for name in ("zero", "tuned"):
    gap = abs(read(f"{name}-arm.json")["loss"] - read(f"{name}-native.json")["loss"])
    print(f"{name} loss, |aarch64 - x86-64| = {gap:.1e}")
EOF
