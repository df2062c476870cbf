"""fp32 vs int8 vs fp16 mini-world bundles: zero-shot and tuned accuracy per task, and bundle sizes.

The tuned prompt of each task is the export gate's own short fit (`short_fit_prompt`: the default
`edge` preset, 1,000 queries, seed 0) on the task's shots with the fp32 bundle; the evaluation set
is subsampled to 1,000 images (seed 0) where it is larger. The quantised bundles come from
`edge-tune export miniworld --source models/miniworld/clip --quantize int8|--fp16 --out DIR`.

    python scripts/quantize_figures.py edge_tune/bundles/miniworld INT8_DIR FP16_DIR [TASK ...]
    (TASK: a folder name under /tmp/miniworld/tasks, see models/miniworld/README.md)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_tune.data import Dataset, load_eval, load_shots
from edge_tune_export.quantize import accuracy_gate, short_fit_prompt

TASKS_DIR = Path("/tmp/miniworld/tasks")
DEMO = Path(__file__).resolve().parent.parent / "models" / "miniworld" / "demo"
MAX_EVAL = 1000


def eval_set(root: Path):
    shots = load_shots(root / "shots")
    evaluation = load_eval(root / "eval", shots)
    if len(evaluation.samples) > MAX_EVAL:
        keep = np.sort(
            np.random.default_rng(0).choice(len(evaluation.samples), MAX_EVAL, replace=False)
        )
        evaluation = Dataset(
            list(evaluation.classnames), [evaluation.samples[i] for i in keep], evaluation.root
        )
    return evaluation


def main(argv: list[str]) -> None:
    fp32, int8, fp16 = (Path(p) for p in argv[:3])
    tasks = {"demo (inverted)": DEMO} | {name: TASKS_DIR / name for name in argv[3:]}
    cache = tempfile.mkdtemp()
    print("| task | eval images | zero-shot fp32 / int8 / fp16 | tuned fp32 / int8 / fp16 |")
    print("|---|---|---|---|")
    for name, root in tasks.items():
        evaluation = eval_set(root)
        prompt, _ = short_fit_prompt(fp32, root / "shots", cache_dir=cache)
        by_int8 = accuracy_gate(
            fp32, int8, evaluation, tuned_prompt=prompt, cache_dir=cache, candidate_name="int8"
        )
        by_fp16 = accuracy_gate(
            fp32, fp16, evaluation, tuned_prompt=prompt, cache_dir=cache, candidate_name="fp16"
        )
        a, b, c = by_int8["fp32"], by_int8["candidate"], by_fp16["candidate"]
        print(
            f"| {name} | {len(evaluation.samples)} "
            f"| {a['zero-shot']:.1f} / {b['zero-shot']:.1f} / {c['zero-shot']:.1f} "
            f"| {a['tuned']:.1f} / {b['tuned']:.1f} / {c['tuned']:.1f} |",
            flush=True,
        )
    print()
    for label, bundle in (("fp32", fp32), ("int8", int8), ("fp16", fp16)):
        files = json.loads((bundle / "manifest.json").read_text())["files"]
        print(
            f"{label}: {sum(f['bytes'] for f in files.values()) / 1e6:.2f} MB ("
            + ", ".join(f"{k} {v['bytes'] / 1e6:.2f}" for k, v in files.items())
            + ")"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
