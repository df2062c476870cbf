"""An example app that embeds edge-tune: sort incoming photos, learn from the ones you label.

It watches one folder (a camera's upload directory, a synced folder, an scp target):

    HOME/incoming/*.jpg        new photos: each is classified, logged to HOME/predictions.jsonl
                               and moved to HOME/sorted/<predicted class>/
    HOME/label/<class>/*.jpg   photos you labelled: moved into HOME/shots/<class>/; after
                               --retune-after new labels, a background thread tunes a new prompt
    HOME/shots/<class>/        what the classifier is tuned on (seed it with a few per class)
    HOME/runs/<id>/            one tuning run each; HOME/current -> the classifier in use

Prediction never waits for tuning: the tuner runs in a thread within a budget of queries and seconds,
and only a finished run's classifier replaces the current one, by swapping one reference (readers
hold the old one until they are done) and one symlink (renamed into place, so a restart finds a
complete run). Dependencies: edge-tune's runtime only (numpy, onnxruntime, pillow).

    python deploy/app/photo_sorter.py --bundle edge_tune/bundles/miniworld --home ~/sorter
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_tune.classifier import Classifier, Prediction
from edge_tune.data import IMAGE_EXTENSIONS
from edge_tune.errors import EdgeTuneError
from edge_tune.fit import Budget, FitConfig, Tuner, parse_duration

#: What one retune may spend unless told otherwise.
DEFAULT_BUDGET = Budget(queries=400, seconds=300.0)


class LiveClassifier:
    """A classifier that keeps answering while it learns: predict now, retune in the background.

    Args:
        bundle: the bundle directory (or an opened `Bundle`) every run is tuned with.
        home: the app's state directory (`shots/`, `runs/`, `current`).
        config: the fit settings of each retune (its budgets are overridden by `budget`).
        budget: queries and seconds one retune may spend; a retune is cut there and still swapped in.
        on_swap: called with (run directory, result dict) after a new classifier went live.
    """

    def __init__(
        self,
        bundle,
        home: str | Path,
        *,
        config: FitConfig | None = None,
        budget: Budget | None = None,
        threads: int | None = None,
        provider: str = "auto",
        on_swap: Callable[[Path, dict], None] | None = None,
    ):
        from edge_tune.bundle import Bundle, open_bundle

        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        self.home = Path(home)
        self.shots = self.home / "shots"
        self.runs = self.home / "runs"
        self.config = config if config is not None else FitConfig()
        self.budget = budget if budget is not None else DEFAULT_BUDGET
        self.threads, self.provider, self.on_swap = threads, provider, on_swap
        self.shots.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards _tuner/_thread/_again, never held while predicting
        self._thread: threading.Thread | None = None
        self._tuner: Tuner | None = None
        self._again = False
        self._stopping = False
        self.last_error: EdgeTuneError | None = None
        self.swaps = 0
        current = self.home / "current"
        self._classifier: Classifier | None = (
            Classifier.load(current, bundle=self.bundle, provider=provider, threads=threads)
            if (current / "classifier.npz").is_file()
            else None
        )

    # -- predicting ----------------------------------------------------------------------------

    @property
    def classifier(self) -> Classifier | None:
        """The classifier in use (None until the first tuning run has finished)."""
        return self._classifier

    def predict(self, paths: list[Path], *, top_k: int = 3) -> tuple[list[Prediction], list]:
        """Classify image files with the current classifier; returns (predictions, skipped)."""
        classifier = self._classifier  # one read: a swap during the call does not mix classifiers
        if classifier is None:
            raise EdgeTuneError(
                "no classifier yet",
                path=self.shots,
                hint="add labelled shots (2+ classes) and wait for the first tuning",
            )
        return classifier.predict_files(paths, top_k=top_k)

    # -- learning ------------------------------------------------------------------------------

    def add_shot(self, photo: str | Path, classname: str) -> Path:
        """Move a labelled photo into shots/<class>/ (renamed into place: never half-copied)."""
        photo = Path(photo)
        folder = self.shots / classname
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder / photo.name)
        partial = folder / f".{target.name}.partial"
        shutil.copyfile(photo, partial)
        os.replace(partial, target)
        photo.unlink()
        return target

    def retune(self) -> bool:
        """Start tuning in the background on all shots; if one is running, run again after it.

        Returns True when a new tuning thread started.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return False
            self._again = False
            self._stopping = False
            self._thread = threading.Thread(
                target=self._tune_until_current, name="edge-tune-retune", daemon=True
            )
            self._thread.start()
            return True

    @property
    def tuning(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for background tuning (including a queued re-run) to finish; True if it did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            thread = self._thread
            if thread is None:
                return True
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
            with self._lock:
                if self._thread is thread:
                    return True

    def stop(self) -> None:
        """Stop tuning after the current step (its checkpoint is saved; nothing is swapped in)."""
        with self._lock:
            self._again = False
            self._stopping = True
            tuner = self._tuner
        if tuner is not None:
            tuner.stop()
        self.wait()

    def _tune_until_current(self) -> None:
        while True:
            try:
                self._tune_once()
            except EdgeTuneError as err:  # e.g. a single class so far: report, keep predicting
                self.last_error = err
                print(f"photo_sorter: tuning skipped: {err}", file=sys.stderr)
            with self._lock:
                if not self._again:
                    self._tuner = None
                    return
                self._again = False

    def _tune_once(self) -> None:
        run = _free_name(self.runs / time.strftime("%Y%m%dT%H%M%S"))
        config = dataclasses.replace(
            self.config, budget_queries=self.budget.queries, budget_seconds=self.budget.seconds
        )
        tuner = Tuner(
            self.bundle,
            self.shots,
            config=config,
            run_dir=run,
            threads=self.threads,
            provider=self.provider,
        )
        with self._lock:
            if self._stopping:  # stop() came while the tuner was being built
                return
            self._tuner = tuner
        tuner.run(budget=self.budget)
        if self._stopping:
            return  # stopped from outside: the checkpoint stays, the current classifier too
        result = tuner.finish()
        self._swap_in(run, result)

    def _swap_in(self, run: Path, result: dict) -> None:
        classifier = Classifier.load(
            run, bundle=self.bundle, provider=self.provider, threads=self.threads
        )
        link = self.home / "current"
        partial = self.home / ".current.partial"
        if partial.is_symlink() or partial.exists():
            partial.unlink()
        partial.symlink_to(Path("runs") / run.name)
        os.replace(partial, link)  # a restart finds the new run or the old one, never neither
        self._classifier = classifier  # one reference assignment: readers see old or new
        self.swaps += 1
        if self.on_swap is not None:
            self.on_swap(run, result)


def _free_name(path: Path) -> Path:
    """`path`, or `stem-1.suffix`, `stem-2.suffix`… the first that does not exist."""
    if not path.exists():
        return path
    n = 1
    while (candidate := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate


def _images(folder: Path) -> list[Path]:
    return (
        sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if folder.is_dir()
        else []
    )


class FolderApp:
    """The folder-watching front end around a `LiveClassifier` (one `poll()` per tick)."""

    def __init__(self, live: LiveClassifier, *, retune_after: int = 3, top_k: int = 3):
        self.live, self.retune_after, self.top_k = live, retune_after, top_k
        self.incoming = live.home / "incoming"
        self.label = live.home / "label"
        self.sorted = live.home / "sorted"
        self.log = live.home / "predictions.jsonl"
        for folder in (self.incoming, self.label, self.sorted):
            folder.mkdir(parents=True, exist_ok=True)
        self.new_labels = 0

    def poll(self) -> dict:
        """Take in labelled shots, maybe start a retune, classify and sort incoming photos."""
        labelled = 0
        for folder in sorted(p for p in self.label.iterdir() if p.is_dir()):
            for photo in _images(folder):
                self.live.add_shot(photo, folder.name)
                labelled += 1
        self.new_labels += labelled
        started = False
        if self.new_labels >= self.retune_after or (labelled and self.live.classifier is None):
            started = self.live.retune()
            self.new_labels = 0
        predicted = 0
        photos = _images(self.incoming)
        if photos and self.live.classifier is not None:
            predictions, skipped = self.live.predict(photos, top_k=self.top_k)
            with self.log.open("a", encoding="utf-8") as log:
                for p in predictions:
                    target = _free_name(self.sorted / p.label / Path(p.source).name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(p.source, target)
                    log.write(
                        json.dumps(
                            {
                                "file": target.name,
                                "class": p.label,
                                "probability": round(p.probability, 4),
                                "top_k": p.top_k,
                                "run": self._current_run(),
                            }
                        )
                        + "\n"
                    )
                    print(f"{target.name}: {p.label} ({p.probability:.0%})", flush=True)
            for path, reason in skipped:
                print(f"photo_sorter: skipped {path}: {reason}", file=sys.stderr)
            predicted = len(predictions)
        return {"labelled": labelled, "retune_started": started, "predicted": predicted}

    def _current_run(self) -> str | None:
        link = self.live.home / "current"
        return os.readlink(link) if link.is_symlink() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle directory")
    parser.add_argument("--home", required=True, help="the app's folder (incoming/, label/, ...)")
    parser.add_argument("--budget-queries", type=int, default=400, help="queries per retune")
    parser.add_argument("--budget-time", default="5m", help="time per retune, e.g. 90s, 5m")
    parser.add_argument(
        "--retune-after", type=int, default=3, help="new labels that trigger a retune"
    )
    parser.add_argument("--preset", default="edge", choices=("edge", "paper"))
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between folder scans")
    parser.add_argument(
        "--once",
        action="store_true",
        help="one scan, wait for any tuning, one more scan, then exit",
    )
    args = parser.parse_args(argv)
    try:
        live = LiveClassifier(
            args.bundle,
            args.home,
            config=FitConfig(preset=args.preset),
            threads=args.threads,
            budget=Budget(queries=args.budget_queries, seconds=parse_duration(args.budget_time)),
            on_swap=lambda run, result: print(
                f"photo_sorter: new classifier {run.name}: accuracy {result['zero_shot_accuracy']:.1%}"
                f" zero-shot -> {result['tuned_accuracy']:.1%} tuned ({result['queries']} queries)",
                file=sys.stderr,
                flush=True,
            ),
        )
        app = FolderApp(live, retune_after=args.retune_after)
        if args.once:
            app.poll()
            live.wait()
            app.poll()
            return 0
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        print(
            f"photo_sorter: watching {app.incoming} and {app.label}/<class>/ (Ctrl-C to stop)",
            file=sys.stderr,
        )
        try:
            while not stopping.is_set():
                app.poll()
                stopping.wait(args.poll)
        except KeyboardInterrupt:
            pass
        live.stop()
        return 0
    except EdgeTuneError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
