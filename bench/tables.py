"""The speed and memory reports as Markdown tables a person can paste into an issue."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, spec: str = ".1f") -> str:
    """`value` formatted with `spec` when it is a number, else as text (a status, None)."""
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


SPEED_ROWS = {
    "objective": "edge-tune objective (ONNX, truncated, batched)",
    "objective_shared": "edge-tune objective, shared prefix (text_shared.onnx)",
    "fit_one_group": "fit's graph, every class at the longest length (no length groups)",
    "fit_intra_op": "fit's graph, one worker on ORT's intra-op threads",
    "onnx_naive": "ONNX, 77 tokens, one candidate per run",
    "pytorch_eager": "PyTorch eager reference (77 tokens, one candidate per call)",
}


def speed_table(report: dict[str, Any]) -> str:
    """The speed report (`bench_speed`) as Markdown: one row per path, the probe, the ratios."""
    rows = report["rows"]
    title = (
        f"edge-tune bench speed: {report['model']} ({report['quantization']}), population "
        f"{report['population']} x {report['classes']} classes, d={report['dim']}, "
        f"provider {report['provider']}, threads {report['threads'] or 'default'}, "
        f"median of {report['repeats']}, load {fmt(report['load']['start'], '.2f')}"
    )
    cpu = report.get("cpu") or {}
    probes = ", ".join(
        f"{p['shape'][0]} rows x{p.get('workers', 1)} {fmt(p['attainable_gflops'])}"
        for p in report.get("gemm_probes", [])
    )
    lines = [
        title,
        "",
        f"CPU: {cpu.get('model', 'unknown')} ({cpu.get('isa', 'unknown')}, {cpu.get('cores')} "
        f"logical cores); text-graph workers: {report.get('workers', 1)}; GEMM probe GFLOP/s by "
        f"shape and workers: {probes or 'one shape'}",
        "",
        "| path | queries/s | prompts/s | GFLOP/query | GFLOP/s | % of GEMM probe | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, name in SPEED_ROWS.items():
        if key not in rows:
            continue
        row = rows[key]
        if row.get("status") != "ok":
            lines.append(f"| {name} | {row.get('status')} | {row.get('status')} | | | | |")
            continue
        per_query = row["gflop_per_measure"] / (row["queries_per_s"] * row["seconds_per_measure"])
        lines.append(
            f"| {name} | {fmt(row['queries_per_s'], '.2f')} "
            f"| {fmt(row['prompts_per_s'], '.1f')} "
            f"| {fmt(per_query, '.2f')} | {fmt(row['gflops'])} "
            f"| {fmt(100 * row['fraction_of_gemm'])}% | {row['note']} |"
        )
    probe = report["gemm_probe"]
    lines.append(
        f"| GEMM probe {probe['shape'][0]}x{probe['shape'][1]}x{probe['shape'][2]} "
        f"(ORT / numpy) | | | | {fmt(probe['ort_gflops'])} / {fmt(probe['numpy_gflops'])} "
        f"| 100% | one layer's six weight GEMMs, {probe.get('workers', 1)} worker(s) at once |"
    )
    ratios = report["ratios"]
    overhead = report["python_overhead"]
    call = f"{100 * overhead['objective_fraction']:.1f}% via text.onnx"
    if "objective_shared_fraction" in overhead:
        call += f", {100 * overhead['objective_shared_fraction']:.1f}% via text_shared.onnx"
    fit_step = overhead["fit_step"]
    phases = "; ".join(
        f"{phase} {100 * p['outside_ort_fraction']:.1f}% ({p['queries_per_step']:g} queries, "
        f"{1000 * p['step_s']:.1f} ms/step, mean of {p['steps']})"
        for phase, p in fit_step["phases"].items()
    )
    lines += [
        "",
        "- objective vs PyTorch eager: "
        + (
            f"{ratios['objective_vs_pytorch_eager']:.1f}x queries/s (ONNX alone, same "
            f"77-token work: {ratios['onnx_naive_vs_pytorch_eager']:.2f}x)"
            if "objective_vs_pytorch_eager" in ratios
            else str(rows["pytorch_eager"].get("status"))
        ),
        (
            "- objective vs ONNX without truncation/batching: "
            f"{ratios['objective_vs_onnx_naive']:.1f}x"
        ),
        f"- objective at {100 * ratios['objective_fraction_of_gemm']:.0f}% of the best GEMM probe"
        + (
            f"; fit's objective at {100 * ratios['fit_fraction_of_gemm']:.0f}%"
            if "fit_fraction_of_gemm" in ratios
            else ""
        ),
        *(
            [
                f"- length groups vs every class at the longest length: {ratios['length_groups_gain']:.2f}x"
            ]
            if "length_groups_gain" in ratios
            else []
        ),
        *(
            [
                f"- {report.get('workers')} worker threads vs ORT's own {report.get('workers')} "
                f"intra-op threads: {ratios['workers_gain']:.2f}x"
            ]
            if "workers_gain" in ratios
            else []
        ),
        *(
            [
                f"- shared prefix (text_shared.onnx) vs the text.onnx objective: "
                f"{ratios['shared_vs_objective']:.2f}x queries/s"
                + (
                    f"; vs PyTorch eager: {ratios['shared_vs_pytorch_eager']:.1f}x"
                    if "shared_vs_pytorch_eager" in ratios
                    else ""
                )
            ]
            if "shared_vs_objective" in ratios
            else []
        ),
        f"- Python overhead (all but ORT runs) of an objective call: {call}",
        (
            f"- Python overhead of a fit step ({fit_step['note']}; ask, objective, tell), "
            f"per phase: {phases}"
        ),
    ]
    torch_row = rows["pytorch_eager"]
    if "loss_diff_vs_objective" in torch_row:
        lines.append(
            f"- reference loss vs objective loss (same candidate): "
            f"|diff| = {torch_row['loss_diff_vs_objective']:.2e}"
        )
    return "\n".join(lines)


MEMORY_ROWS = {
    "baseline": "Python + numpy + onnxruntime + bundle opened",
    "text_inference": "text session, objective calls",
    "image_inference": "image session, one batch",
    "inference": "text + image sessions",
    "fit_cold": "fit, feature cache empty (image graph in-process)",
    "fit_warm": "fit, feature cache filled (no image session)",
    "pytorch_first_order": "PyTorch first-order prompt tuning (autograd, 77 tokens)",
}


def memory_table(report: dict[str, Any]) -> str:
    """The memory report (`bench_memory`) as Markdown: one row per case, peak RSS in MiB."""
    title = (
        f"edge-tune bench memory: {report['model']} ({report['quantization']}), "
        f"{report['classes']} classes, population {report['population']}, {report['steps']} "
        f"steps, load {fmt(report['load'], '.2f')}"
    )
    lines = [
        title,
        "",
        "| case | peak RSS (MiB) | vs text inference | note |",
        "|---|---:|---:|---|",
    ]
    for case, row in report["cases"].items():
        name = MEMORY_ROWS.get(case, case)
        if row.get("status") != "ok":
            lines.append(f"| {name} | {row.get('status')} | | |")
            continue
        note = ""
        if "loop_peak_mib" in row:
            note = (
                f"setup peak {row['after_setup_mib']:.0f}, RSS after setup "
                f"{row['rss_after_setup_mib']:.0f}, loop peak {row['loop_peak_mib']:.0f}; "
                f"{row['queries'] // max(1, report['steps'])} candidates/step"
            )
        elif "seconds_per_step" in row:
            note = f"{row['seconds_per_step']:.2f} s/step, weights: {row['weights']}"
        ratio = fmt(row.get("vs_text_inference", ""), ".2f")
        lines.append(f"| {name} | {row['peak_mib']:.0f} | {ratio} | {note} |")
    return "\n".join(lines)
