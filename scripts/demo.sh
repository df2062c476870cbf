#!/usr/bin/env bash
# Tune the shipped mini-world CLIP (edge_tune/bundles/miniworld) on the shipped demo task
# (models/miniworld/demo: Fashion-MNIST with inverted intensities, 16 shots per class) with default
# settings, and compare zero-shot and the shipped classifier's accuracy on the demo's evaluation
# images, which the run never sees (it makes every choice by cross-validation on the shots).
# Installs only the runtime ([cpu], no torch) into ./.venv, and nothing when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cpu
ET=.venv/bin/edge-tune
DEMO=models/miniworld/demo
RUN=${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}
$ET fit --data "$DEMO/shots" --out "$RUN"
echo
echo "== on the demo's $(find "$DEMO/eval" -name '*.png' | wc -l) evaluation images (never used by fit) =="
echo -n "zero-shot: "; $ET eval --data "$DEMO/eval"
echo -n "shipped:   "; $ET eval --data "$DEMO/eval" --run "$RUN"
echo
echo "== predict with the tuned classifier =="
photos=("$DEMO"/eval/sandal/*0.png)
$ET predict "$RUN" "${photos[@]:0:6}" --top-k 2
echo
echo "learning curve: $RUN/curve.png   classifier: $RUN/classifier.npz   metrics: $RUN/metrics.jsonl"
