"""Where one tuning step's time goes: ORT, the objective's numpy, CMA-ES's ask / tell / eigh.

`edge-tune bench speed` gives the totals (its fit-step figure through fit's own text graph and
optimiser); this splits the Python side of a text.onnx objective into its parts with perf counters
(no profiler overhead), at the benchmark's shapes: N candidates × K classes, d = 512, 16 random
unit features per class, BLAS at one thread as in a fit.

    python scripts/step_profile.py BUNDLE [--population 40] [--classes 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edge_tune.blas import limit_blas_threads
from edge_tune.bundle import open_bundle
from edge_tune.encoders import PlainEncoder
from edge_tune.objective import PromptObjective, score
from edge_tune.optim import make_optimizer
from edge_tune.optim.cma import constants
from edge_tune_bench.timing import TimedSession
from edge_tune_bench.workload import benchmark_classnames, random_features


def milliseconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--population", type=int, default=40)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    from edge_tune.prompts import PromptSpace

    bundle = open_bundle(args.bundle)
    space = PromptSpace.build(bundle, benchmark_classnames(args.classes), seed=0)
    session = TimedSession(bundle.text_session(threads=args.threads))
    features, labels = random_features(16 * args.classes, int(bundle.projection_dim), args.classes)
    objective = PromptObjective(
        PlainEncoder(session, space), features, labels, logit_scale=bundle.logit_scale
    )
    optimizer = make_optimizer("cma", space.dim, seed=0, population_size=args.population)
    state = optimizer.init(np.zeros(space.dim))
    gap = constants(space.dim, args.population, True, False).eigen_gap
    W = optimizer.ask(state)
    losses = objective(W)
    text = objective.encoder.features(W)
    covariance = np.cov(np.random.default_rng(0).standard_normal((2 * space.dim, space.dim)).T)
    n = args.repeats
    with limit_blas_threads(1):
        session.seconds = 0.0
        call = milliseconds(lambda: objective(W), n)
        ort = session.seconds / (n + 1) * 1e3
        parts = {
            "score (loss + accuracy)": milliseconds(
                lambda: score(features, labels, text, bundle.logit_scale), n
            ),
            "prompt rows": milliseconds(lambda: space.prompt_rows(W, 0, len(W) * args.classes), n),
            "CMA-ES ask (sample)": milliseconds(
                lambda: optimizer.ask(optimizer.init(np.zeros(space.dim))), n
            ),
            "CMA-ES tell (no eigh)": milliseconds(lambda: optimizer.tell(state, losses), n),
        }
        eigh = milliseconds(lambda: np.linalg.eigh(covariance), max(3, n // 10))
    print(
        f"{bundle.manifest['model']['name']}: {args.population} x {args.classes}, d = {space.dim}, "
        f"ORT threads {args.threads}, BLAS 1 thread"
    )
    print(
        f"objective call {call:.2f} ms: ORT {ort:.2f} ms, the rest {call - ort:.2f} ms "
        f"({100 * (call - ort) / call:.1f}%)"
    )
    for name, ms in parts.items():
        print(f"  {name:26s} {ms:7.2f} ms")
    print(
        f"  {'CMA-ES eigh (d x d)':26s} {eigh:7.2f} ms every {gap:.1f} generations = "
        f"{eigh / gap:.2f} ms per step"
    )
    print("whole steps (ask, objective, tell), mean over many steps:")
    for name in ("sharpzo", "cma", "zo", "spsa-clip"):  # sharpzo (fit's): its first stage here
        step, ort, size = whole_steps(name, objective, session, space.dim, args.population, n)
        print(
            f"  {name:10s} {size:3d} queries/step: step {step:8.2f} ms, ORT {ort:8.2f} ms, "
            f"the rest {100 * (step - ort) / step:.1f}%"
        )


def whole_steps(
    name: str, objective, session, dim: int, population: int, repeats: int
) -> tuple[float, float, int]:
    """(ms per step, ms of it inside ORT, queries per step) of `name`'s loop (edge preset); `cma`
    at `population`."""
    extra = {"population_size": population} if name == "cma" else {}
    optimizer = make_optimizer(name, dim, seed=0, **extra)
    state = optimizer.init(np.zeros(dim))
    steps = max(repeats, 30)
    with limit_blas_threads(1):
        for _ in range(3):
            state, _ = optimizer.tell(state, objective(optimizer.ask(state)))
        session.seconds = 0.0
        start = time.perf_counter()
        for _ in range(steps):
            candidates = optimizer.ask(state)
            state, _ = optimizer.tell(state, objective(candidates))
        total = time.perf_counter() - start
    return total / steps * 1e3, session.seconds / steps * 1e3, len(candidates)


if __name__ == "__main__":
    main()
