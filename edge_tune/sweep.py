"""`edge-tune sweep`: a grid of ordinary fit runs, one run directory each, that loses nothing when
any process dies.

A run's folder (OUT/runs/<task>/<method>-shotsN-seedS-qB) is what says where it stands: a
result.json means done (skipped), a checkpoint means resume it, nothing means start it. So the
same command run again after a crash, a reboot or Ctrl-C goes on where the sweep stood, and the
report (`edge_tune.sweep_report`) is built from the folders alone.

The local engine runs each fit in a process of its own (`jobs` at a time): a run that dies (the
OOM killer, a segfault) is started again from its checkpoint up to `retries` times, and the others
go on. The Ray engine (`edge_tune.sweep_ray`) runs each fit as a Ray task.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_tune import rundir
from edge_tune.atomic import atomic_write_json
from edge_tune.errors import CheckpointError, EdgeTuneError
from edge_tune.sweepspec import METHODS, Spec, SweepRun

RUNS = "runs"
SPEC_FILE = "sweep.json"
SPEC_FORMAT = {"format": "edge-tune-sweep", "format_version": 1}
#: What may not change between two invocations on one sweep folder: finished runs are keyed by
#: task, method, shots, seed and budget, so these would silently mix two sweeps.
FIXED = ("bundle", "eval_per_class")
LOCK_WAIT_S = 10.0  # a run's last process may take a moment to die and free its lock


@dataclass(frozen=True)
class Options:
    """How runs execute (not what they compute): the same results with any of these."""

    cache_dir: str | None = None
    provider: str = "auto"
    threads: int | None = None  # ORT threads per run; None: the cores divided among the jobs
    checkpoint_every: float = 60.0


def run_dir(out: str | Path, run: SweepRun) -> Path:
    return Path(out) / RUNS / run.key


def status(folder: Path) -> str:
    """ "done" (a result.json), "checkpoint" (resumable) or "new"."""
    from edge_tune.checkpoint import checkpoint_dir

    if (folder / "result.json").is_file():
        return "done"
    if folder.is_dir() and checkpoint_dir(folder) is not None:
        return "checkpoint"
    return "new"


def subsample(dataset, per_class: int, seed: int = 0):
    """A seeded stratified subsample of a dataset (the same one for every run with that seed)."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for sample in dataset.samples:
        by_class.setdefault(sample.label, []).append(sample)
    kept = []
    for label in sorted(by_class):
        items = by_class[label]
        take = sorted(rng.permutation(len(items))[: min(per_class, len(items))].tolist())
        kept.extend(items[i] for i in take)
    return replace(dataset, samples=kept)


def datasets(run: SweepRun):
    """(the run's shots, its evaluation set or None), subsampled as the spec says."""
    from edge_tune.data import load_eval, load_shots

    every = load_shots(run.task.shots)
    shots = every if run.shots is None else subsample(every, run.shots, seed=run.shots_seed)
    test = None
    if run.task.eval is not None:
        test = load_eval(run.task.eval, every)
        if run.eval_per_class is not None:
            test = subsample(test, run.eval_per_class)
    return shots, test


def prepare_out(out: Path, spec: Spec) -> None:
    """Create the sweep folder, or check that an existing one was made by the same spec's fixed
    settings; records the spec in OUT/sweep.json."""
    record = {**SPEC_FORMAT, **spec.record}
    path = out / SPEC_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise EdgeTuneError(
                f"cannot read the sweep's record ({err})",
                path=path,
                hint="Choose another --out",
            ) from None
        changed = [key for key in FIXED if old.get(key) != record[key]]
        tasks = {t["name"]: t for t in old.get("tasks", [])}
        changed += [
            f"task {t['name']}'s folders"
            for t in record["tasks"]
            if t["name"] in tasks and tasks[t["name"]] != t
        ]
        if changed:
            raise EdgeTuneError(
                f"the sweep in this folder was made with another {', '.join(changed)}",
                path=out,
                hint="Keep the spec's bundle, eval_per_class and task folders, or choose another --out",
            )
        known = [
            t for t in old.get("tasks", []) if t["name"] not in {x["name"] for x in record["tasks"]}
        ]
        record["tasks"] = known + record["tasks"]  # a later call checks them all
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgeTuneError(
            "the folder is not empty and holds no edge-tune sweep; nothing in it was changed",
            path=out,
            hint="Choose another --out (a new folder, or one an earlier sweep wrote)",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
    except OSError as err:
        raise EdgeTuneError(
            f"cannot write the sweep folder ({err.strerror or err})",
            path=out,
            hint="Choose an --out where you can write",
        ) from None


# --- one run ---------------------------------------------------------------------------------


def execute(run: SweepRun, out: str | Path, options: Options, *, signals: bool = True) -> str:
    """Take one run to its end in its folder (fresh, resumed, or already done); returns "done",
    "finished" or "stopped" (with `signals`, SIGINT/SIGTERM ask it to stop after its step: its
    checkpoint is saved)."""
    from edge_tune.blas import limit_blas_threads
    from edge_tune.fit import FitConfig, Tuner, resolve_bundle, stop_on_signals

    folder = run_dir(out, run)
    lock = _wait_for_lock(folder) if (folder / rundir.LOCK).exists() else None
    try:
        where = status(folder)
        if where == "done":
            return "done"
        shots, test = datasets(run)
        common = {
            "eval_set": test,
            "provider": options.provider,
            "threads": options.threads,
            "cache_dir": options.cache_dir,
        }
        with limit_blas_threads(1):  # the heads' fits too, not only the loop (Tuner.run)
            if where == "checkpoint":
                tuner = Tuner.resume(
                    folder, bundle=resolve_bundle(run.bundle), shots=shots, **common
                )
            else:
                optimizer, preset, tune_for = METHODS[run.method]
                config = FitConfig(
                    optimizer=optimizer,
                    preset=preset,
                    tune_for=tune_for,
                    seed=run.seed,
                    budget_queries=run.budget,
                    checkpoint_every=options.checkpoint_every,
                )
                folder.parent.mkdir(parents=True, exist_ok=True)
                tuner = Tuner(
                    resolve_bundle(run.bundle), shots, config=config, run_dir=folder, **common
                )
            with stop_on_signals(tuner) if signals else contextlib.nullcontext([]) as caught:
                tuner.run()
                if caught:
                    return "stopped"
                tuner.finish()
        return "finished"
    finally:
        if lock is not None:
            lock.release()


def _wait_for_lock(folder: Path) -> rundir.RunLock:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return rundir.RunLock(folder)
        except CheckpointError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --- the local engine ------------------------------------------------------------------------


def _child(run: SweepRun, out: str, options: Options, conn, parent: int) -> None:
    """A run's process: out of the terminal's process group (the sweep forwards Ctrl-C once), and
    gone when the sweep's process is (a SIGKILLed sweep must not leave fits holding run locks)."""
    os.setpgrp()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    try:
        conn.send(("ok", execute(run, out, options)))
    except EdgeTuneError as err:
        conn.send(("error", str(err)))
    except KeyboardInterrupt:  # a second stop request: abort at once, the checkpoint stays
        conn.send(("ok", "stopped"))
    except Exception as err:  # a bug: the sweep reports it and goes on with the other runs
        conn.send(("error", f"{type(err).__name__}: {err}"))


def run_local(
    runs: list[SweepRun],
    out: Path,
    options: Options,
    *,
    jobs: int = 1,
    retries: int = 2,
    log=None,
    stops: list[int] | None = None,
) -> dict[str, tuple[str, str]]:
    """Run every run in processes of their own, `jobs` at a time; {key: (outcome, detail)} with
    outcome "done", "finished", "stopped" or "failed". SIGINT/SIGTERM: each running fit is asked
    to stop after its step (its checkpoint saved), no new one starts, and the signal is appended
    to `stops`; a second signal aborts them at once."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding ORT's thread pools
    pending, running = deque(runs), {}
    outcomes: dict[str, tuple[str, str]] = {}
    attempts: dict[str, int] = {}
    stops = [] if stops is None else stops

    def on_signal(signum, frame) -> None:
        stops.append(signum)
        pending.clear()
        for process, _, _ in running.values():
            _signal(process, signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.popleft()
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=_child,
                    args=(run, str(out), options, send, os.getpid()),
                    name=f"edge-tune sweep {run.key}",
                )
                process.start()
                send.close()
                running[process.sentinel] = (process, run, receive)
            for sentinel in wait(list(running)):
                process, run, receive = running.pop(sentinel)
                process.join()
                try:
                    message = receive.recv() if receive.poll() else None
                except EOFError:  # the process died before it could say how the run ended
                    message = None
                receive.close()
                if message is not None and message[0] == "ok":
                    outcomes[run.key] = (message[1], "")
                elif message is not None:
                    outcomes[run.key] = ("failed", message[1])
                else:
                    attempts[run.key] = attempts.get(run.key, 0) + 1
                    died = _death(process.exitcode)
                    if attempts[run.key] <= retries and not stops:
                        pending.append(run)
                        detail = f"its process {died}; starting it again from its checkpoint"
                        outcomes.pop(run.key, None)
                    else:
                        detail = f"its process {died} ({attempts[run.key]} time(s))"
                        outcomes[run.key] = ("failed" if not stops else "stopped", detail)
                    if log is not None:
                        log(f"{run.key}: {detail}")
                if log is not None and run.key in outcomes:
                    log(line(run, out, *outcomes[run.key]))
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return outcomes


def _signal(process, signum: int) -> None:
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def line(run: SweepRun, out: Path, outcome: str, detail: str) -> str:
    """One run's line in the sweep's log."""
    if outcome in ("done", "finished"):
        from edge_tune.sweep_report import headline

        return f"{run.key}: {'already done' if outcome == 'done' else 'finished'}; {headline(run_dir(out, run))}"
    if outcome == "stopped":
        return f"{run.key}: stopped, checkpoint saved"
    return f"{run.key}: failed: {detail}"


def cache_features(runs: list[SweepRun], options: Options) -> None:
    """Encode every task's images once, here, so that parallel runs only read the feature cache."""
    from edge_tune.blas import limit_blas_threads
    from edge_tune.bundle import open_bundle
    from edge_tune.features import image_features
    from edge_tune.fit import resolve_bundle

    seen = set()
    with limit_blas_threads(1):
        for run in runs:
            key = (run.bundle, run.task, run.eval_per_class)
            if key in seen:
                continue
            seen.add(key)
            bundle = open_bundle(resolve_bundle(run.bundle))
            shots, test = datasets(replace(run, shots=None))
            for dataset in (shots, test):
                if dataset is not None:
                    image_features(
                        bundle,
                        dataset,
                        cache_dir=options.cache_dir,
                        provider=options.provider,
                        threads=options.threads,
                    )


# --- the command -----------------------------------------------------------------------------


def run_sweep(
    spec: Spec,
    out: str | Path,
    options: Options = Options(),
    *,
    engine: str = "local",
    jobs: int = 1,
    address: str | None = None,
    retries: int = 2,
    log=None,
) -> dict:
    """Run (or go on with) a sweep in `out`; returns its report, built from the run folders and
    written as OUT/report.json, report.md and report.png, with "outcomes" ({key: [outcome,
    detail]} of the runs this call ran) and "stopped_by" (the signal that stopped it, or None)."""
    from edge_tune.sweep_report import build_report, write_report

    out = Path(out)
    prepare_out(out, spec)
    runs = list(spec.runs)
    where = [status(run_dir(out, run)) for run in runs]
    if log is not None:
        log(
            f"{len(runs)} runs in {out}: {where.count('done')} done, "
            f"{where.count('checkpoint')} to resume, {where.count('new')} to start ({engine})"
        )
    todo = [run for run, state in zip(runs, where) if state != "done"]
    stops: list[int] = []
    if options.threads is None and engine == "local":
        from edge_tune.encoders import usable_cores

        options = replace(options, threads=max(1, usable_cores() // jobs))
    if not todo:
        outcomes = {}
    elif engine == "local":
        if jobs > 1:
            cache_features(todo, options)
        outcomes = run_local(todo, out, options, jobs=jobs, retries=retries, log=log, stops=stops)
    elif engine == "ray":
        from edge_tune.sweep_ray import run_ray

        outcomes = run_ray(todo, out, options, address=address, retries=retries, log=log)
    else:
        raise EdgeTuneError(f"unknown engine {engine!r}", hint="Use --engine local or ray")
    report = build_report(spec, out)
    report["outcomes"] = {key: list(value) for key, value in outcomes.items()}
    report["stopped_by"] = stops[0] if stops else None
    write_report(out, report)
    return report


__all__ = ["Options", "execute", "run_dir", "run_local", "run_sweep", "status", "subsample"]
