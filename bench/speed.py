"""`edge-tune bench speed`: what one query costs, against PyTorch and the machine's own limit.

`bench_speed` runs `run_speed` in one fresh process, so that every engine in it gets the same
thread count, and the PyTorch-eager reference (`reference_speed`) in another. `run_speed` times the
objective (N candidates x K classes, truncated and batched) through text.onnx and, when the bundle
has it, text_shared.onnx, next to the same work done the way the reference code does it (full
77-token sequences, one candidate per run), counts the FLOPs from the text graph's weight shapes,
compares the achieved rate with a GEMM probe of the same size class, and times whole fit steps with
the encoder and the optimiser `fit` uses (`fit_step_overhead`).

Runtime side: numpy + onnxruntime, onnx for the graph cost and the probe; torch is reached lazily
through `edge_tune_export.reference`.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.blas import limit_blas_threads
from edge_tune.errors import EdgeTuneError
from edge_tune_bench.graph_cost import mlp_width, text_graph_cost
from edge_tune_bench.probe import (
    PROBE_MIN_ROWS,
    cpu_description,
    make_gemm_probe,
    probe_result,
)
from edge_tune_bench.process import NOT_INSTALLED, available_memory_bytes, run_child
from edge_tune_bench.tables import fmt
from edge_tune_bench.timing import (
    DEFAULT_REPEATS,
    SETTLE_S,
    TimedSession,
    load_average,
    median_seconds,
    seconds,
)
from edge_tune_bench.workload import benchmark_classnames, random_features

REFERENCE_LENGTH = 77  # the reference code pads every prompt to CLIP's full context


def estimate_speed_bytes(
    population: int, classes: int, dim: int, length: int, width: int, rows_per_run: int
) -> int:
    """Working memory the speed benchmark needs beyond the loaded session, in bytes (rough, on
    the high side).

    Candidates and their contexts in float64, one run's prompt input, and the text graph's
    activations for that run (the encoders' own per-prompt estimate).
    """
    from edge_tune.runplan import bytes_per_prompt

    candidates = 8 * population * dim * 3
    run = min(population * classes, rows_per_run)
    return candidates + run * (4 * length * width + bytes_per_prompt(length, width))


def check_memory(needed: int, *, population: int, classes: int, per_candidate: int) -> None:
    """Refuse, before allocating, a population that cannot fit in the memory this process may
    use."""
    available = available_memory_bytes()
    if available is None or needed <= 0.8 * available:
        return
    spare = 0.8 * available - (needed - per_candidate * population)
    fits = max(0, int(spare // max(1, per_candidate)))
    raise EdgeTuneError(
        f"a population of {population} x {classes} classes needs about {needed / 2**30:.1f} GiB, "
        f"but only {available / 2**30:.1f} GiB is available here",
        hint=f"lower --population (at most about {fits} fits) or --classes",
    )


def _timed(encoder):
    """`encoder` with a TimedSession between it and its ORT session."""
    encoder.session = TimedSession(encoder.session)
    return encoder


def run_speed(
    bundle_path: str | Path,
    *,
    classes: int = 10,
    population: int = 40,
    provider: str = "auto",
    threads: int | None = None,
    repeats: int = DEFAULT_REPEATS,
    dim: int = 512,
    shots: int = 16,
) -> dict[str, Any]:
    """The ONNX speed report of one bundle, measured in this process (`bench_speed` runs it in a
    child and adds the PyTorch reference from another): rows per path, the GEMM probe, ratios,
    the text graph's cost and the Python overhead of objective calls and of fit steps."""
    from edge_tune.bundle import open_bundle
    from edge_tune.encoders import text_encoder
    from edge_tune.objective import PromptObjective
    from edge_tune.prompts import PromptSpace
    from edge_tune.runplan import rows_per_run

    if population < 1 or classes < 2:
        raise EdgeTuneError(
            f"population {population} and classes {classes} are too small",
            hint="use --population >= 1 and --classes >= 2",
        )
    load_start = load_average()
    bundle = open_bundle(bundle_path)
    space = PromptSpace.build(bundle, benchmark_classnames(classes), dim=dim, seed=0)
    length, width = space.length, space.text_width
    check_memory(
        estimate_speed_bytes(
            population, classes, space.dim, length, width, rows_per_run(length, width)
        ),
        population=population,
        classes=classes,
        per_candidate=8 * space.dim * 3,
    )

    # The encoder fit scores with (text_shared.onnx when the bundle has it), text.onnx beside it,
    # both with fit's run plan (classes grouped by length, runs on `run_threads` workers).
    fit_encoder = _timed(text_encoder(bundle, space, provider=provider, threads=threads))
    plain = (
        fit_encoder
        if fit_encoder.graph == "text"
        else _timed(
            text_encoder(bundle, space, provider=provider, threads=threads, shared_prefix=False)
        )
    )
    shared_encoder = fit_encoder if fit_encoder.graph == "text_shared" else None
    # What each part of fit's plan buys, on fit's graph: the same encoder with every class at the
    # longest class's length (one group, the plan before length groups; only when fit's plan has
    # several, else it is the same plan), and with one worker on ORT's own intra-op threads (the
    # run mode before worker threads; only when fit runs several).
    variants = {}
    if len(fit_encoder.groups) > 1:
        variants["fit_one_group"] = _timed(
            type(fit_encoder)(
                fit_encoder.session.session, space, workers=fit_encoder.workers, group_lengths=False
            )
        )
    if fit_encoder.workers > 1:
        variants["fit_intra_op"] = _timed(
            text_encoder(
                bundle,
                space,
                provider=provider,
                threads=fit_encoder.workers,
                shared_prefix=fit_encoder.graph == "text_shared",
                workers=1,
            )
        )
    session = plain.session.session  # the untimed text.onnx session, for the naive path
    features, labels = random_features(shots * classes, int(bundle.projection_dim), classes)

    def objective_of(encoder):
        return PromptObjective(encoder, features, labels, logit_scale=bundle.logit_scale)

    objective = objective_of(plain)
    W = np.random.default_rng(1).standard_normal((population, space.dim)) * 0.01

    # The ONNX paths and the GEMM probes, timed round-robin (one repetition of each in turn) so
    # that a change in the machine's load shifts all of them alike and their ratios stay
    # meaningful. (PyTorch runs in a process of its own: beside ORT's thread pool its OpenMP
    # threads slow down several-fold on a small machine, which would flatter edge-tune.)
    # (1) edge-tune's objective: truncated per length group, population x classes in runs.
    losses = objective(W)  # also the warm-up (arena, prepacking)
    # (1b) the same through text_shared.onnx, when the bundle has it (not `--no-shared-prefix`)
    shared = None
    if shared_encoder is not None:
        shared = objective_of(shared_encoder)
        shared_losses = shared(W)
    fit_losses = shared_losses if shared is not None else losses
    variant_objectives = {key: objective_of(encoder) for key, encoder in variants.items()}
    variant_losses = {key: obj(W) for key, obj in variant_objectives.items()}
    # (2) ONNX the reference way: 77 tokens, one candidate (K prompts) per run.
    full = space.padded(min(REFERENCE_LENGTH, space.context_length))
    eot = space.eot_index.astype(np.int64)

    def naive_candidate() -> None:
        session.run({"prompt_embeds": full.embeddings(W[:1]), "eot_index": eot})

    naive_candidate()
    cost = text_graph_cost(Path(bundle.path) / bundle.manifest["graphs"]["text"]["file"])
    hidden = mlp_width(cost)
    # each shape both ways of using the cores: ORT's intra-op threads and fit's workers
    probes = [
        ((shape, workers), *make_gemm_probe(*shape, threads=threads, workers=workers))
        for shape in gemm_probe_shapes(fit_encoder, population, width, hidden)
        for workers in sorted({1, fit_encoder.workers})
    ]
    for _, _, probe_ort, probe_numpy in probes:
        probe_ort(), probe_numpy()
    times: dict[str, list[float]] = {}
    inside: dict[str, list[float]] = {}
    naive_times, probe_times = [], [[] for _ in probes]
    timed = {"objective": (objective, plain)}
    if shared is not None:
        timed["objective_shared"] = (shared, shared_encoder)
    timed.update({key: (variant_objectives[key], variants[key]) for key in variants})

    for _ in range(repeats):
        for key, (call, encoder) in timed.items():
            encoder.session.seconds = 0.0
            with limit_blas_threads(1):  # as in a fit (Tuner.run)
                times.setdefault(key, []).append(
                    seconds(lambda call=call: call(W), settle=SETTLE_S)
                )
            inside.setdefault(key, []).append(encoder.session.seconds)
        naive_times.append(seconds(naive_candidate, settle=SETTLE_S))
        for spent, (_, _, probe_ort, probe_numpy) in zip(probe_times, probes):
            spent.append(
                (seconds(probe_ort, settle=SETTLE_S), seconds(probe_numpy, settle=SETTLE_S))
            )
    naive_s = statistics.median(naive_times)
    probe_results = [
        probe_result(
            shape,
            workers,
            flops,
            statistics.median(t[0] for t in spent),
            statistics.median(t[1] for t in spent),
        )
        for ((shape, workers), flops, _, _), spent in zip(probes, probe_times)
    ]
    probe = max(probe_results, key=lambda r: r["attainable_gflops"])
    naive_flops = cost.flops(classes, full.length)

    def row(key: str, encoder, note: str) -> dict[str, Any]:
        wall = statistics.median(times[key])
        return _speed_row(
            population / wall,
            population * classes / wall,
            wall,
            plan_flops(cost, encoder, population),
            note=f"{plan_note(encoder, population)}{note}",
        )

    rows = {
        "objective": row("objective", plain, ""),
        "onnx_naive": _speed_row(
            1 / naive_s,
            classes / naive_s,
            naive_s,
            naive_flops,
            note=f"L={full.length}, 1 candidate ({classes} prompts) per run",
        ),
    }
    overhead = {"objective_fraction": _outside(times["objective"], inside["objective"])}
    if shared is not None:
        rows["objective_shared"] = row(
            "objective_shared",
            shared_encoder,
            f"; loss vs text.onnx {float(np.max(np.abs(shared_losses - losses))):.1e}",
        )
        overhead["objective_shared_fraction"] = _outside(
            times["objective_shared"], inside["objective_shared"]
        )
    for key, encoder in variants.items():
        same = bool(np.array_equal(variant_losses[key], fit_losses))
        rows[key] = row(key, encoder, f"; losses bit-identical to fit's plan: {same}")
    attainable = probe["attainable_gflops"]
    for entry in rows.values():
        entry["fraction_of_gemm"] = entry["gflops"] / attainable
    fit_key = "objective_shared" if shared is not None else "objective"
    ratios = {
        "objective_vs_onnx_naive": rows["objective"]["queries_per_s"]
        / rows["onnx_naive"]["queries_per_s"],
        "objective_fraction_of_gemm": rows["objective"]["fraction_of_gemm"],
        "fit_fraction_of_gemm": rows[fit_key]["fraction_of_gemm"],
    }
    if shared is not None:
        ratios["shared_vs_objective"] = (
            rows["objective_shared"]["queries_per_s"] / rows["objective"]["queries_per_s"]
        )
    for key, ratio in (("fit_one_group", "length_groups_gain"), ("fit_intra_op", "workers_gain")):
        if key in rows:
            ratios[ratio] = rows[fit_key]["queries_per_s"] / rows[key]["queries_per_s"]
    graph_file = bundle.manifest["graphs"][fit_encoder.graph]["file"]
    overhead["fit_step"] = fit_step_overhead(
        fit_encoder,
        features,
        labels,
        graph_file=graph_file,
        logit_scale=bundle.logit_scale,
        repeats=repeats,
    )
    return {
        "bundle": str(bundle.path),
        "model": bundle.manifest.get("model", {}).get("name"),
        "quantization": (bundle.manifest.get("quantization") or {}).get("mode", "fp32"),
        "population": population,
        "classes": classes,
        "dim": space.dim,
        "length": length,
        "provider": (getattr(session, "providers", None) or [provider])[0],
        "threads": threads,
        "repeats": repeats,
        "rows": rows,
        "gemm_probe": probe,
        "gemm_probes": probe_results,
        "cpu": cpu_description(),
        "workers": fit_encoder.workers,
        "ratios": ratios,
        "objective_loss_w0": float(losses[0]),
        "naive_gflop_per_candidate": naive_flops / 1e9,
        "reference_length": full.length,
        "text_graph": {
            "per_token_macs": cost.per_token_macs,
            "per_prompt_macs": cost.per_prompt_macs,
            "layers": cost.layers,
            "width": cost.width,
            "mlp_width": hidden,
        },
        "python_overhead": overhead,
        "load": {"start": load_start, "end": load_average()},
    }


def gemm_probe_shapes(encoder, population: int, width: int, hidden: int) -> list[tuple]:
    """The GEMM probe's shapes: the token rows of fit's largest run, 1,400 and PROBE_MIN_ROWS
    (ORT's MatMul was fastest near 1,400 rows on ViT-B/16 widths, issue 19); the best of them
    is this machine's attainable rate."""
    largest = encoder.largest_run(population)
    return [(rows, width, hidden) for rows in sorted({largest, 1400, PROBE_MIN_ROWS})]


def plan_flops(cost, encoder, n: int) -> int:
    """FLOPs of one call of `encoder` on n candidates, padding included (it is computed too)."""
    if encoder.graph == "text":
        return sum(cost.flops(p.prompts * p.runs, p.group.length) for p in encoder.plan(n))
    return sum(
        cost.shared_flops(p.runs * p.candidates, p.classes, encoder.prefix_rows, p.group.length)
        for p in encoder.plan(n)
    )


def plan_note(encoder, n: int) -> str:
    """`encoder`'s plan for n candidates in words."""
    plans = encoder.plan(n)
    runs = sum(p.runs for p in plans)
    lengths = "/".join(str(p.group.length) for p in plans)
    what = "L" if encoder.graph == "text" else f"P={encoder.prefix_rows} + S"
    return (
        f"{what}={lengths} ({len(plans)} length group(s)), {runs} run(s), "
        f"{encoder.token_rows(n) // n} token rows per candidate, {encoder.workers} worker(s)"
    )


def _outside(calls: list[float], inside: list[float]) -> float:
    """Median share of a call's wall time spent outside ORT."""
    return statistics.median((c - o) / c for c, o in zip(calls, inside))


def _speed_row(
    queries_per_s: float, prompts_per_s: float, wall_s: float, flops: float, *, note: str
) -> dict[str, Any]:
    """One row of the speed report (`fraction_of_gemm` is added once the probe is known)."""
    return {
        "status": "ok",
        "queries_per_s": queries_per_s,
        "prompts_per_s": prompts_per_s,
        "seconds_per_measure": wall_s,
        "gflop_per_measure": flops / 1e9,
        "gflops": flops / wall_s / 1e9,
        "note": note,
    }


def fit_step_overhead(
    encoder,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    graph_file: str,
    logit_scale: float,
    repeats: int,
) -> dict[str, Any]:
    """What a fit step costs and how much of it is Python: ask → objective → tell through
    `encoder` (the one `text_encoder` gives fit, its session a TimedSession) with the optimiser fit
    builds (`FitConfig()`'s optimizer and preset), BLAS at one thread as in `Tuner.run`.

    Returns {"note": "<graph> + <optimizer>/<preset>", "phases": {"<stage>/<phase>": {steps,
    queries_per_step, step_s, ort_s, outside_ort_fraction}}}: the phases differ in cost (SharpZO
    edge: a CMA-ES generation of λ = 20, a 64-query mask probe every 500 steps, 2-query ZO steps),
    so each gets its own mean over consecutive steps, never one blended figure. The first stage
    runs from the start over whole CMA-ES eigendecomposition cycles (`eigh` runs every ~26
    generations at d = 512, λ = 20, and is most of a generation's Python); a later stage is entered
    at once from the same optimiser with `change_point=0` (its own settings unchanged) instead of
    after up to 150 generations. The fold loop's evaluations (every `eval_every` rounds) are not
    part of a step.
    """
    from edge_tune.fit import FitConfig
    from edge_tune.objective import PromptObjective
    from edge_tune.optim import make_optimizer
    from edge_tune.optim.cma import constants

    config = FitConfig()
    objective = PromptObjective(encoder, features, labels, logit_scale=logit_scale)
    dim = encoder.space.dim

    def build(**overrides):
        return make_optimizer(config.optimizer, dim, preset=config.preset, seed=0, **overrides)

    optimizer = build()
    settings = optimizer.config
    cycle = 1
    if all(hasattr(settings, name) for name in ("population_size", "active", "diagonal")):
        cycle = math.ceil(
            constants(dim, settings.population_size, settings.active, settings.diagonal).eigen_gap
        )
    steps = cycle * math.ceil(max(1, repeats) / cycle)
    with limit_blas_threads(1):
        phases = _step_phases(optimizer, objective, steps)
        if getattr(settings, "change_point", 0) > 0:
            phases.update(_step_phases(build(change_point=0), objective, steps + 1))
    return {"note": f"{graph_file} + {config.optimizer}/{config.preset}", "phases": phases}


def _step_phases(optimizer, objective, steps: int) -> dict[str, dict[str, Any]]:
    """`steps` consecutive fit steps from `optimizer.init(0)`, summed per phase ("stage/phase"
    from tell's info): {phase: {steps, queries_per_step, step_s, ort_s, outside_ort_fraction}},
    seconds as means per step."""
    session = objective.encoder.session
    state = optimizer.init(np.zeros(objective.space.dim))
    warmed: set[int] = set()
    sums: dict[str, dict[str, float]] = {}
    for _ in range(steps):
        peek = optimizer.ask(state)  # ask is pure: the timed step asks the same rows again
        if len(peek) not in warmed:  # a new run shape grows the arena once, untimed
            objective(peek)
            warmed.add(len(peek))
        session.seconds = 0.0
        start = time.perf_counter()
        candidates = optimizer.ask(state)
        state, info = optimizer.tell(state, objective(candidates))
        wall = time.perf_counter() - start
        phase = "/".join(str(info[key]) for key in ("stage", "phase") if key in info)
        entry = sums.setdefault(phase, {"steps": 0, "queries": 0, "wall": 0.0, "ort": 0.0})
        entry["steps"] += 1
        entry["queries"] += len(candidates)
        entry["wall"] += wall
        entry["ort"] += session.seconds
    return {
        phase: {
            "steps": int(e["steps"]),
            "queries_per_step": e["queries"] / e["steps"],
            "step_s": e["wall"] / e["steps"],
            "ort_s": e["ort"] / e["steps"],
            "outside_ort_fraction": 1 - e["ort"] / e["wall"],
        }
        for phase, e in sums.items()
    }


def reference_speed(
    bundle_path: str | Path,
    *,
    classes: int,
    population: int,
    threads: int | None,
    repeats: int,
    dim: int = 512,
    shots: int = 16,
    **_: Any,
) -> dict[str, Any]:
    """Seconds per candidate of the PyTorch-eager reference (own process), or why it cannot run.

    Builds the same prompt space, features and candidates as `run_speed` (same seeds), so its loss
    for the first candidate can be checked against the objective's.
    """
    try:
        import torch  # noqa: F401

        from edge_tune_export.reference import EagerReference
    except ImportError:
        return {"status": NOT_INSTALLED}
    from edge_tune.bundle import open_bundle
    from edge_tune.prompts import PromptSpace

    bundle = open_bundle(bundle_path)
    space = PromptSpace.build(bundle, benchmark_classnames(classes), dim=dim, seed=0)
    features, labels = random_features(shots * classes, int(bundle.projection_dim), classes)
    W = np.random.default_rng(1).standard_normal((population, space.dim)) * 0.01
    reference = EagerReference(
        bundle_path, space, features, labels, logit_scale=bundle.logit_scale, threads=threads
    )
    loss = float(reference.losses(W[:1])[0])
    per_candidate = median_seconds(lambda: reference.losses(W[:1]), repeats, warmup=0)
    return {
        "status": "ok",
        "seconds_per_candidate": per_candidate,
        "weights": reference.weights,
        "loss_w0": loss,
        "load": load_average(),
    }


def add_reference(report: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """`report` (from `run_speed`) with the PyTorch-eager row and its ratios put in."""
    rows, ratios = report["rows"], report["ratios"]
    if reference.get("status") != "ok":
        rows["pytorch_eager"] = {"status": reference.get("status", NOT_INSTALLED)}
        return report
    per_candidate, classes = reference["seconds_per_candidate"], report["classes"]
    flops = report["naive_gflop_per_candidate"] * 1e9
    row = _speed_row(
        1 / per_candidate,
        classes / per_candidate,
        per_candidate,
        flops,
        note=f"L={report['reference_length']}, 1 candidate per call, own process "
        f"(load {fmt(reference.get('load'), '.2f')}), "
        f"weights: {reference['weights']}",
    )
    row["fraction_of_gemm"] = row["gflops"] / report["gemm_probe"]["attainable_gflops"]
    row["loss_diff_vs_objective"] = abs(reference["loss_w0"] - report["objective_loss_w0"])
    rows["pytorch_eager"] = row
    for key, ratio in (
        ("objective", "objective_vs_pytorch_eager"),
        ("onnx_naive", "onnx_naive_vs_pytorch_eager"),
        ("objective_shared", "shared_vs_pytorch_eager"),
    ):
        if key in rows:
            ratios[ratio] = rows[key]["queries_per_s"] / row["queries_per_s"]
    return report


def bench_speed(
    bundle_path: str | Path,
    *,
    classes: int = 10,
    population: int = 40,
    provider: str = "auto",
    threads: int | None = None,
    repeats: int = DEFAULT_REPEATS,
    reference: bool = True,
    timeout: float = 1800,
) -> dict[str, Any]:
    """The speed report: `run_speed` in one fresh process, the PyTorch reference in another
    (or its status: "not installed", "skipped (--no-reference)")."""
    from edge_tune.bundle import open_bundle
    from edge_tune.providers import resolve_provider

    open_bundle(bundle_path)  # a bad bundle fails here, with its own message
    resolve_provider(provider)  # and a provider this onnxruntime lacks
    args = {
        "bundle_path": str(bundle_path),
        "classes": classes,
        "population": population,
        "provider": provider,
        "threads": threads,
        "repeats": repeats,
    }
    report = run_child("speed", args, threads=threads, timeout=timeout)
    measured = (
        run_child("reference", args, threads=threads, timeout=timeout)
        if reference
        else {"status": "skipped (--no-reference)"}
    )
    return add_reference(report, measured)
