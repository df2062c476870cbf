"""`edge-tune bench memory`: peak RSS of inference, a short fit and PyTorch first-order tuning.

Each case runs in its own fresh process (`edge_tune_bench.process`) and reports its peak resident
set (`edge_tune.memory.peak_rss_mib`), so that one case's arena or imported libraries never
inflate another's figure.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.memory import current_rss_mib, peak_rss_mib
from edge_tune_bench.process import NOT_INSTALLED, reset_peak_rss, run_child
from edge_tune_bench.timing import load_average
from edge_tune_bench.workload import benchmark_classnames, make_synthetic_shots, random_features

MEMORY_CASES = (
    "baseline",
    "text_inference",
    "image_inference",
    "inference",
    "fit_cold",
    "fit_warm",
    "pytorch_first_order",
)


def memory_case(
    case: str,
    bundle_path: str,
    *,
    classes: int,
    population: int,
    provider: str,
    threads: int | None,
    steps: int,
    work_dir: str,
) -> dict[str, Any]:
    """One memory measurement, meant to run alone in a fresh process: {"case", "status",
    "peak_mib", ...the case's own figures} (MiB)."""
    result: dict[str, Any] = {"case": case}
    import onnxruntime  # noqa: F401  (part of every case's baseline)

    from edge_tune.bundle import open_bundle

    bundle = open_bundle(bundle_path)
    if case in ("text_inference", "inference"):
        from edge_tune.encoders import text_encoder
        from edge_tune.objective import PromptObjective
        from edge_tune.prompts import PromptSpace

        space = PromptSpace.build(bundle, benchmark_classnames(classes), seed=0)
        features, labels = random_features(4 * classes, int(bundle.projection_dim), classes)
        encoder = text_encoder(bundle, space, provider=provider, threads=threads)  # fit's encoder
        objective = PromptObjective(encoder, features, labels, logit_scale=bundle.logit_scale)
        W = np.random.default_rng(1).standard_normal((population, space.dim)) * 0.01
        for _ in range(steps):
            objective(W)
        result["text_runs_per_call"] = encoder.text_runs // max(1, steps)
    if case in ("image_inference", "inference"):
        from edge_tune.features import DEFAULT_BATCH_SIZE

        size = int(bundle.manifest["dims"]["image_size"])
        image = bundle.image_session(provider=provider, threads=threads)
        pixels = (
            np.random.default_rng(0)
            .standard_normal((DEFAULT_BATCH_SIZE, 3, size, size))
            .astype(np.float32)
        )
        image.run({"pixel_values": pixels})
    if case in ("fit_cold", "fit_warm"):
        from edge_tune.fit import FitConfig, Tuner

        shots = Path(work_dir) / "shots"
        cache = Path(work_dir) / "cache"
        tuner = Tuner(
            bundle,
            shots,
            config=FitConfig(budget_queries=None),
            provider=provider,
            threads=threads,
            cache_dir=cache,
        )
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
        run = first_order_tune(
            bundle_path,
            space,
            features,
            labels,
            logit_scale=bundle.logit_scale,
            steps=steps,
            threads=threads,
        )
        result["seconds_per_step"] = run["seconds_per_step"]
        result["weights"] = run["weights"]
        result["losses"] = run["losses"]
    result.setdefault("peak_mib", peak_rss_mib())
    result["status"] = "ok"
    return result


def bench_memory(
    bundle_path: str | Path,
    *,
    classes: int = 10,
    population: int = 40,
    provider: str = "auto",
    threads: int | None = None,
    steps: int = 3,
    cases: tuple[str, ...] = MEMORY_CASES,
    reference: bool = True,
    timeout: float = 1800,
) -> dict[str, Any]:
    """The memory report: each case's peak RSS from a fresh process, with ratios to the
    text-inference case (`reference=False` leaves the PyTorch case out)."""
    from edge_tune.bundle import open_bundle
    from edge_tune.providers import resolve_provider

    bundle = open_bundle(bundle_path)  # a bad bundle fails here, once, with its own message
    resolve_provider(provider)  # and a provider this onnxruntime lacks, before any child starts
    if not reference:
        cases = tuple(c for c in cases if c != "pytorch_first_order")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edge-tune-bench-") as work:
        if any(c.startswith("fit") for c in cases):
            size = int(bundle.manifest["dims"]["image_size"])
            make_synthetic_shots(Path(work) / "shots", classes, 4, size)
        for case in cases:  # fit_cold fills the feature cache that fit_warm then reads
            args = {
                "case": case,
                "bundle_path": str(bundle_path),
                "classes": classes,
                "population": population,
                "provider": provider,
                "threads": threads,
                "steps": steps,
                "work_dir": work,
            }
            results[case] = run_child("memory", args, threads=threads, timeout=timeout)
    text = results.get("text_inference", {}).get("peak_mib")
    ratios = {}
    for row in results.values():
        if text and row.get("peak_mib"):
            row["vs_text_inference"] = row["peak_mib"] / text
    if text:
        for case in ("fit_warm", "fit_cold", "pytorch_first_order"):
            if results.get(case, {}).get("peak_mib"):
                ratios[f"{case}_vs_text_inference"] = results[case]["peak_mib"] / text
    torch_peak = results.get("pytorch_first_order", {}).get("peak_mib")
    warm_peak = results.get("fit_warm", {}).get("peak_mib")
    if torch_peak and warm_peak:
        ratios["pytorch_first_order_vs_fit_warm"] = torch_peak / warm_peak
    return {
        "bundle": str(bundle_path),
        "model": bundle.manifest.get("model", {}).get("name"),
        "quantization": (bundle.manifest.get("quantization") or {}).get("mode", "fp32"),
        "classes": classes,
        "population": population,
        "steps": steps,
        "cases": results,
        "ratios": ratios,
        "load": load_average(),
    }
