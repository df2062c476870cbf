"""Per-query time of the objective for K = 10 and K = 100 classes, with and without truncation.

A query is one candidate prompt vector evaluated on all K classes (K text sequences). The objective
is called on a population of n candidates at once, as the optimisers do, and the time per query is
the median call time divided by n. "truncated" cuts sequences to max(EOT)+1 positions (what the
objective always does); "full" pads them to the model's context length (77), as the reference code
runs them. Image features are random unit vectors (16 per class): the loss matmul is negligible.

    .venv/bin/python scripts/query_cost.py BUNDLE [--population 8] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge_tune.bundle import open_bundle
from edge_tune.encoders import PlainEncoder
from edge_tune.objective import PromptObjective
from edge_tune.prompts import PromptSpace

ADJECTIVES = [
    "red",
    "small",
    "wild",
    "striped",
    "old",
    "golden",
    "spotted",
    "black",
    "tall",
    "wooden",
]
NOUNS = [
    "fox",
    "sports car",
    "sea lion",
    "tabby cat",
    "sailing boat",
    "oak tree",
    "mountain bike",
    "teapot",
    "water lily",
    "school bus",
]


def class_names(k: int) -> list[str]:
    """k distinct, realistic class names of 2–4 tokens (deterministic)."""
    names = [f"{a} {n}" for n in NOUNS for a in ADJECTIVES]
    return names[:k]


def measure(bundle, session, k: int, truncate: bool, population: int, repeats: int) -> dict:
    space = PromptSpace.build(bundle, class_names(k), seed=0)
    if not truncate:
        space = space.padded(space.context_length)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((16 * k, bundle.projection_dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), 16)
    objective = PromptObjective(
        PlainEncoder(session, space), features, labels, logit_scale=bundle.logit_scale
    )
    W = rng.standard_normal((population, space.dim)) * 0.1
    objective(W)  # warm-up: arena growth, first-run kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        objective(W)
        times.append(time.perf_counter() - start)
    call = statistics.median(times)
    runs = objective.encoder.text_runs // (repeats + 1)
    return {
        "classes": k,
        "truncated": truncate,
        "length": space.length,
        "population": population,
        "text_runs_per_call": runs,
        "call_s": call,
        "per_query_ms": 1000 * call / population,
        "per_prompt_ms": 1000 * call / (population * k),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bundle = open_bundle(args.bundle)
    session = bundle.text_session(args.provider, args.threads)
    rows = [
        measure(bundle, session, k, truncate, args.population, args.repeats)
        for k in args.classes
        for truncate in (True, False)
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "bundle": bundle.manifest.get("model", {}).get("name"),
                    "rows": rows,
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()[0],
                }
            )
        )
        return
    name = bundle.manifest.get("model", {}).get("name", args.bundle)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"bundle {name}, population {args.population}, threads {args.threads or 'default'}, "
        f"median of {args.repeats}, {os.cpu_count()} CPUs, load average {load:.1f} at the end"
    )
    print("| K | sequence | L | per query | per prompt | call (n queries) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['classes']} | {'truncated' if r['truncated'] else 'full'} | {r['length']} | "
            f"{r['per_query_ms']:.2f} ms | {r['per_prompt_ms']:.3f} ms | {r['call_s']:.3f} s |"
        )
    for k in args.classes:
        short, full = [r for r in rows if r["classes"] == k]
        print(f"K={k}: truncation speed-up {full['call_s'] / short['call_s']:.2f}x")


if __name__ == "__main__":
    main()
