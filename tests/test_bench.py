"""`edge-tune bench speed|memory` (edge_tune_bench) on the tiny bundle: they run, report the
promised fields, agree with the PyTorch reference where both score the same prompt, and refuse
impossible requests clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_tune_bench.graph_cost import mlp_width, text_graph_cost

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle) -> str:
    """The tiny bundle's directory (the fixture may hand over a path or an opened bundle)."""
    return str(getattr(tiny_bundle, "path", tiny_bundle))


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`edge-tune ARGS` in a fresh interpreter (the benchmarks spawn children of their own)."""
    return subprocess.run(
        [sys.executable, "-m", "edge_tune", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env or dict(os.environ),
        timeout=600,
    )


def torch_blocked_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import torch` fails, for this process's children too."""
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_text_graph_cost_counts_every_weight_gemm_of_the_tiny_model(bundle_dir):
    """FLOPs come from the graph: per token the layers' q,k,v,out + MLP weights, per prompt the projection."""
    from edge_tune_export import registry

    config = registry.build_model("tiny-random").config.text_config
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    width, hidden, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    cost = text_graph_cost(Path(bundle_dir) / "text.onnx")
    assert cost.layers == layers
    assert cost.width == width
    assert cost.per_token_macs == layers * (4 * width * width + 2 * width * hidden)
    assert cost.per_prompt_macs == width * manifest["dims"]["projection_dim"]
    assert mlp_width(cost) == hidden
    assert cost.macs(3, 7) == 3 * (
        7 * cost.per_token_macs + layers * 2 * 49 * width + cost.per_prompt_macs
    )


def test_bench_speed_json_has_every_column_and_the_reference_agrees(bundle_dir):
    done = run_cli(
        [
            "bench",
            "speed",
            "--bundle",
            bundle_dir,
            "--classes",
            4,
            "--population",
            6,
            "--repeats",
            2,
            "--threads",
            1,
            "--json",
        ]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = report["rows"]
    for key in ("objective", "onnx_naive", "pytorch_eager"):
        assert rows[key]["status"] == "ok"
        for field in ("queries_per_s", "prompts_per_s", "gflops", "fraction_of_gemm"):
            assert rows[key][field] > 0
        assert rows[key]["prompts_per_s"] == pytest.approx(4 * rows[key]["queries_per_s"])
    # The reference rebuilds the exported model and scores the same candidate: same loss.
    assert rows["pytorch_eager"]["loss_diff_vs_objective"] < 1e-4
    assert report["length"] < 77  # truncated after EOT
    assert set(report["ratios"]) >= {
        "objective_vs_pytorch_eager",
        "objective_vs_onnx_naive",
        "objective_fraction_of_gemm",
    }
    overhead = report["python_overhead"]
    assert 0 <= overhead["objective_fraction"] < 1
    assert 0 <= overhead["objective_shared_fraction"] < 1
    # the fit step is timed as `edge-tune fit` runs it: text_shared.onnx (the tiny bundle has it)
    # and FitConfig's optimiser, each SharpZO phase on its own
    fit_step = overhead["fit_step"]
    assert fit_step["note"] == "text_shared.onnx + sharpzo/edge"
    phases = fit_step["phases"]
    assert set(phases) == {"sa-cma/sample", "sparse-zo/step"}  # edge's stage 2 is dense
    assert phases["sa-cma/sample"]["queries_per_step"] == 20  # λ of the edge preset
    assert phases["sa-cma/sample"]["steps"] >= 26  # a whole CMA-ES eigendecomposition cycle
    assert phases["sparse-zo/step"]["queries_per_step"] == 2
    for phase in phases.values():
        assert 0 <= phase["outside_ort_fraction"] < 1 and phase["step_s"] > phase["ort_s"] > 0
    assert report["gemm_probe"]["attainable_gflops"] > 0


def test_bench_speed_without_torch_marks_the_reference_not_installed(bundle_dir, tmp_path):
    done = run_cli(
        [
            "bench",
            "speed",
            "--bundle",
            bundle_dir,
            "--classes",
            3,
            "--population",
            2,
            "--repeats",
            1,
            "--threads",
            1,
        ],
        env=torch_blocked_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert (
        "| PyTorch eager reference (77 tokens, one candidate per call) | not installed |" in table
    )
    assert "objective vs PyTorch eager: not installed" in table
    assert "| edge-tune objective (ONNX, truncated, batched) |" in table
    assert "- Python overhead of a fit step (text_shared.onnx + sharpzo/edge; " in table


def test_bench_speed_refuses_a_population_that_cannot_fit(bundle_dir):
    done = run_cli(
        ["bench", "speed", "--bundle", bundle_dir, "--population", 10**10, "--no-reference"]
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: a population of 10000000000 x 10 classes needs about ")
    assert "Lower --population (at most about" in lines[0]


def test_bench_memory_json_reports_each_case_from_its_own_process(bundle_dir):
    done = run_cli(
        [
            "bench",
            "memory",
            "--bundle",
            bundle_dir,
            "--classes",
            3,
            "--population",
            4,
            "--steps",
            2,
            "--threads",
            1,
            "--json",
        ]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    cases = report["cases"]
    assert list(cases) == [
        "baseline",
        "text_inference",
        "image_inference",
        "inference",
        "fit_cold",
        "fit_warm",
        "pytorch_first_order",
    ]
    for row in cases.values():
        assert row["status"] == "ok" and row["peak_mib"] > 0
    assert cases["text_inference"]["vs_text_inference"] == pytest.approx(1.0)
    # torch's import alone outweighs the tiny model's sessions
    assert cases["pytorch_first_order"]["peak_mib"] > cases["fit_warm"]["peak_mib"]
    assert cases["fit_warm"]["queries"] > 0
    assert cases["fit_warm"]["loop_peak_mib"] <= cases["fit_warm"]["peak_mib"]
    assert "fit_warm_vs_text_inference" in report["ratios"]


def test_bench_memory_without_torch_still_measures_the_runtime(bundle_dir, tmp_path):
    done = run_cli(
        [
            "bench",
            "memory",
            "--bundle",
            bundle_dir,
            "--classes",
            3,
            "--population",
            2,
            "--steps",
            1,
        ],
        env=torch_blocked_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert (
        "| PyTorch first-order prompt tuning (autograd, 77 tokens) | not installed |" in done.stdout
    )
    assert "| fit, feature cache filled (no image session) |" in done.stdout


@pytest.mark.parametrize("command", ["speed", "memory"])
def test_bench_on_a_provider_this_build_lacks_is_one_line(bundle_dir, command):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the missing-provider path cannot be shown here")
    done = run_cli(
        ["bench", command, "--bundle", bundle_dir, "--provider", "cuda", "--no-reference"]
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        "Error: execution provider 'cuda' is not in this onnxruntime build"
    )
    assert len(done.stderr.strip().splitlines()) == 1


def test_bench_on_a_missing_bundle_is_one_line(tmp_path):
    done = run_cli(["bench", "speed", "--bundle", tmp_path / "nowhere"])
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("Error: ")
    assert "nowhere" in done.stderr


def test_first_order_reference_lowers_the_loss(bundle_dir):
    """The PyTorch first-order path really trains: Adam through autograd on w reduces the loss."""
    from edge_tune.bundle import open_bundle
    from edge_tune.prompts import PromptSpace
    from edge_tune_bench.workload import benchmark_classnames, random_features
    from edge_tune_export.reference import first_order_tune

    bundle = open_bundle(bundle_dir)
    space = PromptSpace.build(bundle, benchmark_classnames(4), seed=0, dim=32)
    features, labels = random_features(16, int(bundle.projection_dim), 4)
    run = first_order_tune(
        bundle_dir,
        space,
        features,
        labels,
        logit_scale=bundle.logit_scale,
        steps=15,
        lr=0.05,
        threads=1,
    )
    assert np.all(np.isfinite(run["losses"]))
    assert run["losses"][-1] < run["losses"][0] - 1e-3


def test_stage2_bench_branches_every_variant_from_one_switch_state(tmp_path, capsys):
    from edge_tune_bench import stage2

    out = tmp_path / "stage2.json"
    variants = ["continue CMA-ES", "sgd η=0.1 (paper rule)", "line-search"]
    argv = ["--tasks", "demo", "--seeds", "0", "--switch", "100", "--at", "300"]
    assert stage2.main([*argv, "--variants", *variants, "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["switch_queries"] == 100 and 0 <= run["mask_mass"] < 1  # the mask keeps half
    starts = {json.dumps(v["points"][0]) for v in run["variants"].values()}
    assert len(starts) == 1  # the same switch state for all
    for name in variants:
        end = run["variants"][name]["points"][-1]
        assert (
            300 <= end["queries"] < 300 + 20
            and end["loss"] <= run["variants"][name]["points"][0]["loss"] + 1e-6
        )
    assert "| line-search |" in capsys.readouterr().out


def test_bench_speed_measures_what_the_run_plan_buys_and_names_the_cpu(bundle_dir):
    """K = 52 benchmark names make two length groups; --threads 2 makes two workers: the report
    times fit's graph without each, checks their losses bit for bit, and probes GEMMs both ways."""
    done = run_cli(
        ["bench", "speed", "--bundle", bundle_dir, "--classes", 52, "--population", 4,
         "--repeats", 1, "--threads", 2, "--no-reference", "--json"]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = report["rows"]
    assert report["workers"] == 2
    for key in ("fit_one_group", "fit_intra_op"):
        assert rows[key]["queries_per_s"] > 0
        assert rows[key]["note"].endswith("losses bit-identical to fit's plan: True")
    assert "(2 length group(s))" in rows["objective_shared"]["note"]
    assert "(1 length group(s))" in rows["fit_one_group"]["note"]
    assert {"length_groups_gain", "workers_gain", "fit_fraction_of_gemm"} <= set(report["ratios"])
    probes = report["gemm_probes"]
    assert {p["workers"] for p in probes} == {1, 2} and len({p["shape"][0] for p in probes}) == 3
    assert report["gemm_probe"]["attainable_gflops"] == max(p["attainable_gflops"] for p in probes)
    assert report["cpu"]["isa"] != "" and report["cpu"]["cores"] >= 1
