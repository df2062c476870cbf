"""The `edge-tune bench` click group (attached to the CLI in `edge_tune.cli`).

Importing this module loads click and the grid's names only: each command imports its benchmark
when it runs, so `edge-tune fit` never loads onnx or the benchmarks. EdgeTuneError goes up to
`edge_tune.cli.main`, which prints it as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_tune.cli_options import (
    bundle_option,
    cache_dir_option,
    json_option,
    provider_option,
    threads_option,
)
from edge_tune.errors import EdgeTuneError
from edge_tune_bench.grid import DEFAULT_TASKS, DEFAULT_TASKS_DIR, METHODS, QUICK, SEEDS, SHOTS


def missing_bench_extra(err: ImportError) -> EdgeTuneError:
    """The one-line error for a benchmark whose [bench] extra is not installed."""
    name = (err.name or "").split(".")[0]
    return EdgeTuneError(
        f"the benchmarks need a package that is not installed ({name})",
        hint="Install the extra: pip install 'edge-tune[bench]'",
    )


@click.group()
def bench() -> None:
    """Measure what a query costs (speed), what a run holds (memory) and what tuning gains
    (accuracy)."""


@bench.command("speed")
@bundle_option()
@click.option("--classes", type=click.IntRange(2), default=10, show_default=True, help="K classes.")
@click.option(
    "--population",
    type=click.IntRange(1),
    default=40,
    show_default=True,
    help="N candidates per objective call.",
)
@provider_option()
@threads_option("Threads for ORT, numpy and torch alike.")
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Timed repetitions (the median is reported).",
)
@click.option("--no-reference", is_flag=True, help="Skip the PyTorch-eager reference.")
@json_option()
def speed_command(
    bundle, classes, population, provider, threads, repeats, no_reference, as_json
) -> None:
    """Queries/s of the objective vs PyTorch eager, ONNX untruncated and a GEMM probe, and the
    Python overhead of a fit step (fit's text graph and optimiser).

    \b
    Example:
      edge-tune bench speed --bundle /tmp/b16-bundle --population 40 --classes 10 --threads 2
    """
    from edge_tune.fit import resolve_bundle

    try:  # onnx reads the graph's cost and builds the GEMM probe graphs
        import onnx  # noqa: F401
    except ModuleNotFoundError as err:
        raise missing_bench_extra(err) from err
    from edge_tune_bench.speed import bench_speed
    from edge_tune_bench.tables import speed_table

    report = bench_speed(
        resolve_bundle(bundle),
        classes=classes,
        population=population,
        provider=provider,
        threads=threads,
        repeats=repeats,
        reference=not no_reference,
    )
    click.echo(json.dumps(report, indent=2) if as_json else speed_table(report))


@bench.command("memory")
@bundle_option()
@click.option("--classes", type=click.IntRange(2), default=10, show_default=True, help="K classes.")
@click.option(
    "--population",
    type=click.IntRange(1),
    default=40,
    show_default=True,
    help="N candidates per objective call (inference case).",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Objective calls / fit steps / first-order steps per case.",
)
@provider_option()
@threads_option("Threads for ORT, numpy and torch alike.")
@click.option("--no-reference", is_flag=True, help="Skip the PyTorch first-order case.")
@json_option()
def memory_command(
    bundle, classes, population, steps, provider, threads, no_reference, as_json
) -> None:
    """Peak RSS of inference, a short fit and PyTorch first-order tuning, each in a fresh process.

    \b
    Example:
      edge-tune bench memory --bundle /tmp/b16-bundle --classes 10
    """
    from edge_tune.fit import resolve_bundle
    from edge_tune_bench.memory import bench_memory
    from edge_tune_bench.tables import memory_table

    report = bench_memory(
        resolve_bundle(bundle),
        classes=classes,
        population=population,
        steps=steps,
        provider=provider,
        threads=threads,
        reference=not no_reference,
    )
    click.echo(json.dumps(report, indent=2) if as_json else memory_table(report))


@bench.command("accuracy")
@click.option(
    "--quick",
    is_flag=True,
    help="Demo task, seed 0, 16 and 4 shots, 400 queries, 20 eval images per class "
    "(options given explicitly win).",
)
@click.option(
    "--tasks",
    multiple=True,
    metavar="NAME",
    help=f"A task under --tasks-dir, or demo (the checkout's demo task); repeat for "
    f"several [{' '.join(DEFAULT_TASKS)}].",
)
@click.option(
    "--tasks-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_TASKS_DIR,
    show_default=True,
    help="Tasks written by `python -m edge_tune_export.miniworld.tasks --out DIR`.",
)
@click.option(
    "--methods",
    multiple=True,
    type=click.Choice(list(METHODS)),
    help="Optimiser x preset x tuning target; repeat for several [sharpzo-edge].",
)
@click.option(
    "--shots",
    multiple=True,
    type=click.IntRange(1),
    help=f"Shots per class; repeat for several [{' '.join(map(str, SHOTS))}].",
)
@click.option(
    "--seeds",
    multiple=True,
    type=int,
    help=f"Seeds; repeat for several [{' '.join(map(str, SEEDS))}].",
)
@click.option(
    "--budget",
    type=click.IntRange(1),
    default=2000,
    show_default=True,
    help="Queries per fit (equal for all).",
)
@click.option(
    "--eval-per-class",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Test images per class (a seeded subsample of the task's eval/).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Parallel runs (processes).",
)
@bundle_option()
@cache_dir_option()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write the full report (runs and curves) as JSON.",
)
@click.option(
    "--sweep-dir",
    type=click.Path(path_type=Path),
    help="The sweep's folder (one fit per run; the same one again goes on where it stood) "
    "[a new temporary folder].",
)
@click.option(
    "--from-json",
    "from_json",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Only print the tables of a saved report; repeat to merge several (their runs).",
)
@provider_option()
@threads_option("ORT intra-op threads per run.", default=1, show_default=True)
@json_option("Print the report as one JSON object instead of the Markdown tables.")
@click.pass_context
def accuracy_command(
    ctx,
    quick,
    tasks,
    tasks_dir,
    methods,
    shots,
    seeds,
    budget,
    eval_per_class,
    jobs,
    bundle,
    cache_dir,
    out,
    sweep_dir,
    from_json,
    provider,
    threads,
    as_json,
) -> None:
    """Every method x mini-world task x shots x seed at equal query budgets: what fit ships
    against zero-shot and every cheap head, on test images no choice saw.

    Options that take several values are repeated: --shots 16 --shots 4.

    \b
    Examples:
      edge-tune bench accuracy --quick
      edge-tune bench accuracy --jobs 2 --out /tmp/accbench/edge.json --sweep-dir /tmp/accbench/runs
      edge-tune bench accuracy --shots 16 --shots 4 --methods cma --methods zo --jobs 2
      edge-tune bench accuracy --from-json a.json --from-json b.json
    """
    from edge_tune_bench.accuracy import bench_accuracy, markdown, merge_reports

    if from_json:
        reports = [json.loads(Path(path).read_text(encoding="utf-8")) for path in from_json]
        report = merge_reports(reports)
    else:

        def given(name: str) -> bool:
            return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE

        chosen = {
            "tasks": tasks or DEFAULT_TASKS,
            "seeds": seeds or SEEDS,
            "shots": shots or SHOTS,
            "budget": budget,
            "eval_per_class": eval_per_class,
        }
        if quick:
            chosen.update({name: value for name, value in QUICK.items() if not given(name)})
        report = bench_accuracy(
            tasks=list(chosen["tasks"]),
            methods=list(methods or ("sharpzo-edge",)),
            shots=list(chosen["shots"]),
            seeds=list(chosen["seeds"]),
            budget=chosen["budget"],
            eval_per_class=chosen["eval_per_class"],
            jobs=jobs,
            tasks_dir=tasks_dir,
            bundle=bundle,
            cache_dir=cache_dir,
            provider=provider,
            threads=threads,
            sweep_dir=sweep_dir,
            log=lambda line: click.echo(line, err=True),
        )
        if report["missing"]:
            folder = report["settings"]["sweep_dir"]
            raise EdgeTuneError(
                f"{len(report['missing'])} run(s) did not finish"
                + (" (stopped)" if report["stopped_by"] else ""),
                path=folder,
                hint=f"Run the same command with --sweep-dir {folder} to go on",
            )
        if out:
            from edge_tune.atomic import atomic_write_bytes

            atomic_write_bytes(out, (json.dumps(report) + "\n").encode("utf-8"))
    click.echo(json.dumps(report) if as_json else markdown(report))
