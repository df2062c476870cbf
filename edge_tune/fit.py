"""The tuning loop: shots in, a tuned prompt and classifier out, forward passes only.

Read it top to bottom like nanoGPT's train.py: a `FitConfig`, then a `Tuner` that caches the image
features once (and lets the image session go), builds the prompt space and the batched objective,
and repeats `W = ask(state); losses = objective(W); state = tell(state, losses)` until a budget in
queries or seconds runs out. Every `eval_every` steps it measures train and validation accuracy of
the current prompt, logs a line to metrics.jsonl, tracks the best-on-validation prompt and feeds the
validation accuracy to `tell` (SharpZO's switch rule). Checkpoints (every `checkpoint_every`
seconds and at the end) make an interrupted run resume to a bit-identical result.

    tuner = Tuner("models/miniworld/bundle", "shots/", config=FitConfig(budget_queries=2000))
    tuner.run()
    classifier = tuner.classifier()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_tune.atomic import atomic_save_npz, atomic_write_json
from edge_tune.blas import loop_blas_threads
from edge_tune.checkpoint import (
    checkpoint_dir,
    read_checkpoint,
    write_checkpoint,
)
from edge_tune.errors import CheckpointError, DataError, EdgeTuneError
from edge_tune.report import MetricsLog, draw_curve, read_metrics

PRESETS = ("edge", "paper")
SELECTIONS = ("best", "final")
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "miniworld" / "bundle"
RESULT_FORMAT = 1


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides the result of a run (saved with it; resume refuses to change it)."""

    optimizer: str = "sharpzo"
    preset: str = "edge"
    seed: int = 0
    budget_queries: int | None = (
        2000  # optimiser queries (candidate prompts evaluated); None: no cap
    )
    budget_seconds: float | None = (
        None  # seconds of tuning (feature caching excluded); None: no cap
    )
    val_fraction: float = 0.2  # hold-out of the shots for validation when no eval set is given
    eval_every: int = 10  # steps between evaluations of the current prompt (train + validation)
    checkpoint_every: float = 60.0  # seconds between checkpoints (and one at the end)
    # Which prompt the artifact holds. "final" by default: on the mini-world benchmark the best-on-
    # validation prompt was 0-5.5 points below the final one (a 30-image hold-out, scored every 10
    # steps, picks noise; docs/accuracy.md), and with --eval it would be chosen on the test set.
    select: str = "final"
    init: str = "a photo of a"  # phrase whose token embeddings initialise the context
    prompt_dim: int = 512  # d, the tuned vector's size (SharpZO Table 8)
    projection_std: float | None = None  # std of the projection A; None: the prompt space's default
    parameterisation: str = "sharpzo"  # "sharpzo" (ctx0 + A·w) or "coop" (free context vectors)

    def __post_init__(self) -> None:
        from edge_tune.optim import OPTIMIZERS

        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.preset not in PRESETS:
            problems.append(f"preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.select not in SELECTIONS:
            problems.append(f"select {self.select!r} is not one of {', '.join(SELECTIONS)}")
        if self.budget_queries is not None and self.budget_queries < 1:
            problems.append(f"budget_queries must be at least 1, got {self.budget_queries}")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            problems.append(f"budget_seconds must be positive, got {self.budget_seconds}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.eval_every < 1:
            problems.append(f"eval_every must be at least 1, got {self.eval_every}")
        if not self.checkpoint_every > 0:
            problems.append(f"checkpoint_every must be positive, got {self.checkpoint_every}")
        if problems:
            raise EdgeTuneError("; ".join(problems), hint="Fix the fit settings")


@dataclass(frozen=True)
class Budget:
    """When `run` stops: after `queries` optimiser queries or `seconds` of tuning, first."""

    queries: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class FitState:
    """A snapshot of a run, for callbacks, progress lines and apps (`Tuner.state`)."""

    step: int
    queries: int  # optimiser queries: candidate prompts evaluated on the training shots
    eval_queries: int  # prompts evaluated to measure accuracy (not counted in the budget)
    seconds: float  # tuning time, summed over resumed sessions
    stage: str
    train_loss: float | None
    train_accuracy: float | None
    val_accuracy: float | None
    zero_shot_accuracy: float  # on the validation set when there is one, else on the shots
    best_val_accuracy: float | None
    best_step: int | None
    params: np.ndarray = field(repr=False)
    finished: bool  # True once a budget ran out (not after stop())


# --- small pure helpers ------------------------------------------------------------------------

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$"
)


def parse_duration(text: str) -> float:
    """`"20m"` -> 1200.0; accepts `90`, `90s`, `20m`, `1h30m`, `1.5h`."""
    match = _DURATION.match(str(text))
    if not match or not any(match.groups()):
        raise EdgeTuneError(
            f"cannot read the duration {text!r}", hint="Write it like 90s, 20m or 1h30m"
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise EdgeTuneError(f"the duration {text!r} is not positive", hint="Give a positive time")
    return total


def resolve_bundle(path: str | Path | None) -> Path:
    """The bundle to use: the argument, else $EDGE_TUNE_BUNDLE, else the shipped mini-world one."""
    from edge_tune.errors import BundleError

    if path is not None:
        return Path(path)
    if os.environ.get("EDGE_TUNE_BUNDLE"):
        return Path(os.environ["EDGE_TUNE_BUNDLE"])
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    raise BundleError(
        "no bundle given and the shipped mini-world bundle is not there",
        path=DEFAULT_BUNDLE,
        hint="Pass --bundle DIR (or set EDGE_TUNE_BUNDLE)",
    )


def new_run_dir(base: str | Path = "runs") -> Path:
    """A fresh `runs/<date-time>` directory name (suffixed when two runs start in one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / stamp
    suffix = 2
    while path.exists():
        path, suffix = Path(base) / f"{stamp}-{suffix}", suffix + 1
    return path


def dataset_hash(dataset) -> str:
    """sha256 over class names and every sample's relative path, label and file content."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(dataset.classnames)).encode())
    root = Path(dataset.root)
    for sample in dataset.samples:
        path = Path(sample.path)
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.name
        digest.update(f"\n{name}\t{int(sample.label)}\t".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def return_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc `malloc_trim`); a no-op elsewhere.

    glibc keeps freed small blocks (the tokenizer's, the image session's) in its arenas, so RSS
    stays at the high-water mark of setup unless they are trimmed.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)  # the symbols already loaded: libc's among them
    except (OSError, AttributeError):  # musl or another libc without malloc_trim
        pass


# --- the tuner --------------------------------------------------------------------------------


class Tuner:
    """A prompt-tuning run over one bundle and one set of shots; `run()` it or `step()` it yourself.

    Args:
        bundle: a bundle directory or an opened `Bundle`.
        shots: a shots folder (`shots/<class>/*.jpg`) or a loaded `Dataset`.
        eval_set: a folder or `Dataset` to validate on; else `config.val_fraction` of the shots.
        run_dir: where checkpoints, metrics.jsonl and artifacts go (None: keep it in memory).
    """

    def __init__(
        self,
        bundle,
        shots,
        *,
        eval_set=None,
        config: FitConfig | None = None,
        run_dir: str | Path | None = None,
        provider: str = "auto",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        feature_progress=None,
    ):
        from edge_tune.bundle import Bundle, open_bundle
        from edge_tune.data import load_eval, load_shots, split_holdout
        from edge_tune.features import image_features
        from edge_tune.objective import PromptObjective
        from edge_tune.optim import make_optimizer
        from edge_tune.prompts import PromptSpace

        self.config = config = config if config is not None else FitConfig()
        self.budget = Budget(config.budget_queries, config.budget_seconds)
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        shots = shots if hasattr(shots, "samples") else load_shots(shots)
        if len(shots.classnames) < 2:  # load_shots refuses this too; a hand-made Dataset may not
            raise DataError(
                f"only {len(shots.classnames)} class(es); a classifier needs at least 2",
                path=shots.root,
                hint="Add a folder of photos for each other class",
            )
        self.data_hash = dataset_hash(shots)
        self.sources = {
            "bundle": str(Path(self.bundle.path).resolve()),
            "data": str(Path(shots.root).resolve()),
            "eval": None,
        }
        if eval_set is not None:
            if not hasattr(eval_set, "samples"):
                eval_set = load_eval(eval_set, shots)
            elif list(eval_set.classnames) != list(shots.classnames):
                raise DataError(
                    "evaluation classes differ from the training classes",
                    path=eval_set.root,
                    hint="Use the same class folders for both",
                )
            self.sources["eval"] = str(Path(eval_set.root).resolve())
            train, val = shots, eval_set
        elif config.val_fraction > 0:
            train, val = split_holdout(shots, config.val_fraction, config.seed)
        else:
            train, val = shots, None
        self.eval_hash = dataset_hash(eval_set) if eval_set is not None else None
        self.datasets = {"shots": shots, "eval": eval_set}  # for the CLI to report skipped files
        self.classnames = list(shots.classnames)

        # Image features once (from the on-disk cache when possible); the image session is not kept.
        def features(dataset):
            return image_features(
                self.bundle,
                dataset,
                cache_dir=cache_dir,
                provider=provider,
                threads=threads,
                progress=feature_progress,
            )

        train_x, train_y = features(train)
        val_xy = features(val) if val is not None else None

        # The prompt space and one text session shared by the training and validation objectives.
        self.space = PromptSpace.build(
            self.bundle,
            self.classnames,
            init=config.init,
            dim=config.prompt_dim,
            projection_std=config.projection_std,
            seed=config.seed,
            parameterisation=config.parameterisation,
        )
        # The loop needs neither the tokenizer nor the image session's freed heap: hand both back
        # before the text session grows its own (bench memory: the fit's peak is the loop's).
        self.bundle.release_tokenizer()
        return_free_memory()
        self.text_session = self.bundle.objective_session(provider=provider, threads=threads)
        scale = self.bundle.logit_scale
        self.objective = PromptObjective(
            self.text_session, self.space, train_x, train_y, logit_scale=scale
        )
        self.val_objective = None
        if val_xy is not None:
            self.val_objective = PromptObjective(
                self.text_session, self.space, *val_xy, logit_scale=scale
            )
        self.num_train, self.num_val = len(train_y), (0 if val is None else len(val.samples))

        self.optimizer = make_optimizer(
            config.optimizer, self.space.dim, preset=config.preset, seed=config.seed
        )
        self.opt_state = self.optimizer.init(np.zeros(self.space.dim))

        # Zero-shot: the template prompt itself (w = 0), the line every curve is read against.
        zero = self._evaluate(np.zeros(self.space.dim))
        self.zero_shot = zero
        self.step_count = 0
        self.queries = 0
        self.eval_queries = 0
        self.seconds = 0.0
        self.stage = "start"
        self.last_eval = {**zero, "step": None}
        self.best_w = np.zeros(self.space.dim)
        self.best_val_accuracy = zero["val_accuracy"]
        self.best_step: int | None = 0 if val is not None else None
        self.finished = False
        self._stop_requested = False
        self.history: list[dict] = []
        self.run_dir: Path | None = None
        self.metrics: MetricsLog | None = None
        if run_dir is not None:
            self.attach(run_dir)

    # -- the loop ------------------------------------------------------------------------------

    def step(self) -> dict:
        """One optimiser step (one batched objective call); returns the optimiser's info."""
        return self._step(self.optimizer.ask(self.opt_state))

    def _step(self, candidates: np.ndarray) -> dict:
        started = time.perf_counter()
        val_accuracy = None
        if self.step_count % self.config.eval_every == 0:
            val_accuracy = self._log_evaluation()["val_accuracy"]
        losses = self.objective(candidates)
        self.opt_state, info = self.optimizer.tell(
            self.opt_state, losses, val_accuracy=val_accuracy
        )
        self.queries += len(candidates)
        self.step_count += 1
        self.stage = str(info.get("stage", self.stage))
        self.seconds += time.perf_counter() - started
        return info

    def run(
        self,
        callback: Callable[[Tuner, dict], bool | None] | None = None,
        budget: Budget | None = None,
    ) -> FitState:
        """Step until the budget runs out, `stop()` is called or `callback` returns False."""
        if budget is not None:
            self.budget = budget
        self._stop_requested = self.finished = False
        with loop_blas_threads():
            self._loop(callback)
        if self.run_dir is not None:
            self.save()
        return self.state

    def _loop(self, callback) -> None:
        """The steps of `run`, checkpointing every `checkpoint_every` seconds."""
        last_checkpoint = time.monotonic()
        while not self._stop_requested:
            candidates = self.optimizer.ask(self.opt_state)
            if self._budget_exhausted(len(candidates)):
                self.finished = True
                break
            info = self._step(candidates)
            self._check_time_budget_fits_a_step()
            if callback is not None and callback(self, info) is False:
                break
            if (
                self.run_dir is not None
                and time.monotonic() - last_checkpoint >= self.config.checkpoint_every
            ):
                self.save()
                last_checkpoint = time.monotonic()

    def stop(self) -> None:
        """Ask `run` to stop after the current step (safe from a signal handler or a thread)."""
        self._stop_requested = True

    def _budget_exhausted(self, next_step_queries: int) -> bool:
        queries, seconds = self.budget.queries, self.budget.seconds
        if queries is not None and self.queries + next_step_queries > queries:
            if self.step_count == 0:
                raise EdgeTuneError(
                    f"the query budget ({queries}) is smaller than one step "
                    f"({next_step_queries} queries)",
                    hint=f"Give --budget-queries of at least {next_step_queries}",
                )
            return True
        return seconds is not None and self.seconds >= seconds

    def _check_time_budget_fits_a_step(self) -> None:
        seconds = self.budget.seconds
        if seconds is not None and self.step_count == 1 and self.seconds > seconds:
            raise EdgeTuneError(
                f"the time budget ({seconds:g}s) is shorter than one step "
                f"({self.seconds:.1f}s here)",
                hint=f"Give --budget-time of at least {math.ceil(self.seconds * 10)}s",
            )

    # -- evaluation and best-so-far ------------------------------------------------------------

    def _evaluate(self, w: np.ndarray) -> dict:
        """Loss and accuracy of one prompt on the shots and on the validation set."""
        W = np.asarray(w, dtype=np.float64)[None, :]
        train_loss, train_acc = self.objective.evaluate(W)
        result = {
            "train_loss": float(train_loss[0]),
            "train_accuracy": float(train_acc[0]),
            "val_loss": None,
            "val_accuracy": None,
        }
        if self.val_objective is not None:
            val_loss, val_acc = self.val_objective.evaluate(W)
            result.update(val_loss=float(val_loss[0]), val_accuracy=float(val_acc[0]))
        return result

    @property
    def zero_shot_accuracy(self) -> float:
        key = "val_accuracy" if self.val_objective is not None else "train_accuracy"
        return self.zero_shot[key]

    def _log_evaluation(self) -> dict:
        w = np.array(self.optimizer.params(self.opt_state), dtype=np.float64)
        result = self._evaluate(w)
        self.eval_queries += 1 if self.val_objective is None else 2
        if result["val_accuracy"] is not None and result["val_accuracy"] > self.best_val_accuracy:
            self.best_val_accuracy = result["val_accuracy"]
            self.best_w = w
            self.best_step = self.step_count
        self.last_eval = {**result, "step": self.step_count}
        record = {
            "step": self.step_count,
            "queries": self.queries,
            "eval_queries": self.eval_queries,
            "seconds": round(self.seconds, 3),
            "stage": self.stage,
            **result,
            "best_val_accuracy": self.best_val_accuracy,
        }
        self.history.append(record)
        if self.metrics is not None:
            self.metrics.append(record)
        return result

    @property
    def state(self) -> FitState:
        return FitState(
            step=self.step_count,
            queries=self.queries,
            eval_queries=self.eval_queries,
            seconds=self.seconds,
            stage=self.stage,
            train_loss=self.last_eval["train_loss"],
            train_accuracy=self.last_eval["train_accuracy"],
            val_accuracy=self.last_eval["val_accuracy"],
            zero_shot_accuracy=self.zero_shot_accuracy,
            best_val_accuracy=self.best_val_accuracy,
            best_step=self.best_step,
            params=np.array(self.optimizer.params(self.opt_state)),
            finished=self.finished,
        )

    # -- run directory: checkpoints ------------------------------------------------------------

    def attach(self, run_dir: str | Path, *, metrics_offset: int | None = None) -> None:
        """Use `run_dir` for checkpoints, metrics and artifacts (a fresh run needs an empty one)."""
        run_dir = Path(run_dir)
        fresh = metrics_offset is None
        if fresh and run_dir.exists():
            entries = {entry.name for entry in run_dir.iterdir()}
            # A run killed before its first checkpoint left only these; anything else is refused.
            stillborn = entries <= {"metrics.jsonl", "state"} and checkpoint_dir(run_dir) is None
            if entries and not stillborn:
                raise CheckpointError(
                    "the run directory is not empty",
                    path=run_dir,
                    hint="Continue it with --resume, or choose another --out",
                )
            if stillborn:
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", offset=metrics_offset)
        if fresh:
            for record in self.history:
                self.metrics.append(record)
            self.save()  # from now on `--resume` works, whenever the process dies
        else:
            self.history = read_metrics(run_dir / "metrics.jsonl")

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Checkpoint the whole run (optimiser state, counters, best-so-far) atomically."""
        if run_dir is not None and self.run_dir is None:
            self.attach(run_dir)
        if self.run_dir is None:
            raise CheckpointError("this tuner has no run directory", hint="Call save(run_dir)")
        record = {
            "step": self.step_count,
            "queries": self.queries,
            "eval_queries": self.eval_queries,
            "seconds": self.seconds,
            "stage": self.stage,
            "finished": self.finished,
            "config": asdict(self.config),
            "budget": asdict(self.budget),
            "bundle_hash": self.bundle.bundle_hash,
            "data_hash": self.data_hash,
            "eval_hash": self.eval_hash,
            "sources": self.sources,
            "optimizer": self.optimizer.name,
            "best": {"val_accuracy": self.best_val_accuracy, "step": self.best_step},
            "last_eval": self.last_eval,
            "metrics_offset": self.metrics.offset if self.metrics else 0,
        }
        return write_checkpoint(
            self.run_dir,
            step=self.step_count,
            record=record,
            arrays={"best_w": self.best_w},
            optimizer_state=self.opt_state,
        )

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        *,
        bundle=None,
        shots=None,
        eval_set=None,
        provider: str = "auto",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        feature_progress=None,
    ) -> Tuner:
        """Continue a checkpointed run; refuses another bundle or other data (writing nothing)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(
                "no such run directory",
                path=run_dir,
                hint="Pass the --out directory of an earlier `edge-tune fit`",
            )
        checkpoint = read_checkpoint(run_dir)
        record = checkpoint.record
        sources = record["sources"]
        config = FitConfig(**record["config"])
        from edge_tune.bundle import Bundle, open_bundle
        from edge_tune.data import load_eval, load_shots

        def refuse_if_changed(what: str, mine: str | None, theirs: str | None) -> None:
            if mine != theirs:  # checked before anything is computed or written
                raise CheckpointError(
                    f"the run was made with {what} (hash {str(theirs)[:12]}, "
                    f"now {str(mine)[:12]}); nothing was changed",
                    path=run_dir,
                    hint=f"Resume with the {what.split(' ', 1)[1]} it was made with, "
                    "or start a new run with --out",
                )

        bundle = bundle if bundle is not None else sources["bundle"]
        bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        refuse_if_changed("another bundle", bundle.bundle_hash, record["bundle_hash"])
        shots = shots if shots is not None else sources["data"]
        shots = shots if hasattr(shots, "samples") else load_shots(shots)
        refuse_if_changed("other data", dataset_hash(shots), record["data_hash"])
        if eval_set is None and sources.get("eval"):
            eval_set = sources["eval"]
        if eval_set is not None and not hasattr(eval_set, "samples"):
            eval_set = load_eval(eval_set, shots)
        refuse_if_changed(
            "other evaluation data",
            None if eval_set is None else dataset_hash(eval_set),
            record["eval_hash"],
        )
        tuner = cls(
            bundle,
            shots,
            eval_set=eval_set,
            config=config,
            provider=provider,
            threads=threads,
            cache_dir=cache_dir,
            feature_progress=feature_progress,
        )
        tuner.opt_state = checkpoint.optimizer_state
        tuner.step_count, tuner.queries = int(record["step"]), int(record["queries"])
        tuner.eval_queries, tuner.seconds = int(record["eval_queries"]), float(record["seconds"])
        tuner.stage, tuner.finished = record["stage"], bool(record["finished"])
        tuner.budget = Budget(**record["budget"])
        tuner.best_val_accuracy = record["best"]["val_accuracy"]
        tuner.best_step = record["best"]["step"]
        tuner.best_w = np.array(checkpoint.arrays["best_w"], dtype=np.float64)
        tuner.last_eval = record["last_eval"]
        tuner.attach(run_dir, metrics_offset=int(record["metrics_offset"]))
        return tuner

    # -- the tuned artifact --------------------------------------------------------------------

    def selected_params(self) -> tuple[np.ndarray, str]:
        """The prompt the artifact holds: best-on-validation (when validated) or the final one."""
        if self.config.select == "best" and self.val_objective is not None:
            return self.best_w, "best"
        return np.array(self.optimizer.params(self.opt_state), dtype=np.float64), "final"

    def classifier(self):
        """The tuned classifier in memory: class text features baked, no text graph needed."""
        from edge_tune.classifier import Classifier

        w, _ = self.selected_params()
        return Classifier(
            classnames=list(self.classnames),
            class_features=np.asarray(self.objective.class_features(w), np.float32),
            logit_scale=float(self.bundle.logit_scale),
            bundle_hash=self.bundle.bundle_hash,
            bundle=self.bundle,
        )

    def prompt_arrays(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """`prompt.npz`: w, the tuned context tokens, and the prompt-space spec to rebuild them."""
        space = self.space
        arrays = {
            "w": np.asarray(w, dtype=np.float64),
            "context": space.context(np.asarray(w, dtype=np.float64)[None])[0].astype(np.float32),
            "ctx0": np.asarray(space.ctx0, dtype=np.float32),
            "classnames": np.array(self.classnames, dtype=np.str_),
            "context_init": np.array(space.init, dtype=np.str_),
            "parameterisation": np.array(space.parameterisation, dtype=np.str_),
            "projection_seed": np.array(space.seed, dtype=np.int64),
            "projection_std": np.array(
                np.nan if space.projection_std is None else space.projection_std, dtype=np.float64
            ),
            "spec": np.array(json.dumps(space.spec(), sort_keys=True), dtype=np.str_),
            "bundle_hash": np.array(self.bundle.bundle_hash, dtype=np.str_),
            "preset": np.array(self.config.preset, dtype=np.str_),
            "optimizer": np.array(self.config.optimizer, dtype=np.str_),
        }
        if space.projection is not None:  # seed-derived, stored anyway (f32) for numpy-build safety
            arrays["projection"] = np.asarray(space.projection, dtype=np.float32)
            arrays["projection_shape"] = np.array(space.projection.shape, dtype=np.int64)
        return arrays

    def finish(self) -> dict:
        """Evaluate the final prompt, write prompt.npz, classifier.npz, curve.png, result.json."""
        if self.last_eval.get("step") != self.step_count:
            self._log_evaluation()
        final = dict(self.last_eval)
        w, selected = self.selected_params()
        chosen = final if selected == "final" else self._evaluate(w)
        classifier = self.classifier()
        result = {
            "format": "edge-tune-run",
            "format_version": RESULT_FORMAT,
            "bundle": {
                "path": self.sources["bundle"],
                "hash": self.bundle.bundle_hash,
                "provider": getattr(self.text_session, "report", ""),
            },
            "data": {
                "shots": self.sources["data"],
                "eval": self.sources["eval"],
                "hash": self.data_hash,
                "eval_hash": self.eval_hash,
                "train_images": self.num_train,
                "val_images": self.num_val,
                "validation": (
                    "eval set"
                    if self.sources["eval"]
                    else "hold-out"
                    if self.val_objective is not None
                    else "none"
                ),
            },
            "classnames": self.classnames,
            "config": asdict(self.config),
            "zero_shot": self.zero_shot,
            "final": {
                k: final[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
            },
            "best": {"val_accuracy": self.best_val_accuracy, "step": self.best_step},
            "selected": selected,
            "tuned": {
                k: chosen[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
            },
            "zero_shot_accuracy": self.zero_shot_accuracy,
            "tuned_accuracy": chosen[
                "val_accuracy" if self.val_objective is not None else "train_accuracy"
            ],
            "steps": self.step_count,
            "queries": self.queries,
            "eval_queries": self.eval_queries,
            "seconds": round(self.seconds, 3),
            "stage": self.stage,
            "finished": self.finished,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if self.run_dir is not None:
            atomic_save_npz(self.run_dir / "prompt.npz", self.prompt_arrays(w))
            classifier.save(self.run_dir / "classifier.npz")
            draw_curve(
                self.history,
                self.run_dir / "curve.png",
                zero_shot=self.zero_shot_accuracy,
                title=f"edge-tune fit: {self.config.optimizer} ({self.config.preset}), "
                f"{len(self.classnames)} classes",
            )
            atomic_write_json(self.run_dir / "result.json", result)
        return result


@contextlib.contextmanager
def stop_on_signals(tuner: Tuner, *, notify: Callable[[str], None] | None = None):
    """While inside, SIGINT/SIGTERM ask `tuner` to stop after its step (a second one interrupts).

    Yields a list that receives the signal numbers caught, so the caller can exit 128 + signum.
    """
    caught: list[int] = []

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        tuner.stop()
        if notify is not None:
            notify(
                f"{signal.Signals(signum).name}: saving a checkpoint after this step "
                "(press Ctrl-C again to abort at once)"
            )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def fit(config: FitConfig, *, bundle, data, eval_set=None, run_dir=None, **options) -> dict:
    """Tune from start to finish (the CLI's `fit` without a terminal); returns result.json."""
    tuner = Tuner(bundle, data, eval_set=eval_set, config=config, run_dir=run_dir, **options)
    tuner.run()
    return tuner.finish()


__all__ = [
    "Budget",
    "FitConfig",
    "FitState",
    "Tuner",
    "fit",
    "parse_duration",
    "resolve_bundle",
    "stop_on_signals",
]
