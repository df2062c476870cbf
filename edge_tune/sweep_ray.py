"""The Ray engine of `edge-tune sweep` (the optional [ray] extra): each fit is a Ray task on a
cluster (`ray start --head` on one machine, `ray start --address HEAD:6379` on the others).

A task fits in a scratch folder on whichever node runs it and returns the finished run's files,
which this process writes into OUT/runs/<key>: the nodes need the bundle and the data at the same
paths (a shared mount or a copy), not OUT. A node that dies takes its run with it; Ray starts the
task again elsewhere (`retries` times), and a task retried on the node that held it resumes from
its checkpoint there.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from edge_tune import rundir
from edge_tune.atomic import atomic_write_bytes
from edge_tune.errors import EdgeTuneError
from edge_tune.sweep import Options, execute, line, run_dir
from edge_tune.sweepspec import SweepRun


def _task(run: SweepRun, scratch_name: str, options: Options):
    """On a Ray worker: the run to its end in local scratch, then its files (not its checkpoint)."""
    scratch = Path(tempfile.gettempdir()) / "edge-tune-sweep" / scratch_name
    try:
        outcome = execute(run, scratch, options, signals=False)
    except EdgeTuneError as err:
        return "error", str(err)
    folder = run_dir(scratch, run)
    files = {
        p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != rundir.LOCK
    }
    shutil.rmtree(folder, ignore_errors=True)
    return outcome, files


def _write_back(folder: Path, files: dict[str, bytes]) -> None:
    """The run's files into its folder, result.json last: a crash before it leaves the run "new"."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == "result.json"):
        atomic_write_bytes(folder / name, files[name])


def run_ray(
    runs: list[SweepRun],
    out: Path,
    options: Options,
    *,
    address: str | None = None,
    retries: int = 2,
    log=None,
) -> dict[str, tuple[str, str]]:
    """Every run as a Ray task (one CPU each, `options.threads` ORT threads; default 1);
    {key: (outcome, detail)} as `edge_tune.sweep.run_local`'s."""
    try:
        import ray
    except ImportError:
        raise EdgeTuneError(
            "--engine ray needs Ray", hint="pip install 'edge-tune[ray]', or use --engine local"
        ) from None
    threads = options.threads or 1
    options = Options(options.cache_dir, options.provider, threads, options.checkpoint_every)
    ray.init(address=address, ignore_reinit_error=True, logging_level="warning")
    remote = ray.remote(num_cpus=threads, max_retries=retries)(_task)
    scratch = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    refs = {remote.remote(run, scratch, options): run for run in runs}
    outcomes: dict[str, tuple[str, str]] = {}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                run = refs.pop(ref)
                try:
                    outcome, payload = ray.get(ref)
                except ray.exceptions.RayError as err:
                    outcome, payload = "failed", str(err).strip().splitlines()[0]
                if outcome == "error":
                    outcome = "failed"
                if isinstance(payload, dict):
                    _write_back(run_dir(out, run), payload)
                    payload = ""
                outcomes[run.key] = (outcome, payload)
                if log is not None:
                    log(line(run, out, outcome, payload))
    except KeyboardInterrupt:
        for ref, run in refs.items():
            ray.cancel(ref, force=True)
            outcomes[run.key] = ("stopped", "")
    finally:
        ray.shutdown()  # a cluster this process started stops; an existing one only disconnects
    return outcomes
