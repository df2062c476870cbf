"""Does SharpZO's stage 2 earn its queries? Stage-2 rules against continuing CMA-ES, from the very
same switch state, on the mini-world tasks.

For each task and seed: SharpZO (`edge` preset, the fixed switch) runs its sharpness-aware CMA-ES
warm-up on all the task's shots until `--switch` queries. From that state every variant spends
the same further queries, and the benchmark records the training loss (all shots, what the
optimiser minimises) and the test accuracy (the task's eval images, a report only) of its current
solution at each `--at` total. At the switch it also measures the gradient (CGE, 2d queries that
no variant is charged for): its norm, and its cosine with the ε* the warm-up was using.

    python -m edge_tune_bench.stage2 --out /tmp/stage2/full.json                 # 8 runs, 27 min
    python -m edge_tune_bench.stage2 --seeds 0 --at 2000 6000 20000 \
        --variants "continue CMA-ES" "line-search, dense, shaped (edge)" --out /tmp/stage2/long.json
    python -m edge_tune_bench.stage2 --tasks inverted --seeds 0 --at 2000   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edge_tune.atomic import atomic_write_json
from edge_tune.blas import limit_blas_threads
from edge_tune.sweep import subsample
from edge_tune_bench.accuracy import resolve_task
from edge_tune_bench.grid import DEFAULT_TASKS_DIR

TASKS = ("blur_inverted", "inverted", "noise", "rot90")
#: Variant label -> SharpZO's stage-2 settings, each given in full so that the variants do not move
#: with the edge preset ("continue CMA-ES": no stage 2).
_SPARSE = dict(keep_fraction=0.5, shaped_directions=False)
VARIANTS = {
    "continue CMA-ES": None,
    "sgd η=0.1 (paper rule)": dict(step_rule="sgd", learning_rate=0.1, **_SPARSE),
    "sgd η=10": dict(step_rule="sgd", learning_rate=10.0, **_SPARSE),
    "line-search": dict(step_rule="line-search", learning_rate=0.1, **_SPARSE),
    "line-search, dense": dict(
        step_rule="line-search", learning_rate=0.1, keep_fraction=1.0, shaped_directions=False
    ),
    "line-search, dense, shaped (edge)": dict(
        step_rule="line-search", learning_rate=0.1, keep_fraction=1.0, shaped_directions=True
    ),
}


def run_task(task_dir: Path, seed: int, switch: int, at: list[int], variants: list[str]) -> dict:
    from edge_tune import fitsetup
    from edge_tune.data import load_eval, load_shots
    from edge_tune.fit import DEFAULT_BUNDLE, FitConfig
    from edge_tune.objective import PromptObjective
    from edge_tune.optim import make_optimizer
    from edge_tune.optim.estimators import cge_gradient, cge_points
    from edge_tune.optim.sharpzo import PHASE_PROBE, PHASE_RUN, STAGE_WARMUP

    shots = load_shots(task_dir / "shots")
    test = subsample(load_eval(task_dir / "eval", shots), 100)
    config = FitConfig(seed=seed, head="none")
    setup = fitsetup.prepare(fitsetup.read_inputs(DEFAULT_BUNDLE, shots, test), config, threads=1)
    train = setup.scorer
    Xt, yt = setup.eval_xy
    tester = PromptObjective(setup.encoder, Xt, yt, logit_scale=setup.scale)
    d = setup.space.dim

    def build(**overrides):
        settings = {"switch": "fixed", "change_point": switch // 20, **overrides}
        return make_optimizer("sharpzo", d, preset="edge", seed=seed, **settings)

    warm = build()
    state = warm.init(np.zeros(d))
    while state.stage == STAGE_WARMUP:
        state, _ = warm.tell(state, train(warm.ask(state)))
    switched = state
    w = warm.params(switched)
    grad, _ = cge_gradient(train(cge_points(w, 1e-3)), 1e-3)
    shift = switched.shift
    cosine = float(shift @ grad / (np.linalg.norm(shift) * np.linalg.norm(grad) + 1e-300))
    # the share of ‖g‖² on the coordinates the edge mask keeps (random halves keep 0.5)
    # Every stage-2 variant starts with the mask probe SharpZO runs at the switch (64 queries;
    # for the dense ones the mask keeps everything), as the documented runs did.
    switched = switched._replace(phase=PHASE_PROBE)
    masker = build(**VARIANTS["line-search"])
    masked, _ = masker.tell(switched, train(masker.ask(switched)))
    mask_mass = float((grad[masked.mask] ** 2).sum() / (grad**2).sum())

    def measure(opt, st) -> dict:
        p = opt.params(st)[None]
        loss, _ = train.evaluate(p)
        _, acc = tester.evaluate(p)
        return {"queries": int(st.queries), "loss": float(loss[0]), "test": float(acc[0])}

    out = {
        "switch_queries": int(switched.queries),
        "grad_norm": float(np.linalg.norm(grad)),
        "cos_shift_grad": cosine,
        "mask_mass": mask_mass,
        "step_size": float(switched.cma.step_size),
        "variants": {},
    }
    base = measure(warm, switched)
    for name in variants:
        overrides = VARIANTS[name]
        if overrides is None:
            opt = build(change_point=10**9)
            st = switched._replace(stage=STAGE_WARMUP, phase=PHASE_RUN)
        else:
            opt, st = build(**overrides), switched
        started = time.perf_counter()
        points = [base]
        for target in at:
            while st.queries < target:
                st, _ = opt.tell(st, train(opt.ask(st)))
            points.append(measure(opt, st))
        out["variants"][name] = {
            "points": points,
            "rate": float(getattr(st, "zo_rate", np.nan)),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"  {name}: " + ", ".join(f"{p['queries']}q {p['loss']:.4f}/{100 * p['test']:.1f}%"
                                      for p in points), flush=True)  # fmt: skip
    return out


def table(report: dict) -> str:
    """Per variant and query total: mean loss drop from the switch and mean test accuracy."""
    runs = report["runs"]
    at = report["at"]
    lines = [
        "| variant | " + " | ".join(f"loss drop @{q} | test % @{q}" for q in at) + " | ≥ CMA-ES |",
        "|---|" + "---|---|" * len(at) + "---|",
    ]
    for name in report["variants"]:
        cells, wins = [], 0
        for i in range(1, len(at) + 1):
            drops = [r["variants"][name]["points"][0]["loss"] - r["variants"][name]["points"][i]["loss"] for r in runs]  # fmt: skip
            tests = [100 * r["variants"][name]["points"][i]["test"] for r in runs]
            cells += [f"{statistics.fmean(drops):.4f}", f"{statistics.fmean(tests):.1f}"]
        for r in runs:
            mine = r["variants"][name]["points"][-1]["loss"]
            cma = r["variants"].get("continue CMA-ES")
            wins += cma is not None and mine <= cma["points"][-1]["loss"]
        compared = "continue CMA-ES" in report["variants"]
        score = f"{wins}/{len(runs)}" if compared else "– (not run)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {score} |")
    grads = [r["grad_norm"] for r in runs]
    masses = [r["mask_mass"] for r in runs if "mask_mass" in r]
    cosines = [r["cos_shift_grad"] for r in runs]
    lines.append("")
    lines.append(
        f"At the switch: ‖g‖ {min(grads):.4f}-{max(grads):.4f}; cos(ε*, g) "
        f"{statistics.fmean(cosines):+.3f} (min {min(cosines):+.3f}, max {max(cosines):+.3f})"
        + (f"; ‖g‖² on the mask's half {min(masses):.2f}-{max(masses):.2f}" if masses else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--tasks-dir", type=Path, default=DEFAULT_TASKS_DIR)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--switch", type=int, default=1000, help="queries of warm-up")
    parser.add_argument("--at", nargs="+", type=int, default=[2000, 6000])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = {"switch": args.switch, "at": args.at, "variants": args.variants, "runs": []}
    with limit_blas_threads(1):
        for task in args.tasks:
            for seed in args.seeds:
                print(f"{task} seed {seed}", flush=True)
                run = run_task(resolve_task(task, args.tasks_dir), seed, args.switch, args.at, args.variants)  # fmt: skip
                report["runs"].append({"task": task, "seed": seed, **run})
                if args.out:
                    atomic_write_json(args.out, report)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
