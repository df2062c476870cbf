"""What handing a generation to Ray actors would cost (issue 15, item 3), measured before deciding
whether `fit --workers ray:N` pays: the round trip of one CMA-ES generation (λ candidates of d
floats out, λ losses back) split over N actors that do no work, and the resident memory of the
Ray processes on this machine. Compare the dispatch with a generation's own cost (`edge-tune bench
speed`: 40 candidates at K = 10 on ViT-B/16 shapes take ~0.3 s).

    python -m edge_tune_bench.ray_dispatch --actors 2 --population 40 --dim 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def ray_rss_mib() -> float:
    """Resident memory of every Ray process here (GCS, raylet, workers, dashboard), MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            )
            if "/ray/" not in command and not command.startswith("ray::"):
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--population", type=int, default=40)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=args.actors, include_dashboard=False, logging_level="warning")

    @ray.remote(num_cpus=1)
    class Worker:
        def losses(self, candidates: np.ndarray) -> np.ndarray:
            return np.zeros(len(candidates))

    actors = [Worker.remote() for _ in range(args.actors)]
    ray.get([a.losses.remote(np.zeros((1, args.dim))) for a in actors])  # started
    population = np.random.default_rng(0).standard_normal((args.population, args.dim))
    slices = np.array_split(population, args.actors)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ray.get([a.losses.remote(s) for a, s in zip(actors, slices)])
        times.append(time.perf_counter() - started)
    report = {
        "actors": args.actors,
        "population": args.population,
        "dim": args.dim,
        "dispatch_ms_median": round(1000 * statistics.median(times), 2),
        "dispatch_ms_p90": round(1000 * float(np.percentile(times, 90)), 2),
        "ray_rss_mib": round(ray_rss_mib(), 1),
        "ray": ray.__version__,
    }
    ray.shutdown()
    print(report)
    return report


if __name__ == "__main__":
    main()
