"""The machine's attainable f32 GEMM rate at the text layer's shapes (ORT MatMul and numpy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Smallest GEMM probe, in token rows (×width×MLP width); larger runs are probed at their size.
PROBE_MIN_ROWS = 3200


#: Instruction sets that set a CPU's GEMM rate, best first, as /proc/cpuinfo spells their flags.
ISA_FLAGS = (
    ("AVX-512", ("avx512f",)),
    ("AVX2/FMA", ("avx2", "fma")),
    ("AVX", ("avx",)),
    ("SSE4.2", ("sse4_2",)),
    ("SVE", ("sve",)),
    ("NEON (ASIMD)", ("asimd",)),
)


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """{"model", "isa", "cores"} of this CPU from /proc/cpuinfo (Linux), the best instruction set
    among ISA_FLAGS that every listed flag names; "unknown" elsewhere."""
    import os
    import platform

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    isa = next((name for name, need in ISA_FLAGS if all(f in flags for f in need)), "unknown")
    model = fields.get("model name") or fields.get("cpu model") or platform.processor()
    return {"model": model or "unknown", "isa": isa, "cores": os.cpu_count()}


def _gemm_probe_model(rows: int, width: int, hidden: int) -> bytes:
    """One transformer layer's weight GEMMs (q, k, v, out, fc1, fc2) as a serialised ONNX graph."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, k: int, n: int) -> Any:
        values = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
        return numpy_helper.from_array(values, name)

    inits = [weight(n, width, width) for n in ("wq", "wk", "wv", "wo")]
    inits += [weight("w1", width, hidden), weight("w2", hidden, width)]
    nodes = [
        helper.make_node("MatMul", ["x", w], [f"y_{w}"]) for w in ("wq", "wk", "wv", "wo", "w1")
    ]
    nodes.append(helper.make_node("MatMul", ["y_w1", "w2"], ["y_w2"]))
    outputs = [
        helper.make_tensor_value_info(f"y_{w}", TensorProto.FLOAT, None)
        for w in ("wq", "wk", "wv", "wo", "w2")
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])
    graph = helper.make_graph(nodes, "gemm_probe", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def make_gemm_probe(
    rows: int, width: int, hidden: int, *, threads: int | None, workers: int = 1
) -> tuple[int, Callable[[], Any], Callable[[], Any]]:
    """(flops, ORT run, numpy run) of one text layer's six weight GEMMs on `rows` token rows.

    The better of the two engines is the machine's attainable rate; numpy's BLAS threads follow
    OPENBLAS_NUM_THREADS/OMP_NUM_THREADS, which the benchmark's child process sets to `threads`
    (`edge_tune_bench.process.child_env`). With workers > 1 the ORT run is the way fit uses the
    cores (`edge_tune.encoders.run_threads`): that many Python threads, each running the layer at
    the same time on one session of 1 intra-op thread; flops count all of them.
    """
    import onnxruntime as ort

    flops = 2 * rows * (4 * width * width + 2 * width * hidden)
    options = ort.SessionOptions()
    if workers > 1:
        options.intra_op_num_threads = 1
    elif threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        _gemm_probe_model(rows, width, hidden), options, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((width, width)).astype(np.float32) for _ in range(4)]
    w1 = rng.standard_normal((width, hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, width)).astype(np.float32)

    def numpy_layer() -> None:
        for w in ws:
            x @ w
        (x @ w1) @ w2

    def ort_layer() -> None:
        session.run(None, {"x": x})

    if workers == 1:
        return flops, ort_layer, numpy_layer
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers)  # lives as long as the probe (the benchmark's child)

    def ort_workers() -> None:
        for future in [pool.submit(ort_layer) for _ in range(workers)]:
            future.result()

    def numpy_workers() -> None:  # numpy's BLAS already uses `threads`; one layer per worker
        for _ in range(workers):
            numpy_layer()

    return flops * workers, ort_workers, numpy_workers


def probe_result(
    shape: tuple[int, int, int], workers: int, flops: int, ort_s: float, numpy_s: float
) -> dict[str, Any]:
    """The probe's report: its shape, workers, GFLOP, both engines' GFLOP/s and the better one
    (attainable)."""
    ort_gflops, numpy_gflops = flops / ort_s / 1e9, flops / numpy_s / 1e9
    return {
        "shape": list(shape),
        "workers": workers,
        "gflop": flops / 1e9,
        "ort_gflops": ort_gflops,
        "numpy_gflops": numpy_gflops,
        "attainable_gflops": max(ort_gflops, numpy_gflops),
    }
