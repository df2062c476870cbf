"""Speed and memory benchmarks: what one query costs, against PyTorch and against the machine's own limit.

`bench_speed` times the objective (N candidates x K classes, truncated and batched) next to the
same work done the way the reference code does it (full 77-token sequences, one candidate at a time,
in ONNX and, when torch is installed, in PyTorch eager), counts the FLOPs from the text graph's
weight shapes and compares the achieved rate with a GEMM probe of the same size class.
`bench_memory` measures peak RSS, each case in a fresh process, so that one case's arena or
imported libraries never inflate another's figure.

Runtime side: numpy + onnxruntime only; torch is reached lazily through `edge_tune_export.reference`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_tune.blas import limit_blas_threads
from edge_tune.errors import EdgeTuneError

NOT_INSTALLED = "not installed"
REFERENCE_LENGTH = 77  # the reference code pads every prompt to CLIP's full context
DEFAULT_REPEATS = 5

# Realistic class names (CIFAR-10/100 style) so that the truncated length L is what a user sees.
CLASSNAMES = (
    "airplane automobile bird cat deer dog frog horse ship truck apple aquarium fish baby bear "
    "beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle caterpillar "
    "cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn mower leopard lion lizard "
    "lobster man maple tree motorcycle mountain mouse mushroom oak tree orange orchid otter palm tree "
    "pear pickup truck pine tree plain plate poppy porcupine possum rabbit raccoon ray road rocket "
    "rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe "
    "whale willow tree wolf woman worm"
).split(" ")


def benchmark_classnames(count: int) -> list[str]:
    """`count` distinct class names; beyond the list, numbered variants keep them distinct."""
    return [
        CLASSNAMES[i] if i < len(CLASSNAMES) else f"{CLASSNAMES[i % len(CLASSNAMES)]} {i // len(CLASSNAMES)}"
        for i in range(count)
    ]


# --- FLOPs counted from the graph ------------------------------------------------------------------


@dataclass(frozen=True)
class TextGraphCost:
    """Multiply-accumulates of the text graph, read from its weight shapes.

    Weight GEMMs upstream of the EOT gather run once per token, those downstream (the text
    projection) once per prompt; attention adds QK^T and AV, 2*L^2*d per layer.
    """

    per_token_macs: int
    per_prompt_macs: int
    layers: int
    width: int

    def macs(self, prompts: int, length: int) -> int:
        per_prompt = (
            length * self.per_token_macs
            + self.layers * 2 * length * length * self.width
            + self.per_prompt_macs
        )
        return prompts * per_prompt

    def flops(self, prompts: int, length: int) -> int:
        return 2 * self.macs(prompts, length)

    def shared_flops(self, candidates: int, classes: int, prefix: int, suffix: int) -> int:
        """FLOPs of text_shared.onnx: the prefix once per candidate, each class's suffix attending
        to prefix + itself (the same weights, so the same per-token cost)."""
        tokens = candidates * (prefix + classes * suffix)
        attention = self.layers * 2 * self.width * candidates * (
            prefix * prefix + classes * suffix * (prefix + suffix))
        return 2 * (tokens * self.per_token_macs + attention
                    + candidates * classes * self.per_prompt_macs)


_WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "MatMulInteger": 1, "DynamicQuantizeMatMul": 1,
               "MatMulIntegerToFloat": 1, "FusedMatMul": 1, "MatMulNBits": 1}
_PASS_THROUGH = {"Transpose", "Cast", "Identity", "DequantizeLinear", "Reshape", "Squeeze", "Unsqueeze"}


def text_graph_cost(onnx_path: str | Path, *, eot_input: str = "eot_index") -> TextGraphCost:
    """Count the text graph's MACs per token and per prompt from its initializer shapes."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for node in graph.node:  # weights may also sit in Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    producer = {out: node for node in graph.node for out in node.output}
    per_prompt_tensors = _downstream(graph, eot_input)

    def weight_shape(name: str) -> tuple[int, ...] | None:
        for _ in range(8):
            if name in shapes:
                return shapes[name]
            node = producer.get(name)
            if node is None or node.op_type not in _PASS_THROUGH or not node.input:
                return None
            name = node.input[0]
        return None

    per_token = per_prompt = 0
    for node in graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        shape = weight_shape(node.input[_WEIGHT_OPS[node.op_type]])
        if shape is None or len(shape) != 2:
            continue  # activation x activation (attention) is counted from the formula
        macs = int(shape[0]) * int(shape[1])
        if node.op_type == "MatMulNBits":
            continue
        if node.output[0] in per_prompt_tensors:
            per_prompt += macs
        else:
            per_token += macs
    layers = sum(1 for node in graph.node if node.op_type == "Softmax")
    layers = layers or sum(1 for node in graph.node if node.op_type == "Attention")
    width = _text_width(graph)
    return TextGraphCost(per_token, per_prompt, layers, width)


def _downstream(graph: Any, source: str) -> set[str]:
    """Every tensor whose values depend on `source` (shape-only edges excluded; ONNX order is topological)."""
    reached = {source}
    for node in graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        if any(name in reached for name in node.input):
            reached.update(node.output)
    reached.discard(source)
    return reached


def _text_width(graph: Any) -> int:
    for value in graph.input:
        if value.name == "prompt_embeds":
            dims = value.type.tensor_type.shape.dim
            if dims and dims[-1].dim_value:
                return int(dims[-1].dim_value)
    raise EdgeTuneError("text graph has no prompt_embeds input with a static width",
                        hint="re-export the bundle with `edge-tune export`")


# --- the machine's attainable GEMM rate ------------------------------------------------------------


#: Smallest GEMM probe, in token rows (×width×MLP width); larger runs are probed at their size.
PROBE_MIN_ROWS = 3200


def _gemm_probe_model(rows: int, width: int, hidden: int) -> bytes:
    """One transformer layer's weight GEMMs (q, k, v, out, fc1, fc2) as a bare ONNX graph."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, k: int, n: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), name)

    inits = [weight(n, width, width) for n in ("wq", "wk", "wv", "wo")]
    inits += [weight("w1", width, hidden), weight("w2", hidden, width)]
    nodes = [helper.make_node("MatMul", ["x", w], [f"y_{w}"]) for w in ("wq", "wk", "wv", "wo", "w1")]
    nodes.append(helper.make_node("MatMul", ["y_w1", "w2"], ["y_w2"]))
    outputs = [helper.make_tensor_value_info(f"y_{w}", TensorProto.FLOAT, None)
               for w in ("wq", "wk", "wv", "wo", "w2")]
    graph = helper.make_graph(nodes, "gemm_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def make_gemm_probe(rows: int, width: int, hidden: int, *, threads: int | None
                    ) -> tuple[int, Callable[[], Any], Callable[[], Any]]:
    """(flops, ORT run, numpy run) of one text layer's six weight GEMMs on `rows` token rows."""
    import onnxruntime as ort

    flops = 2 * rows * (4 * width * width + 2 * width * hidden)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(_gemm_probe_model(rows, width, hidden), options,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((width, width)).astype(np.float32) for _ in range(4)]
    w1 = rng.standard_normal((width, hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, width)).astype(np.float32)

    def numpy_layer() -> None:
        for w in ws:
            x @ w
        (x @ w1) @ w2

    return flops, lambda: session.run(None, {"x": x}), numpy_layer


def probe_result(shape: tuple[int, int, int], flops: int, ort_s: float, numpy_s: float) -> dict[str, Any]:
    ort_gflops, numpy_gflops = flops / ort_s / 1e9, flops / numpy_s / 1e9
    return {"shape": list(shape), "gflop": flops / 1e9, "ort_gflops": ort_gflops,
            "numpy_gflops": numpy_gflops, "attainable_gflops": max(ort_gflops, numpy_gflops)}


def gemm_probe(rows: int, width: int, hidden: int, *, threads: int | None, repeats: int = DEFAULT_REPEATS
               ) -> dict[str, Any]:
    """Attainable f32 GEMM rate for the text graph's GEMM shapes, by ORT MatMul and by numpy.

    The same six GEMMs a text layer does on `rows` tokens; the better of the two engines is the
    machine's attainable rate (numpy's BLAS threads follow OPENBLAS_NUM_THREADS/OMP_NUM_THREADS,
    which the speed benchmark's child process sets to `threads`).
    """
    flops, ort_fn, numpy_fn = make_gemm_probe(rows, width, hidden, threads=threads)
    return probe_result((rows, width, hidden), flops, _median_seconds(ort_fn, repeats),
                        _median_seconds(numpy_fn, repeats))


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_seconds(fn: Callable[[], Any], repeats: int, *, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- memory ------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def available_memory_bytes() -> int | None:
    """What a new allocation may use: MemAvailable, capped by RLIMIT_AS when one is set."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(max(0, soft - int(current_rss_mib() * 2**20)))
    except (ImportError, ValueError):
        pass
    return min(limits) if limits else None


# --- speed -------------------------------------------------------------------------------------------


class TimedSession:
    """A text session that adds up the seconds spent inside ORT, to split Python overhead from it."""

    def __init__(self, session: Any):
        self.session = session
        self.seconds = 0.0
        self.runs = 0

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        out = self.session.run(feeds)
        self.seconds += time.perf_counter() - start
        self.runs += 1
        return out


def random_features(count: int, width: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm stand-ins for cached image features (speed does not depend on their values)."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((count, width)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features, np.arange(count, dtype=np.int64) % classes


def estimate_speed_bytes(population: int, classes: int, dim: int, length: int, width: int,
                         rows_per_run: int) -> int:
    """Working memory the speed benchmark needs beyond the loaded session (rough, on the high side).

    Candidates and their contexts in float64, one run's prompt input, and the text graph's
    activations for that run (the objective's own per-prompt estimate).
    """
    from edge_tune.objective import bytes_per_prompt

    candidates = 8 * population * dim * 3
    run = min(population * classes, rows_per_run)
    return candidates + run * (4 * length * width + bytes_per_prompt(length, width))


def check_memory(needed: int, *, population: int, classes: int, per_candidate: int) -> None:
    """Refuse, before allocating, a population that cannot fit in the memory this process may use."""
    available = available_memory_bytes()
    if available is None or needed <= 0.8 * available:
        return
    fits = max(0, int((0.8 * available - (needed - per_candidate * population)) // max(1, per_candidate)))
    raise EdgeTuneError(
        f"a population of {population} x {classes} classes needs about {needed / 2**30:.1f} GiB, "
        f"but only {available / 2**30:.1f} GiB is available here",
        hint=f"lower --population (at most about {fits} fits) or --classes")


def run_speed(bundle_path: str | Path, *, classes: int = 10, population: int = 40, provider: str = "auto",
              threads: int | None = None, repeats: int = DEFAULT_REPEATS, dim: int = 512,
              shots: int = 16) -> dict[str, Any]:
    """The ONNX speed figures for one bundle, measured in this process (`bench_speed` runs it in a
    child and adds the PyTorch reference from another)."""
    from edge_tune.bundle import open_bundle
    from edge_tune.objective import PromptObjective
    from edge_tune.prompts import PromptSpace

    if population < 1 or classes < 2:
        raise EdgeTuneError(f"population {population} and classes {classes} are too small",
                            hint="use --population >= 1 and --classes >= 2")
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    bundle = open_bundle(bundle_path)
    space = PromptSpace.build(bundle, benchmark_classnames(classes), dim=dim, seed=0)
    length, width = space.length, space.text_width
    from edge_tune.objective import rows_per_run

    run_rows = rows_per_run(length, width)
    check_memory(estimate_speed_bytes(population, classes, space.dim, length, width, run_rows),
                 population=population, classes=classes, per_candidate=8 * space.dim * 3)

    session = bundle.text_session(provider=provider, threads=threads)
    timed = TimedSession(session)
    features, labels = random_features(shots * classes, int(bundle.projection_dim), classes)
    objective = PromptObjective(timed, space, features, labels, logit_scale=bundle.logit_scale)
    W = np.random.default_rng(1).standard_normal((population, space.dim)) * 0.01

    # The ONNX paths and the GEMM probe, timed round-robin (one repetition of each in turn) so that
    # a change in the machine's load shifts all of them alike and their ratios stay meaningful.
    # (PyTorch runs in a process of its own: beside ORT's thread pool its OpenMP threads slow down
    # several-fold on a small machine, which would flatter edge-tune.)
    # (1) edge-tune's objective: truncated to max(EOT)+1, population x classes in fixed-size runs.
    losses = objective(W)  # also the warm-up (arena, prepacking)
    # (1b) the same through text_shared.onnx, when the bundle has it (not `--no-shared-prefix`)
    shared = None
    if bundle.has_graph("text_shared"):
        shared = PromptObjective(bundle.objective_session(provider=provider, threads=threads), space,
                                 features, labels, logit_scale=bundle.logit_scale)
        shared_losses = shared(W)
    # (2) ONNX the reference way: 77 tokens, one candidate (K prompts) per run.
    full = space.padded(min(77, space.context_length))
    eot = space.eot_index.astype(np.int64)

    def naive_candidate() -> None:
        session.run({"prompt_embeds": full.embeddings(W[:1]), "eot_index": eot})

    naive_candidate()
    cost = text_graph_cost(Path(bundle.path) / bundle.manifest["graphs"]["text"]["file"])
    hidden = mlp_width(cost)
    size, runs = _chunk(population * classes, run_rows)
    # At least PROBE_MIN_ROWS token rows: a probe only as large as one run (800 rows on ViT-B/16)
    # read below the objective's own rate, i.e. it was not the machine's ceiling (docs/bench.md).
    probe_shape = (max(size * length, PROBE_MIN_ROWS), width, hidden)
    probe_flops, probe_ort, probe_numpy = make_gemm_probe(*probe_shape, threads=threads)
    probe_ort(), probe_numpy()
    calls, ort_seconds, naive_times, probe_times, shared_times = [], [], [], [], []
    for _ in range(repeats):
        if shared is not None:
            with limit_blas_threads(1):
                shared_times.append(_seconds(lambda: shared(W)))
        timed.seconds = 0.0
        with limit_blas_threads(1):  # as in a fit (Tuner.run)
            start = time.perf_counter()
            objective(W)
            calls.append(time.perf_counter() - start)
        ort_seconds.append(timed.seconds)
        naive_times.append(_seconds(naive_candidate))
        probe_times.append((_seconds(probe_ort), _seconds(probe_numpy)))
    call_s, naive_s = statistics.median(calls), statistics.median(naive_times)
    overhead = statistics.median([(c - o) / c for c, o in zip(calls, ort_seconds)])
    # Optimiser ask/tell per step (the rest of a step's Python work), at this population.
    with limit_blas_threads(1):
        ask_tell_s = _ask_tell_seconds(space.dim, population, repeats)

    probe = probe_result(probe_shape, probe_flops, statistics.median(t[0] for t in probe_times),
                         statistics.median(t[1] for t in probe_times))
    objective_flops = cost.flops(runs * size, length)  # padding rows are computed too
    naive_flops = cost.flops(classes, full.length)

    rows = {
        "objective": _speed_row(population / call_s, population * classes / call_s, call_s,
                                objective_flops, note=f"L={length}, {runs} run(s) of {size} prompts"),
        "onnx_naive": _speed_row(1 / naive_s, classes / naive_s, naive_s, naive_flops,
                                 note=f"L={full.length}, 1 candidate ({classes} prompts) per run"),
    }
    if shared is not None:
        shared_s = statistics.median(shared_times)
        suffix = space.length - space.prefix_length
        class_size, class_runs, size_c, runs_c = shared.shared_plan(population)
        rows["objective_shared"] = _speed_row(
            population / shared_s, population * classes / shared_s, shared_s,
            cost.shared_flops(runs_c * size_c * class_runs, class_size, space.prefix_length, suffix),
            note=f"P={space.prefix_length} + S={suffix}, {runs_c * class_runs} run(s) of {size_c} "
                 f"candidates x {class_size} classes; "
                 f"loss vs text.onnx {float(np.max(np.abs(shared_losses - losses))):.1e}")
    attainable = probe["attainable_gflops"]
    for row in rows.values():
        row["fraction_of_gemm"] = row["gflops"] / attainable
    ratios = {"objective_vs_onnx_naive": rows["objective"]["queries_per_s"]
              / rows["onnx_naive"]["queries_per_s"],
              "objective_fraction_of_gemm": rows["objective"]["fraction_of_gemm"]}
    if shared is not None:
        ratios["shared_vs_objective"] = (rows["objective_shared"]["queries_per_s"]
                                         / rows["objective"]["queries_per_s"])
    step_s = call_s + (ask_tell_s or 0.0)
    return {
        "bundle": str(bundle.path), "model": bundle.manifest.get("model", {}).get("name"),
        "quantization": (bundle.manifest.get("quantization") or {}).get("mode", "fp32"),
        "population": population, "classes": classes, "dim": space.dim, "length": length,
        "provider": getattr(session, "providers", [provider])[0] if getattr(session, "providers", None)
        else provider, "threads": threads, "repeats": repeats,
        "rows": rows, "gemm_probe": probe, "ratios": ratios, "objective_loss_w0": float(losses[0]),
        "naive_gflop_per_candidate": naive_flops / 1e9, "reference_length": full.length,
        "text_graph": {"per_token_macs": cost.per_token_macs, "per_prompt_macs": cost.per_prompt_macs,
                       "layers": cost.layers, "width": cost.width, "mlp_width": hidden},
        "python_overhead": {"objective_fraction": overhead, "ask_tell_s": ask_tell_s,
                            "step_s": step_s,
                            "step_fraction": ((ask_tell_s or 0.0) + overhead * call_s) / step_s},
        "load": {"start": load_start, "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
    }


def _chunk(total: int, max_rows: int) -> tuple[int, int]:
    from edge_tune.objective import chunk_plan

    return chunk_plan(total, max_rows)


def mlp_width(cost: TextGraphCost) -> int:
    """The MLP width from per-token MACs: each layer does 4·D² (q, k, v, out) + 2·D·H."""
    per_layer = cost.per_token_macs / max(1, cost.layers)
    return max(1, int(round((per_layer - 4 * cost.width ** 2) / (2 * cost.width))))


def _speed_row(queries_per_s: float, prompts_per_s: float, seconds: float, flops: float, *, note: str
               ) -> dict[str, Any]:
    return {"status": "ok", "queries_per_s": queries_per_s, "prompts_per_s": prompts_per_s,
            "seconds_per_measure": seconds, "gflop_per_measure": flops / 1e9,
            "gflops": flops / seconds / 1e9, "note": note}


def _ask_tell_seconds(dim: int, population: int, repeats: int) -> float | None:
    """Mean seconds of one optimiser ask + tell (CMA-ES at this population), no objective.

    A mean over whole eigendecomposition cycles, not a median: CMA-ES refreshes B and D every
    `eigen_gap` generations (12 at d = 512, λ = 40), and that `eigh` is most of its cost, which a
    median of a few steps would leave out.
    """
    try:
        from edge_tune.optim import make_optimizer
        from edge_tune.optim.cma import constants
    except ImportError:
        return None
    try:
        optimizer = make_optimizer("cma", dim, seed=0, population_size=max(2, population))
    except (TypeError, EdgeTuneError):
        optimizer = make_optimizer("cma", dim, seed=0)
    state = optimizer.init(np.zeros(dim))
    gap = math.ceil(constants(dim, optimizer.config.population_size, optimizer.config.active,
                              optimizer.config.diagonal).eigen_gap)
    rng = np.random.default_rng(0)
    steps = max(repeats, 2 * gap)

    def one_step() -> None:
        nonlocal state
        candidates = optimizer.ask(state)
        state, _ = optimizer.tell(state, rng.random(len(candidates)))

    one_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - start) / steps


def reference_speed(bundle_path: str | Path, *, classes: int, population: int, threads: int | None,
                    repeats: int, dim: int = 512, shots: int = 16, **_: Any) -> dict[str, Any]:
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
    reference = EagerReference(bundle_path, space, features, labels, logit_scale=bundle.logit_scale,
                               threads=threads)
    loss = float(reference.losses(W[:1])[0])
    seconds = _median_seconds(lambda: reference.losses(W[:1]), repeats, warmup=0)
    return {"status": "ok", "seconds_per_candidate": seconds, "weights": reference.weights,
            "loss_w0": loss, "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def add_reference(report: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Put the PyTorch-eager row and its ratios into a `run_speed` report."""
    rows, ratios = report["rows"], report["ratios"]
    if reference.get("status") != "ok":
        rows["pytorch_eager"] = {"status": reference.get("status", NOT_INSTALLED)}
        return report
    seconds, classes = reference["seconds_per_candidate"], report["classes"]
    flops = report["naive_gflop_per_candidate"] * 1e9
    row = _speed_row(1 / seconds, classes / seconds, seconds, flops,
                     note=f"L={report['reference_length']}, 1 candidate per call, own process "
                          f"(load {_fmt(reference.get('load'), '.2f')}), weights: {reference['weights']}")
    row["fraction_of_gemm"] = row["gflops"] / report["gemm_probe"]["attainable_gflops"]
    row["loss_diff_vs_objective"] = abs(reference["loss_w0"] - report["objective_loss_w0"])
    rows["pytorch_eager"] = row
    ratios["objective_vs_pytorch_eager"] = rows["objective"]["queries_per_s"] / row["queries_per_s"]
    ratios["onnx_naive_vs_pytorch_eager"] = rows["onnx_naive"]["queries_per_s"] / row["queries_per_s"]
    if "objective_shared" in rows:
        ratios["shared_vs_pytorch_eager"] = rows["objective_shared"]["queries_per_s"] / row["queries_per_s"]
    return report


# --- memory ------------------------------------------------------------------------------------------

MEMORY_CASES = ("baseline", "text_inference", "image_inference", "inference", "fit_cold", "fit_warm",
                "pytorch_first_order")


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux >= 4.0), so a phase's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_synthetic_shots(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """A shots folder of seeded noise PNGs (memory does not depend on what the photos show)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(benchmark_classnames(classes)):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def memory_case(case: str, bundle_path: str, *, classes: int, population: int, provider: str,
                threads: int | None, steps: int, work_dir: str) -> dict[str, Any]:
    """One memory measurement, meant to run alone in a fresh process; returns its peak RSS (MiB)."""
    result: dict[str, Any] = {"case": case}
    import onnxruntime  # noqa: F401  (part of every case's baseline)

    from edge_tune.bundle import open_bundle

    bundle = open_bundle(bundle_path)
    if case == "baseline":
        pass
    elif case in ("text_inference", "inference"):
        from edge_tune.objective import PromptObjective
        from edge_tune.prompts import PromptSpace

        space = PromptSpace.build(bundle, benchmark_classnames(classes), seed=0)
        features, labels = random_features(4 * classes, int(bundle.projection_dim), classes)
        objective = PromptObjective(bundle.objective_session(provider=provider, threads=threads), space,
                                    features, labels, logit_scale=bundle.logit_scale)
        W = np.random.default_rng(1).standard_normal((population, space.dim)) * 0.01
        for _ in range(steps):
            objective(W)
        result["text_runs_per_call"] = objective.text_runs // max(1, steps)
    if case in ("image_inference", "inference"):
        from edge_tune.features import DEFAULT_BATCH_SIZE

        size = int(bundle.manifest["dims"]["image_size"])
        image = bundle.image_session(provider=provider, threads=threads)
        pixels = np.random.default_rng(0).standard_normal((DEFAULT_BATCH_SIZE, 3, size, size)
                                                          ).astype(np.float32)
        image.run({"pixel_values": pixels})
    if case in ("fit_cold", "fit_warm"):
        from edge_tune.fit import FitConfig, Tuner

        shots = Path(work_dir) / "shots"
        cache = Path(work_dir) / "cache"
        tuner = Tuner(bundle, shots, config=FitConfig(budget_queries=None), provider=provider,
                      threads=threads, cache_dir=cache)
        result["after_setup_mib"] = peak_rss_mib()
        result["rss_after_setup_mib"] = current_rss_mib()
        reset_peak_rss()
        for _ in range(steps):
            tuner.step()
        result["loop_peak_mib"] = peak_rss_mib()
        result["queries"] = tuner.state.queries
        result["peak_mib"] = max(result["after_setup_mib"], result["loop_peak_mib"])
    if case == "pytorch_first_order":
        try:
            import torch  # noqa: F401
            from edge_tune_export.reference import first_order_tune
        except ImportError:
            return {"case": case, "status": NOT_INSTALLED}
        from edge_tune.prompts import PromptSpace

        space = PromptSpace.build(bundle, benchmark_classnames(classes), seed=0)
        features, labels = random_features(16 * classes, int(bundle.projection_dim), classes)
        run = first_order_tune(bundle_path, space, features, labels, logit_scale=bundle.logit_scale,
                               steps=steps, threads=threads)
        result["seconds_per_step"] = run["seconds_per_step"]
        result["weights"] = run["weights"]
        result["losses"] = run["losses"]
    result.setdefault("peak_mib", peak_rss_mib())
    result["status"] = "ok"
    return result


def bench_memory(bundle_path: str | Path, *, classes: int = 10, population: int = 40,
                 provider: str = "auto", threads: int | None = None, steps: int = 3,
                 cases: tuple[str, ...] = MEMORY_CASES, reference: bool = True,
                 timeout: float = 1800) -> dict[str, Any]:
    """Peak RSS of each case, each in a fresh process, with ratios to the text-inference case."""
    import tempfile

    from edge_tune.bundle import open_bundle
    from edge_tune.providers import resolve_provider

    bundle = open_bundle(bundle_path)  # a bad bundle fails here, once, with its own message
    resolve_provider(provider)  # and a provider this onnxruntime lacks, before any child starts
    if not reference:
        cases = tuple(c for c in cases if c != "pytorch_first_order")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edge-tune-bench-") as work:
        if any(c.startswith("fit") for c in cases):
            make_synthetic_shots(Path(work) / "shots", classes, 4, int(bundle.manifest["dims"]["image_size"]))
        for case in cases:  # fit_cold fills the feature cache that fit_warm then reads
            args = {"case": case, "bundle_path": str(bundle_path), "classes": classes,
                    "population": population, "provider": provider, "threads": threads,
                    "steps": steps, "work_dir": work}
            results[case] = run_child("memory", args, threads=threads, timeout=timeout)
    text = results.get("text_inference", {}).get("peak_mib")
    ratios = {}
    for case, row in results.items():
        if text and row.get("peak_mib"):
            row["vs_text_inference"] = row["peak_mib"] / text
    if text:
        for case in ("fit_warm", "fit_cold", "pytorch_first_order"):
            if results.get(case, {}).get("peak_mib"):
                ratios[f"{case}_vs_text_inference"] = results[case]["peak_mib"] / text
    if results.get("pytorch_first_order", {}).get("peak_mib") and results.get("fit_warm", {}).get("peak_mib"):
        ratios["pytorch_first_order_vs_fit_warm"] = (results["pytorch_first_order"]["peak_mib"]
                                                     / results["fit_warm"]["peak_mib"])
    return {"bundle": str(bundle_path), "model": bundle.manifest.get("model", {}).get("name"),
            "quantization": (bundle.manifest.get("quantization") or {}).get("mode", "fp32"),
            "classes": classes, "population": population, "steps": steps, "cases": results,
            "ratios": ratios, "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


# --- experiments: session options and run sizes (measured here, proposed for providers/objective) --

SESSION_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_prepacking": {"config": {"session.disable_prepacking": "1"}},
    "no_arena": {"enable_cpu_mem_arena": False},
    "no_prepacking_no_arena": {"config": {"session.disable_prepacking": "1"}, "enable_cpu_mem_arena": False},
    "no_spinning": {"config": {"session.intra_op.allow_spinning": "0"}},
    "extended_opt": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
}


class _PlainSession:
    """An ORT CPU session with explicit options, behind the `Session.run(feeds) -> output` contract."""

    def __init__(self, path: Path, variant: dict[str, Any], threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        for key, value in variant.get("config", {}).items():
            options.add_session_config_entry(key, value)
        if "enable_cpu_mem_arena" in variant:
            options.enable_cpu_mem_arena = variant["enable_cpu_mem_arena"]
        if "graph_optimization_level" in variant:
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                       variant["graph_optimization_level"])
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]


def experiment_case(bundle_path: str, variant: str, *, classes: int, population: int,
                    threads: int | None, max_prompts: int, repeats: int, calls: int = 3) -> dict[str, Any]:
    """Time and peak RSS of the objective with one session variant and one run size (fresh process)."""
    from edge_tune.bundle import open_bundle
    from edge_tune.objective import PromptObjective
    from edge_tune.prompts import PromptSpace

    bundle = open_bundle(bundle_path)
    space = PromptSpace.build(bundle, benchmark_classnames(classes), seed=0)
    features, labels = random_features(16 * classes, int(bundle.projection_dim), classes)
    before = current_rss_mib()
    session = _PlainSession(Path(bundle.path) / "text.onnx", SESSION_VARIANTS[variant], threads)
    loaded = current_rss_mib()
    objective = PromptObjective(session, space, features, labels, logit_scale=bundle.logit_scale,
                                max_prompts_per_run=max_prompts)
    W = np.random.default_rng(1).standard_normal((population, space.dim)) * 0.01
    seconds = _median_seconds(lambda: objective(W), repeats)
    return {"variant": variant, "max_prompts": max_prompts, "rows_per_run": objective.max_rows,
            "seconds_per_call": seconds, "queries_per_s": population / seconds,
            "rss_before_session_mib": before, "rss_after_load_mib": loaded,
            "rss_after_runs_mib": current_rss_mib(), "peak_mib": peak_rss_mib(), "status": "ok"}


def run_experiments(bundle_path: str | Path, *, classes: int = 10, population: int = 40,
                    threads: int | None = None, repeats: int = DEFAULT_REPEATS,
                    variants: tuple[str, ...] = tuple(SESSION_VARIANTS),
                    run_sizes: tuple[int, ...] = (4096,)) -> list[dict[str, Any]]:
    """Every (variant, run size) in its own fresh process."""
    rows = []
    for variant in variants:
        for size in run_sizes:
            args = {"bundle_path": str(bundle_path), "variant": variant, "classes": classes,
                    "population": population, "threads": threads, "max_prompts": size,
                    "repeats": repeats}
            rows.append(run_child("experiment", args, threads=threads, timeout=1800))
    return rows


# --- child processes ---------------------------------------------------------------------------------


def child_env(threads: int | None) -> dict[str, str]:
    """The child's environment: BLAS/OpenMP threads pinned to `threads`, so numpy's GEMM probe and
    torch get the same cores as ORT (the loop's own numpy runs at one BLAS thread inside, as in a
    fit: `edge_tune.blas`)."""
    env = dict(os.environ)
    if threads:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def run_child(kind: str, args: dict[str, Any], *, threads: int | None, timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, "-m", "edge_tune.bench", kind, json.dumps(args)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=child_env(threads),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeTuneError(f"the {kind} measurement {args.get('case', '')} ran longer than {timeout:.0f}s",
                            hint="lower --population or --classes") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
        if "error" in result:
            raise EdgeTuneError(result["error"])
        if done.returncode == 0:
            return result
    if done.returncode in (-9, 137):
        raise EdgeTuneError(f"the {kind} measurement {args.get('case', '')} was killed (out of memory?)",
                            hint="lower --population or --classes")
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise EdgeTuneError(f"the {kind} measurement {args.get('case', '')} failed: {tail}")


def bench_speed(bundle_path: str | Path, *, classes: int = 10, population: int = 40,
                provider: str = "auto", threads: int | None = None, repeats: int = DEFAULT_REPEATS,
                reference: bool = True, timeout: float = 1800) -> dict[str, Any]:
    """`run_speed` in one fresh process, so every engine in it gets the same thread count."""
    from edge_tune.bundle import open_bundle
    from edge_tune.providers import resolve_provider

    open_bundle(bundle_path)  # a bad bundle fails here, with its own message
    resolve_provider(provider)  # and a provider this onnxruntime lacks
    args = {"bundle_path": str(bundle_path), "classes": classes, "population": population,
            "provider": provider, "threads": threads, "repeats": repeats}
    report = run_child("speed", args, threads=threads, timeout=timeout)
    measured = (run_child("reference", args, threads=threads, timeout=timeout) if reference
                else {"status": "skipped (--no-reference)"})
    return add_reference(report, measured)


def _child_main(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    try:
        if kind == "speed":
            result = run_speed(**args)
        elif kind == "reference":
            result = reference_speed(**args)
        elif kind == "memory":
            result = memory_case(**args)
        elif kind == "experiment":
            result = experiment_case(**args)
        else:
            raise EdgeTuneError(f"unknown benchmark {kind!r}")
    except EdgeTuneError as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps(result))
    return 0


# --- tables ------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".1f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def speed_table(report: dict[str, Any]) -> str:
    """The speed report as a Markdown table a person can paste into an issue."""
    rows = report["rows"]
    title = (f"edge-tune bench speed: {report['model']} ({report['quantization']}), population "
             f"{report['population']} x {report['classes']} classes, d={report['dim']}, "
             f"provider {report['provider']}, threads {report['threads'] or 'default'}, "
             f"median of {report['repeats']}, load {_fmt(report['load']['start'], '.2f')}")
    lines = [title, "",
             "| path | queries/s | prompts/s | GFLOP/query | GFLOP/s | % of GEMM probe | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    names = {"objective": "edge-tune objective (ONNX, truncated, batched)",
             "objective_shared": "edge-tune objective, shared prefix (text_shared.onnx)",
             "onnx_naive": "ONNX, 77 tokens, one candidate per run",
             "pytorch_eager": "PyTorch eager reference (77 tokens, one candidate per call)"}
    for key, name in names.items():
        if key not in rows:
            continue
        row = rows[key]
        if row.get("status") != "ok":
            lines.append(f"| {name} | {row.get('status')} | {row.get('status')} | | | | |")
            continue
        per_query = row["gflop_per_measure"] / (row["queries_per_s"] * row["seconds_per_measure"])
        lines.append(f"| {name} | {_fmt(row['queries_per_s'], '.2f')} | {_fmt(row['prompts_per_s'], '.1f')} "
                     f"| {_fmt(per_query, '.2f')} | {_fmt(row['gflops'])} "
                     f"| {_fmt(100 * row['fraction_of_gemm'])}% | {row['note']} |")
    probe = report["gemm_probe"]
    lines.append(f"| GEMM probe {probe['shape'][0]}x{probe['shape'][1]}x{probe['shape'][2]} "
                 f"(ORT / numpy) | | | | {_fmt(probe['ort_gflops'])} / {_fmt(probe['numpy_gflops'])} "
                 f"| 100% | one layer's six weight GEMMs |")
    ratios = report["ratios"]
    overhead = report["python_overhead"]
    lines += ["",
              "- objective vs PyTorch eager: "
              + (f"{ratios['objective_vs_pytorch_eager']:.1f}x queries/s"
                 if "objective_vs_pytorch_eager" in ratios else str(rows["pytorch_eager"].get("status")))
              + ("" if "objective_vs_pytorch_eager" not in ratios else
                 f" (ONNX alone, same 77-token work: {ratios['onnx_naive_vs_pytorch_eager']:.2f}x)"),
              f"- objective vs ONNX without truncation/batching: {ratios['objective_vs_onnx_naive']:.1f}x",
              f"- objective at {100 * ratios['objective_fraction_of_gemm']:.0f}% of the GEMM probe",
              *([f"- shared prefix (text_shared.onnx) vs the text.onnx objective: "
                 f"{ratios['shared_vs_objective']:.2f}x queries/s"
                 + (f"; vs PyTorch eager: {ratios['shared_vs_pytorch_eager']:.1f}x"
                    if "shared_vs_pytorch_eager" in ratios else "")]
                if "shared_vs_objective" in ratios else []),
              f"- Python overhead (all but ORT runs): {100 * overhead['objective_fraction']:.1f}% of an "
              f"objective call; " + (
                  "optimiser not available" if overhead["ask_tell_s"] is None else
                  f"{100 * overhead['step_fraction']:.1f}% of a step with CMA-ES ask/tell "
                  f"({1000 * overhead['ask_tell_s']:.1f} ms)")]
    torch_row = rows["pytorch_eager"]
    if "loss_diff_vs_objective" in torch_row:
        lines.append(f"- reference loss vs objective loss (same candidate): "
                     f"|diff| = {torch_row['loss_diff_vs_objective']:.2e}")
    return "\n".join(lines)


def memory_table(report: dict[str, Any]) -> str:
    """The memory report as a Markdown table."""
    names = {"baseline": "Python + numpy + onnxruntime + bundle opened",
             "text_inference": "text session, objective calls",
             "image_inference": "image session, one batch",
             "inference": "text + image sessions",
             "fit_cold": "fit, feature cache empty (image graph in-process)",
             "fit_warm": "fit, feature cache filled (no image session)",
             "pytorch_first_order": "PyTorch first-order prompt tuning (autograd, 77 tokens)"}
    lines = [f"edge-tune bench memory: {report['model']} ({report['quantization']}), "
             f"{report['classes']} classes, population {report['population']}, {report['steps']} steps, "
             f"load {_fmt(report['load'], '.2f')}", "",
             "| case | peak RSS (MiB) | vs text inference | note |", "|---|---:|---:|---|"]
    for case, row in report["cases"].items():
        name = names.get(case, case)
        if row.get("status") != "ok":
            lines.append(f"| {name} | {row.get('status')} | | |")
            continue
        note = ""
        if "loop_peak_mib" in row:
            note = (f"setup peak {row['after_setup_mib']:.0f}, RSS after setup "
                    f"{row['rss_after_setup_mib']:.0f}, loop peak {row['loop_peak_mib']:.0f}; "
                    f"{row['queries'] // max(1, report['steps'])} candidates/step")
        elif "seconds_per_step" in row:
            note = f"{row['seconds_per_step']:.2f} s/step, weights: {row['weights']}"
        lines.append(f"| {name} | {row['peak_mib']:.0f} | {_fmt(row.get('vs_text_inference', ''), '.2f')} "
                     f"| {note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
