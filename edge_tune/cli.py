"""The `edge-tune` command line: a thin click layer over the library.

Every command parses options, calls one library function and renders its result. `EdgeTuneError`
is turned into one line (`Error: <path>: <what>. <fix>`) in `main`, and nothing else is caught.
"""

from __future__ import annotations

from edge_tune.blas import pin_blas_env

# Must run before numpy loads. The loop's numpy work is small matrices between ORT runs, and BLAS threads
# competing with ORT's own pool made a [40,512]x[512,256] product take 60-100 ms instead of 0.9 ms on
# 2 cores (scripts/query_cost.py). A user who wants BLAS threads sets the variable themselves.
pin_blas_env()

import contextlib  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from edge_tune.cli_options import (  # noqa: E402
    bundle_option,
    cache_dir_option,
    json_option,
    provider_option,
    threads_option,
)
from edge_tune.errors import EdgeTuneError  # noqa: E402
from edge_tune.fit import HEAD_CHOICES, PRESETS, TUNE_FOR, FitConfig  # noqa: E402
from edge_tune.optim import OPTIMIZERS  # noqa: E402
from edge_tune.prompts import DEFAULT_TEMPLATE  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-tune")
def cli() -> None:
    """Tune CLIP to your classes on the device, with forward passes only."""


# --- export / info (bundle) -------------------------------------------------------------------


@cli.command("export")
@click.argument("model")
@click.option(
    "--source",
    "source_dir",
    type=click.Path(path_type=Path),
    help="A CLIPModel save_pretrained directory to export instead of downloading MODEL.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write."
)
@provider_option(
    "Check that the bundle runs on this execution provider (auto|cpu|cuda|tensorrt|...)."
)
@click.option("--opset", type=click.IntRange(18), help="ONNX opset [20].")
@click.option(
    "--token-table",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Storage of token_embedding.npy; fp16 rounds the model's table first (exact parity).",
)
@click.option(
    "--shared-prefix/--no-shared-prefix",
    default=True,
    show_default=True,
    help="Also write text_shared.onnx: each candidate's SOT + context computed once for all its "
    "class prompts (same features; ~2x faster fits at 10 classes; fit uses it). "
    "--no-shared-prefix: a smaller bundle (one text graph fewer), slower fits.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "fp16"]),
    help="Write a smaller bundle: int8 (dynamic, per channel; for CPUs) or fp16 (same as --fp16).",
)
@click.option(
    "--fp16",
    "fp16",
    is_flag=True,
    help="fp16 graphs with fp32 inputs/outputs, for GPU providers (CUDA/TensorRT); slower than "
    "fp32 on CPU.",
)
@click.option(
    "--gate-data",
    type=click.Path(path_type=Path),
    help="Labelled images (DIR/<class>/*.png) on which a --quantize/--fp16 bundle must stay within "
    "--max-drop points of fp32 [mini-world: its demo task; others: required or --no-gate].",
)
@click.option(
    "--gate-prompt",
    type=click.Path(path_type=Path),
    help="A fit run (or prompt.npz) made with the fp32 model whose tuned accuracy is gated too.",
)
@click.option(
    "--no-gate", is_flag=True, help="Skip the accuracy gate of --quantize/--fp16 (warned)."
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Largest accuracy drop (points) the gate accepts.",
)
@json_option("Print the bundle's path, model, parity and file sizes as one JSON object.")
def export_command(
    model,
    source_dir,
    out,
    provider,
    opset,
    token_table,
    shared_prefix,
    quantize,
    fp16,
    gate_data,
    gate_prompt,
    no_gate,
    max_drop,
    as_json,
) -> None:
    """Freeze a CLIP model into a bundle a torch-free device can tune (needs the [export] extra).

    \b
    MODEL is a registry name (tiny-random, b16-random, l14-random, clip-vit-b16, clip-vit-l14, ...)
    or any Hugging Face CLIP id (org/name: from the hub, or the local cache when offline);
    with --source DIR it names the bundle and the weights come from DIR.
    Examples:
      edge-tune export tiny-random --out bundles/tiny
      edge-tune export clip-vit-b16 --source ./clip-vit-base-patch16 --out bundles/b16
      edge-tune export miniworld --source models/miniworld/clip --quantize int8 --out bundles/mw-int8
      edge-tune export clip-vit-b16 --source DIR --fp16 --gate-data ./labelled --out bundles/b16-fp16
    """
    from edge_tune.errors import ExportError

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from edge_tune_export import export_bundle
    except ImportError:
        raise ExportError(
            "edge-tune export needs PyTorch and transformers: pip install 'edge-tune[export]'"
        ) from None
    if fp16 and quantize not in (None, "fp16"):
        raise ExportError(f"--fp16 contradicts --quantize {quantize}", hint="give one of them")
    mode = "fp16" if fp16 else quantize
    if mode is None and (gate_data or gate_prompt or no_gate):
        raise ExportError(
            "--gate-data/--gate-prompt/--no-gate apply only with --quantize or --fp16",
            hint="add --quantize int8 or --fp16, or drop the gate options",
        )
    stopped = "Stopped ({signal}); the unfinished export was removed: run the command again."
    with _stops_cleanly(stopped):
        manifest = export_bundle(
            model,
            out,
            source_dir=source_dir,
            provider=provider,
            opset=opset,
            token_table=token_table,
            shared_prefix=shared_prefix,
            quantize=mode,
            gate_data=gate_data,
            gate_prompt=gate_prompt,
            no_gate=no_gate,
            max_drop_points=max_drop,
            echo=lambda line: click.echo(line, err=True),
        )
    if not as_json:
        click.echo(str(out))
        return
    files = {name: entry["bytes"] for name, entry in manifest["files"].items()}
    keys = ("model", "dims", "parity", "quantization")
    click.echo(
        json.dumps({"bundle": str(out), **{k: manifest.get(k) for k in keys}, "files": files})
    )


@cli.command("info")
@click.argument("bundle_dir", metavar="[BUNDLE]", required=False, type=click.Path(path_type=Path))
@provider_option("Execution provider for the timed forward.")
@threads_option()
@json_option()
def info_command(bundle_dir, provider, threads, as_json) -> None:
    """Check a bundle (hashes, graphs, provider) and time one text forward.

    BUNDLE defaults to $EDGE_TUNE_BUNDLE, else the shipped mini-world bundle.

    \b
    Examples:
      edge-tune info
      edge-tune info bundles/tiny
      edge-tune info bundles/b16 --provider cuda --json
    """
    from edge_tune.bundle import bundle_info
    from edge_tune.fit import resolve_bundle

    info = bundle_info(resolve_bundle(bundle_dir), provider=provider, threads=threads)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    dims, model = info["dims"], info["model"]
    lines = [
        f"bundle     {info['bundle']}  (format {info['format_version']}, hash {info['bundle_hash'][:16]})",
        f"model      {model['name']}  from {model['source']}",
        f"dims       text {dims['text_width']} wide, projection {dims['projection_dim']}, context "
        f"{dims['context_length']}, vocab {dims['vocab_size']}; image {dims['image_size']} px, "
        f"patch {dims['patch_size']}, vision {dims['vision_width']} wide",
        f"logit      scale {info['logit_scale']:.4g}",
    ]
    for name, entry in info["files"].items():
        lines.append(
            f"file       {name:<20} {entry['bytes']:>12,} B  sha256 {entry['sha256'][:16]}  ok"
        )
    lines.append("hashes     all verified")
    if info.get("parity"):
        p = info["parity"]
        lines.append(
            f"parity     text {p['text_max_abs_diff']:.2g}, image {p['image_max_abs_diff']:.2g} "
            f"(tolerance {p['tolerance']:g}, at export)"
        )
    prov = info["providers"]
    lines.append(
        f"providers  available {', '.join(prov['available'])}; chosen {prov['chosen']} "
        f"({prov['report']})"
    )
    tf = info["text_forward"]
    lines.append(
        f"forward    text graph, 1 prompt x {tf['tokens']} tokens: {tf['ms_median_of_3']:.2f} ms"
    )
    click.echo("\n".join(lines))


# --- eval (data, objective) -------------------------------------------------------------------


def _is_split_file(path: Path) -> bool:
    """`--data` naming a CoOp/Dassl split file rather than a folder."""
    return path.suffix.lower() == ".json" and path.is_file()


@cli.command("eval")
@bundle_option("bundle_dir")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Labelled images: DATA/<class>/*.jpg, or a CoOp/Dassl split_zhou_<dataset>.json (its "
    "test part; the images beside it).",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    help="Zero-shot prompt; {} is replaced by the class name. Repeat it for an ensemble (the "
    f"class features averaged) [{DEFAULT_TEMPLATE}].",
)
@click.option(
    "--prompt",
    "prompt_path",
    type=click.Path(path_type=Path),
    help="A tuned prompt alone instead of the template: a fit run folder or its prompt.npz.",
)
@click.option(
    "--run",
    "run_path",
    type=click.Path(path_type=Path),
    help="What a fit run shipped (its classifier.npz: prompt or template, plus a head).",
)
@click.option(
    "--split",
    "split_json",
    type=click.Path(path_type=Path),
    help="A CoOp/Dassl split_zhou_<dataset>.json: score its test part; DATA is its image root "
    "(else found beside the split).",
)
@click.option("--strict", is_flag=True, help="Fail on unreadable images instead of skipping them.")
@cache_dir_option()
@provider_option()
@threads_option()
@json_option()
def eval_command(
    bundle_dir,
    data_dir,
    templates,
    prompt_path,
    run_path,
    split_json,
    strict,
    cache_dir,
    provider,
    threads,
    as_json,
) -> None:
    """Accuracy of a zero-shot template or a tuned prompt on a folder of labelled images.

    \b
    Examples:
      edge-tune eval --bundle B --data ./test
      edge-tune eval --bundle B --data ./test --template "a blurry photo of a {}."
      edge-tune eval --data ./test --template "a photo of a {}." --template "a sketch of a {}."
      edge-tune eval --bundle B --data ./test --prompt runs/pets --json
      edge-tune eval --bundle B --data ./test --run runs/pets
      edge-tune eval --bundle B --data ./oxford_pets/images --split split_zhou_OxfordPets.json
    """
    from edge_tune.bundle import open_bundle
    from edge_tune.data import load_dassl_split, load_shots
    from edge_tune.fit import resolve_bundle
    from edge_tune.objective import evaluate_dataset
    from edge_tune.report import encoding_progress

    if prompt_path is not None and run_path is not None:
        raise click.UsageError("give --prompt or --run, not both")
    bundle = open_bundle(resolve_bundle(bundle_dir))
    if split_json is None and _is_split_file(data_dir):
        split_json, data_dir = data_dir, None  # `--data split_zhou_X.json`
    if split_json is not None:
        dataset = load_dassl_split(split_json, data_dir)[2]
    else:
        dataset = load_shots(data_dir, strict=strict)
    if dataset.report():
        click.echo(dataset.report(), err=True)
    result = evaluate_dataset(
        bundle,
        dataset,
        template=list(templates) or DEFAULT_TEMPLATE,
        prompt=prompt_path,
        run=run_path,
        cache_dir=cache_dir,
        provider=provider,
        threads=threads,
        progress=encoding_progress(),
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    what = (
        f"prompt {result['prompt']}"
        if "prompt" in result
        else f"run {result['run']}: {result['shipped']}"
        if "run" in result
        else f"template {result['template']!r}"
        if isinstance(result["template"], str)
        else f"ensemble of {len(result['template'])} templates"
    )
    click.echo(
        f"accuracy {100 * result['accuracy']:.1f}% ({result['correct']}/{result['images']} "
        f"images, {result['classes']} classes, {what}); "
        f"mean cross-entropy {result['loss']:.4f}"
    )


# --- fit / predict ----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Shots folder: DATA/<class>/*.jpg (with --split: the split's image root), or a "
    "CoOp/Dassl split_zhou_<dataset>.json with its images beside it.",
)
@click.option(
    "--split",
    "split_json",
    type=click.Path(path_type=Path),
    help="A CoOp/Dassl split_zhou_<dataset>.json: tune on --shots per class of its train "
    "part, drawn as Dassl does (--split-seed), and report on its test part.",
)
@click.option(
    "--shots",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="With --split: images per class.",
)
@click.option(
    "--split-seed",
    type=int,
    default=1,
    show_default=True,
    help="With --split: Dassl's seed for drawing the shots.",
)
@click.option(
    "--eval",
    "eval_dir",
    type=click.Path(path_type=Path),
    help="Labelled folder to report accuracy on (never used for any choice).",
)
@bundle_option()
@click.option(
    "--head",
    type=click.Choice(list(HEAD_CHOICES)),
    help="Image heads to consider beside the prompt [auto: all of them].",
)
@click.option(
    "--tune-for",
    type=click.Choice(list(TUNE_FOR)),
    help="Score candidate prompts alone (then blend a head), or through the hybrid [prompt].",
)
@click.option("--folds", type=click.IntRange(2), help="Cross-validation folds of the shots [4].")
@click.option(
    "--preset", type=click.Choice(list(PRESETS)), help=f"Optimiser preset [{FitConfig.preset}]."
)
@click.option(
    "--optimizer", type=click.Choice(list(OPTIMIZERS)), help=f"Optimiser [{FitConfig.optimizer}]."
)
@click.option(
    "--budget-queries",
    type=click.IntRange(1),
    help=f"Optimiser queries over all folds [{FitConfig.budget_queries}].",
)
@click.option(
    "--budget-time",
    help="Tuning time, e.g. 90s, 20m, 1h30m. Alone it lifts the default "
    f"{FitConfig.budget_queries}-query cap "
    "(tuning runs until the time is up); with --budget-queries, the first reached stops.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    help="Seed of the folds, optimisers and projection, 0..2^32-1 [0].",
)
@provider_option()
@threads_option(
    "Cores to use [every core this process may run on, at most 8 for the text graph]: ORT "
    "threads for the images; on a CPU with an fp32 bundle the text graph runs this many worker "
    "threads of one ORT thread each."
)
@click.option("--out", type=click.Path(path_type=Path), help="Run directory [runs/<timestamp>].")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue an interrupted run.")
@click.option("--checkpoint-every", help="Time between checkpoints [60s].")
@click.option(
    "--eval-every",
    type=click.IntRange(1),
    help="Rounds (a step of every fold) between evaluations [10].",
)
@json_option("Print result.json on stdout.")
def fit(
    data,
    split_json,
    shots,
    split_seed,
    eval_dir,
    bundle,
    head,
    tune_for,
    folds,
    preset,
    optimizer,
    budget_queries,
    budget_time,
    seed,
    provider,
    threads,
    out,
    resume,
    checkpoint_every,
    eval_every,
    as_json,
) -> None:
    """Tune the prompt to your shots with forward passes only, and ship the best classifier the
    shots can prove: zero-shot, an image head, the tuned prompt, or prompt + head.

    \b
    Examples:
      edge-tune fit --data ./shots --budget-queries 2000
      edge-tune fit --data ./shots --eval ./eval --budget-time 20m --out runs/pets
      edge-tune fit --resume runs/pets
      edge-tune fit --data ./oxford_pets/images --split split_zhou_OxfordPets.json --shots 16
    """
    from edge_tune.fit import Tuner, new_run_dir, parse_duration, resolve_bundle, stop_on_signals
    from edge_tune.report import Progress, budget_line, encoding_progress, format_summary

    seconds = parse_duration(budget_time) if budget_time else None
    if split_json is None and data is not None and _is_split_file(data):
        split_json, data = data, None  # `--data split_zhou_X.json`: the images lie beside it
    if split_json is not None:  # the shots and the evaluation set come from the split file
        if eval_dir is not None:
            raise click.UsageError("--split reports on its own test part; drop --eval")
        from edge_tune.data import load_dassl_split

        data, _, eval_dir = load_dassl_split(split_json, data, shots=shots, seed=split_seed)
    if resume is not None:
        fixed = {
            "--out": out,
            "--preset": preset,
            "--optimizer": optimizer,
            "--seed": seed,
            "--head": head,
            "--tune-for": tune_for,
            "--folds": folds,
            "--eval-every": eval_every,
            "--checkpoint-every": checkpoint_every,
        }
        given = [name for name, value in fixed.items() if value is not None]
        if given:
            raise EdgeTuneError(
                f"{', '.join(given)} cannot change when resuming",
                path=resume,
                hint="Resume with the run's own settings, or start a new run",
            )
        with _setup_stops_cleanly():
            tuner = Tuner.resume(
                resume,
                bundle=bundle,
                shots=data,
                eval_set=eval_dir,
                budget_queries=budget_queries,
                budget_seconds=seconds,
                provider=provider,
                threads=threads,
                feature_progress=encoding_progress(),
            )
        run_dir = resume
    else:
        if data is None:
            raise click.UsageError("--data DIR is required (or --resume RUN)")
        every = parse_duration(checkpoint_every) if checkpoint_every else None
        chosen = {
            "optimizer": optimizer,
            "preset": preset,
            "seed": seed,
            "head": head,
            "tune_for": tune_for,
            "folds": folds,
            "eval_every": eval_every,
            "checkpoint_every": every,
        }
        chosen = {key: value for key, value in chosen.items() if value is not None}
        if budget_queries is not None or seconds is not None:  # else FitConfig's default budget
            chosen.update(budget_queries=budget_queries, budget_seconds=seconds)
        run_dir = out if out is not None else new_run_dir()
        with _setup_stops_cleanly():
            tuner = Tuner(
                resolve_bundle(bundle),
                data,
                eval_set=eval_dir,
                config=FitConfig(**chosen),
                run_dir=run_dir,
                provider=provider,
                threads=threads,
                feature_progress=encoding_progress(),
            )
    for dataset in tuner.datasets.values():
        if dataset is not None and dataset.report():
            click.echo(dataset.report(), err=True)
    budget = tuner.budget
    click.echo(
        budget_line(budget.queries, budget.seconds, default_queries=FitConfig.budget_queries),
        err=True,
    )
    progress = Progress(budget_queries=budget.queries, budget_seconds=budget.seconds)

    def show(tuner, info) -> None:
        s = tuner.state
        progress.update(
            queries=s.queries,
            stage=s.stage,
            loss=s.train_loss,
            train_accuracy=s.train_accuracy,
            val_accuracy=s.val_accuracy,
            queries_per_second=s.queries / max(s.seconds, 1e-9),
            elapsed=s.seconds,
        )

    newline = "\n" if progress.enabled else ""
    with stop_on_signals(tuner, notify=lambda text: click.echo(newline + text, err=True)) as caught:
        tuner.run(callback=show)
        progress.close()
        if caught:
            click.echo(
                f"Stopped after {tuner.state.queries} queries; checkpoint saved in {run_dir}. "
                f"Continue with: edge-tune fit --resume {run_dir}",
                err=True,
            )
            sys.exit(128 + caught[0])
        # still inside: a signal during the final writes lets them finish (the run is then
        # complete) instead of aborting between its checkpoint and its artifacts
        result = tuner.finish()
    summary = json.dumps({"run_dir": str(run_dir), **result}) if as_json else None
    click.echo(summary or format_summary(result, run_dir))


class _Terminated(BaseException):
    """SIGTERM as an exception, so that the work's own cleanup (`except BaseException`, `finally`)
    runs as it would for Ctrl-C. DEVIATION: not a KeyboardInterrupt. Raised as one, about 1 SIGTERMed
    export in 10 still printed its message and then died by SIGINT (exit -2, not 143): CPython
    marks a KeyboardInterrupt as unhandled when it is raised inside code an extension runs through
    its PyRun_* calls, even if Python code catches it later, and then exits by SIGINT."""


@contextlib.contextmanager
def _stops_cleanly(message: str):
    """Ctrl-C or SIGTERM (systemd, docker, timeout): the work unwinds, so its own cleanup runs, then
    `message` (with {signal}) in one line and exit 128 + signal."""

    def terminate(signum, frame):
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except (KeyboardInterrupt, _Terminated) as stop:
        signum = stop.args[0] if stop.args else signal.SIGINT
        click.echo("\n" + message.format(signal=signal.Signals(signum).name), err=True)
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _setup_stops_cleanly():
    """While fit encodes images (before its first checkpoint): the features so far are cached."""
    return _stops_cleanly(
        "Stopped before tuning began ({signal}); the images encoded so far are cached: run the "
        "same command again to go on."
    )


@cli.command("sweep")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="The sweep's folder: runs/ (one fit each) and report.{md,json,png}; give the same one "
    "again to go on.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: processes on this machine; ray: Ray tasks on a cluster (the [ray] extra).",
)
@click.option(
    "--address",
    help="--engine ray: the cluster's address (HEAD:6379, or auto) [$RAY_ADDRESS, else a "
    "Ray started in this process].",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="--engine local: fits at once, each in its own process.",
)
@click.option(
    "--retries",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="Times a run whose process (or Ray node) died is started again.",
)
@bundle_option()
@cache_dir_option()
@provider_option()
@threads_option("ORT threads per fit [local: the cores / --jobs; ray: 1].")
@click.option(
    "--checkpoint-every",
    default="60s",
    show_default=True,
    help="Time between each fit's checkpoints.",
)
@json_option("Print the report (settings, runs, missing, outcomes) as one JSON object.")
def sweep_command(
    spec_path,
    out,
    engine,
    address,
    jobs,
    retries,
    bundle,
    cache_dir,
    provider,
    threads,
    checkpoint_every,
    as_json,
) -> None:
    """Run a grid of ordinary fits (tasks x methods x shots x seeds x budgets) from a JSON or
    TOML SPEC, one run folder each. Run the same command again after a crash or Ctrl-C: finished
    runs are skipped, checkpointed ones resume, the rest start.

    \b
    SPEC, e.g. sweep.json (relative paths from its folder):
      {"tasks": ["tasks/inverted", {"name": "pets", "shots": "pets/train", "eval": "pets/test"}],
       "methods": ["sharpzo-edge", "cma"], "seeds": [0, 1, 2], "shots": [16, 4],
       "budgets": [2000], "eval_per_class": 100}
    A task folder holds shots/<class>/ and eval/<class>/; shots are images per class drawn
    (seeded) from it, or "all". Methods: sharpzo-edge, sharpzo-edge-hybrid, sharpzo-paper, cma,
    zo, spsa-clip.
    \b
    Examples:
      edge-tune sweep sweep.json --out sweeps/first --jobs 2
      edge-tune sweep sweep.toml --out sweeps/big --engine ray --address auto
    """
    from dataclasses import replace as replaced

    from edge_tune.fit import parse_duration
    from edge_tune.sweep import Options, run_sweep
    from edge_tune.sweep_report import markdown
    from edge_tune.sweepspec import read_spec

    spec = read_spec(spec_path)
    if bundle is not None:
        spec = replaced(
            spec,
            runs=tuple(replaced(r, bundle=str(Path(bundle).resolve())) for r in spec.runs),
            record={**spec.record, "bundle": str(Path(bundle).resolve())},
        )
    options = Options(
        cache_dir=None if cache_dir is None else str(cache_dir),
        provider=provider,
        threads=threads,
        checkpoint_every=parse_duration(checkpoint_every),
    )
    report = run_sweep(
        spec,
        out,
        options,
        engine=engine,
        jobs=jobs,
        address=address,
        retries=retries,
        log=lambda text: click.echo(text, err=True),
    )
    click.echo(json.dumps(report) if as_json else markdown(report), nl=not as_json)
    if as_json:
        click.echo()
    if report["stopped_by"] is not None:
        click.echo(
            f"Stopped; checkpoints saved. Continue with the same command: edge-tune sweep "
            f"{spec_path} --out {out}",
            err=True,
        )
        sys.exit(128 + report["stopped_by"])
    failed = [key for key, (outcome, _) in report["outcomes"].items() if outcome == "failed"]
    if failed:
        raise EdgeTuneError(
            f"{len(failed)} run(s) failed: {', '.join(failed)}",
            path=out,
            hint="Their errors are above; fix them and run the same command again",
        )
    click.echo(
        f"Report: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}", err=True
    )


@cli.command()
@click.argument(
    "paths", nargs=-1, required=True, metavar="[RUN] IMAGES...", type=click.Path(path_type=Path)
)
@click.option(
    "--labels",
    help="Zero-shot, no fit: the class names, comma-separated, or a file with one per line. "
    "Every path is then an image or a folder of images.",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    help=f"With --labels: the prompt, {{}} for the label; repeat it for an ensemble "
    f"[{DEFAULT_TEMPLATE}].",
)
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@bundle_option(
    help="Bundle the run was tuned with [the one recorded in RUN/result.json]; with --labels "
    "[$EDGE_TUNE_BUNDLE, else the shipped mini-world bundle]."
)
@provider_option()
@threads_option()
@json_option()
def predict(paths, labels, templates, top_k, bundle, provider, threads, as_json) -> None:
    """Classify images with a tuned run (the image graph and one matmul), or zero-shot.

    \b
    Examples:
      edge-tune predict runs/pets photo.jpg
      edge-tune predict runs/pets ./new-photos --top-k 5 --json
      edge-tune predict --bundle B --labels "cat,dog,bird" ./photos
      edge-tune predict --labels labels.txt --template "a photo of a {}." \\
          --template "a close-up photo of a {}." ./photos
    """
    from edge_tune.classifier import Classifier, collect_images, read_labels
    from edge_tune.errors import DataError
    from edge_tune.fit import resolve_bundle

    if labels is None:
        if templates:
            raise click.UsageError("--template goes with --labels: a run carries its own prompt")
        if len(paths) < 2:
            raise click.UsageError("give RUN and at least one image, or --labels for zero-shot")
        run, images = paths[0], paths[1:]
        classifier = Classifier.load(run, bundle=bundle, provider=provider, threads=threads)
    else:
        images = paths
        classifier = Classifier.zero_shot(
            resolve_bundle(bundle), read_labels(labels), templates or (DEFAULT_TEMPLATE,),
            provider=provider, threads=threads,
        )  # fmt: skip
    predictions, skipped = classifier.predict_files(collect_images(images), top_k=top_k)
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not predictions:
        raise DataError(
            "no images to classify among the given paths",
            hint="Pass image files (jpg, png, webp, bmp) or folders holding them",
        )
    if as_json:
        rows = [
            {
                "image": p.source,
                "label": p.label,
                "probability": p.probability,
                "top_k": [{"label": name, "probability": prob} for name, prob in p.top_k],
            }
            for p in predictions
        ]
        skipped_rows = [{"image": path, "reason": why} for path, why in skipped]
        click.echo(json.dumps({"predictions": rows, "skipped": skipped_rows}))
        return
    for p in predictions:
        others = ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in p.top_k)
        top = f"top {len(p.top_k)}: {others}"
        click.echo(f"{p.source}: {p.label} ({100 * p.probability:.1f}%)   {top}")


# --- bench ------------------------------------------------------------------------------------


# The group lives with the benchmarks (edge_tune_bench, folder bench/); importing it loads click
# and the accuracy grid's names only, each command its benchmark (and onnx) when it runs.
from edge_tune_bench.cli import bench  # noqa: E402

cli.add_command(bench)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit code 1 (under
    `--json`, that line is a JSON object on stderr: error, message, path, hint)."""
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    as_json = "--json" in args

    def fail(text: str, code: int, **fields) -> None:
        if as_json:
            click.echo(json.dumps({"error": text, **fields}), err=True)
        else:
            click.echo(f"Error: {text}" if fields else text, err=True)
        sys.exit(code)

    try:
        cli.main(args=args, standalone_mode=False)
    except EdgeTuneError as err:
        fail(str(err), 1, message=err.message, path=err.path, hint=err.hint)
    except click.exceptions.Abort:
        fail("Aborted.", 130)
    except click.ClickException as err:
        if not as_json:
            err.show()
            sys.exit(err.exit_code)
        fail(err.format_message(), err.exit_code, usage=True)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
