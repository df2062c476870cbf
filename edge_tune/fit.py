"""The tuning loop: shots in, the best classifier the shots can prove out, forward passes only.

Read it top to bottom like nanoGPT's train.py. `Tuner` caches the image features once, deals the
shots into k stratified folds, fits the cheap heads (nearest class mean, GDA, a logistic probe,
Tip-Adapter) in closed form and scores them out of fold, then tunes one prompt per fold on the other
folds — interleaved, so every budget spreads evenly over the folds:

    fold = the fold with the fewest queries so far
    W = ask(state[fold]); losses = objective[fold](W); state[fold] = tell(state[fold], losses)

Each fold's objective scores a candidate prompt alone, or (`tune_for="hybrid"`) through the hybrid it
would become (text logits + the best head's out-of-fold logits), so the prompt learns what the head
cannot. Every
`eval_every` rounds each fold's prompt is scored on its held-out fold (the cross-validated accuracy,
which also feeds SharpZO's plateau switch) and, if an `eval_set` was given, on it — a report only.
`finish()` compares zero-shot, every head, zero-shot + head, the tuned prompt (the fold prompts'
ensemble) and prompt + head on the same folds and ships the best (`edge_tune.select`).

    tuner = Tuner("bundles/b16", "shots/", config=FitConfig(budget_queries=2000))
    tuner.run()
    result = tuner.finish()
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from edge_tune import fitsetup, rundir, select
from edge_tune.atomic import atomic_write_json
from edge_tune.blas import loop_blas_threads
from edge_tune.checkpoint import read_checkpoint, write_checkpoint
from edge_tune.errors import CheckpointError, EdgeTuneError
from edge_tune.heads import HEAD_NAMES, apply_head, fit_head
from edge_tune.memory import peak_rss_mib
from edge_tune.objective import ensemble, score
from edge_tune.optim import OPTIMIZERS, PRESETS
from edge_tune.prompts import DEFAULT_INIT
from edge_tune.report import MetricsLog, draw_curve, read_metrics

HEAD_CHOICES = ("auto", "none", *HEAD_NAMES)
TUNE_FOR = ("prompt", "hybrid")
#: The mini-world bundle, package data: what `fit`, `eval` and `info` use without --bundle.
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "bundles" / "miniworld"
RESULT_FORMAT = 2


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides the result of a run (saved with it; resume refuses to change it)."""

    optimizer: str = OPTIMIZERS[0]  # the registry lists the default first
    preset: str = PRESETS[0]
    seed: int = 0
    budget_queries: int | None = 2000  # optimiser queries over all folds; None: no cap
    budget_seconds: float | None = (
        None  # seconds of tuning (feature caching excluded); None: no cap
    )
    folds: int = select.DEFAULT_FOLDS  # cross-validation folds of the shots (fewer if few images)
    head: str = "auto"  # the image heads to consider: auto (all), none, or one of HEAD_NAMES
    # Score candidate prompts alone ("prompt", then blend a head on) or through the hybrid they
    # would become ("hybrid"). DEVIATION(issue 18's proposal): "prompt" is the default because on 9
    # mini-world tasks x 3 seeds what ships was 70.7 vs 70.5 % at 4 shots and 74.5 vs 74.1 at 16, and
    # every prompt + head blend 0.3-1.4 points higher (docs/accuracy.md, "Tuning the prompt for
    # the hybrid").
    tune_for: str = "prompt"
    eval_every: int = 10  # rounds (one step of every fold) between evaluations
    checkpoint_every: float = 60.0  # seconds between checkpoints (and one at the end)
    init: str = DEFAULT_INIT  # phrase whose token embeddings initialise the context
    prompt_dim: int = 512  # d, the tuned vector's size (SharpZO Table 8)
    projection_std: float | None = None  # std of A; None: presets.projection_std(preset)
    parameterisation: str = "sharpzo"  # "sharpzo" (ctx0 + A·w) or "coop" (free context vectors)

    def __post_init__(self) -> None:
        problems = []
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("preset", self.preset, PRESETS),
            ("head", self.head, HEAD_CHOICES),
            ("tune_for", self.tune_for, TUNE_FOR),
        ):
            if value not in allowed:
                problems.append(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.budget_queries is not None and self.budget_queries < 1:
            problems.append(f"budget_queries must be at least 1, got {self.budget_queries}")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            problems.append(f"budget_seconds must be positive, got {self.budget_seconds}")
        if self.folds < 2:
            problems.append(f"folds must be at least 2, got {self.folds}")
        if self.eval_every < 1:
            problems.append(f"eval_every must be at least 1, got {self.eval_every}")
        if not self.checkpoint_every > 0:
            problems.append(f"checkpoint_every must be positive, got {self.checkpoint_every}")
        if problems:
            raise EdgeTuneError("; ".join(problems), hint="Fix the fit settings")

    @property
    def heads(self) -> tuple[str, ...]:
        return {"auto": HEAD_NAMES, "none": ()}.get(self.head, (self.head,))


@dataclass(frozen=True)
class Budget:
    """When `run` stops: after `queries` optimiser queries or `seconds` of tuning, first."""

    queries: int | None = None
    seconds: float | None = None


@dataclass
class RunState:
    """The whole mutable state of a run besides the optimiser states: saved and restored as one."""

    folds: int
    step: int = 0  # optimiser steps, all folds
    queries: int = 0  # optimiser queries: candidate prompts scored on a fold's training shots
    eval_queries: int = 0  # prompts scored to measure accuracy (not counted in the budget)
    seconds: float = 0.0  # tuning time, summed over resumed sessions
    finished: bool = False  # True once a budget ran out (not after stop())
    fold_queries: list = field(default_factory=list)
    fold_steps: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    pending_val: list = field(default_factory=list)  # a fold's held-out accuracy for its next tell
    last_eval: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in (
            ("fold_queries", 0),
            ("fold_steps", 0),
            ("stages", "start"),
            ("pending_val", None),
        ):
            if not getattr(self, name):
                setattr(self, name, [value] * self.folds)

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> RunState:
        return cls(**{f.name: record[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class FitState:
    """A snapshot of a run, for callbacks, progress lines and apps (`Tuner.state`)."""

    step: int
    queries: int
    eval_queries: int
    seconds: float
    stage: str  # the stage of the fold that stepped last (SharpZO: warmup, sparse-zo)
    train_loss: float | None  # mean over folds, on each fold's training shots
    train_accuracy: float | None
    val_accuracy: float | None  # cross-validated: each fold's prompt on its held-out fold
    eval_accuracy: float | None  # on --eval, report only
    zero_shot_accuracy: float  # cross-validated (the template needs no training)
    finished: bool


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


def fold_seed(seed: int, fold: int) -> int:
    """The optimiser seed of fold `fold`: distinct per fold, a pure function of (seed, fold)."""
    return int(np.random.SeedSequence([int(seed), int(fold)]).generate_state(1)[0])


def _data_roots(datasets: dict) -> list[Path]:
    """The folders a run reads its images from (its run directory must lie outside them)."""
    return [Path(d.root) for d in datasets.values() if d is not None]


def _refuse_if_changed(run_dir, what: str, mine: str | None, theirs: str | None) -> None:
    if mine != theirs:
        raise CheckpointError(
            f"the run was made with {what} (hash {str(theirs)[:12]}, now {str(mine)[:12]}); "
            "nothing was changed",
            path=run_dir,
            hint=f"Resume with the {what.split(' ', 1)[1]} it was made with, "
            "or start a new run with --out",
        )


# --- the tuner --------------------------------------------------------------------------------


class Tuner:
    """A run over one bundle and one set of shots; `run()` it, then `finish()` it.

    Args:
        bundle: a bundle directory or an opened `Bundle`.
        shots: a shots folder (`shots/<class>/*.jpg`) or a loaded `Dataset`.
        eval_set: a folder or `Dataset` to report accuracy on (never used for any choice).
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
        _expect: dict | None = None,  # Tuner.resume: the hashes the run was made with
    ):
        from edge_tune.optim import make_optimizer

        self.config = config = config if config is not None else FitConfig()
        self.budget = Budget(config.budget_queries, config.budget_seconds)
        inputs = fitsetup.read_inputs(bundle, shots, eval_set)  # hashed, nothing encoded yet
        if _expect is not None:
            for key, what in (
                ("bundle_hash", "another bundle"),
                ("data_hash", "other data"),
                ("eval_hash", "other evaluation data"),
            ):
                _refuse_if_changed(_expect["run_dir"], what, inputs.hashes[key], _expect[key])
        self._lock: rundir.RunLock | None = None
        if run_dir is not None:  # a bad --out fails before any image is encoded
            run_dir = Path(run_dir)
            self._lock = rundir.claim_fresh(run_dir, inputs=_data_roots(inputs.datasets))
        self.setup = fitsetup.prepare(
            inputs, config, provider=provider, threads=threads, cache_dir=cache_dir,
            feature_progress=feature_progress,
        )  # fmt: skip
        k = len(self.objectives)
        self.optimizers = [
            make_optimizer(
                config.optimizer,
                self.space.dim,
                preset=config.preset,
                seed=fold_seed(config.seed, fold),
            )
            for fold in range(k)
        ]
        self.opt_states = [opt.init(np.zeros(self.space.dim)) for opt in self.optimizers]
        self.run_state = RunState(folds=k, eval_queries=1)  # 1: the zero-shot features
        self.history: list[dict] = []
        self._texts: tuple[int, list[np.ndarray]] | None = None  # (step, fold prompts' features)
        self._full_heads: dict[tuple, dict] = {}  # heads fitted on all the shots (_full_head)
        self._stop_requested = False
        self.run_dir: Path | None = None
        self.metrics: MetricsLog | None = None
        self._budget_exhausted(len(self.optimizers[0].ask(self.opt_states[0])))  # fits a step?
        self._evaluate()
        if run_dir is not None:
            self.attach(run_dir)

    def __getattr__(self, name: str):
        """The setup's fields read as the tuner's own (`tuner.X`, `tuner.space`, `tuner.bundle`)."""
        setup = self.__dict__.get("setup")
        if setup is not None and name in fitsetup.Setup.__dataclass_fields__:
            return getattr(setup, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- the loop ------------------------------------------------------------------------------

    def run(
        self,
        callback: Callable[[Tuner, dict], bool | None] | None = None,
        budget: Budget | None = None,
    ) -> FitState:
        """Step until the budget runs out, `stop()` is called or `callback` returns False."""
        if budget is not None:
            self.budget = budget
        rs = self.run_state
        self._stop_requested = rs.finished = False
        last_checkpoint = time.monotonic()
        with loop_blas_threads():
            while not self._stop_requested:
                fold, candidates = self._next()
                if self._budget_exhausted(len(candidates)):
                    rs.finished = True
                    break
                info = self._step(fold, candidates)
                self._check_time_budget_fits_a_step()
                if callback is not None and callback(self, info) is False:
                    break
                if (
                    self.run_dir is not None
                    and time.monotonic() - last_checkpoint >= self.config.checkpoint_every
                ):
                    self.save()
                    last_checkpoint = time.monotonic()
        if self.run_dir is not None:
            self.save()
        return self.state

    def step(self) -> dict:
        """One optimiser step outside `run` (no budget check); returns the optimiser's info."""
        return self._step(*self._next())

    def _next(self) -> tuple[int, np.ndarray]:
        """The fold with the fewest queries so far, and its optimiser's candidates."""
        fold = int(np.argmin(self.run_state.fold_queries))
        return fold, self.optimizers[fold].ask(self.opt_states[fold])

    def _step(self, fold: int, candidates: np.ndarray) -> dict:
        """One optimiser step of one fold (one batched objective call); returns its info."""
        rs = self.run_state
        started = time.perf_counter()
        losses = self.objectives[fold](candidates)
        self.opt_states[fold], info = self.optimizers[fold].tell(
            self.opt_states[fold], losses, val_accuracy=rs.pending_val[fold]
        )
        rs.pending_val[fold] = None
        rs.queries += len(candidates)
        rs.fold_queries[fold] += len(candidates)
        rs.fold_steps[fold] += 1
        rs.step += 1
        rs.stages[fold] = str(info.get("stage", rs.stages[fold]))
        if rs.step % (self.config.eval_every * rs.folds) == 0:
            self._evaluate()
        rs.seconds += time.perf_counter() - started
        return {**info, "fold": fold}

    def stop(self) -> None:
        """Ask `run` to stop after the current step (safe from a signal handler or a thread)."""
        self._stop_requested = True

    def _budget_exhausted(self, next_step_queries: int) -> bool:
        rs = self.run_state
        queries, seconds = self.budget.queries, self.budget.seconds
        if queries is not None and rs.queries + next_step_queries > queries:
            if rs.step == 0:
                raise EdgeTuneError(
                    f"the query budget ({queries}) is smaller than one step "
                    f"({next_step_queries} queries)",
                    hint=f"Give --budget-queries of at least {next_step_queries}",
                )
            return True
        return seconds is not None and rs.seconds >= seconds

    def _check_time_budget_fits_a_step(self) -> None:
        rs, seconds = self.run_state, self.budget.seconds
        if seconds is not None and rs.step == 1 and rs.seconds > seconds:
            raise EdgeTuneError(
                f"the time budget ({seconds:g}s) is shorter than one step ({rs.seconds:.1f}s here)",
                hint=f"Give --budget-time of at least {math.ceil(rs.seconds * 10)}s",
            )

    # -- evaluation ----------------------------------------------------------------------------

    def fold_params(self) -> np.ndarray:
        """f64[k, d]: each fold's current prompt vector."""
        return np.stack(
            [
                np.asarray(opt.params(state), dtype=np.float64)
                for opt, state in zip(self.optimizers, self.opt_states)
            ]
        )

    def _fold_text(self) -> list[np.ndarray]:
        """f64[K, P] class features of each fold's current prompt (k evaluation queries, none when
        they were computed at this step already)."""
        step = self.run_state.step
        if self._texts is None or self._texts[0] != step:
            self.run_state.eval_queries += len(self.optimizers)
            texts = [self.scorer.class_features(w).astype(np.float64) for w in self.fold_params()]
            self._texts = (step, texts)
        return self._texts[1]

    def _evaluate(self) -> dict:
        """Score every fold's prompt on its training and held-out folds; log one metrics line."""
        rs = self.run_state
        texts = self._fold_text()
        prompt_logits = self._out_of_fold_text_logits(texts)
        train_loss, train_acc, correct = [], [], 0.0
        for fold, (text, objective) in enumerate(zip(texts, self.objectives)):
            loss, acc = score(
                objective.features, objective.labels, text, self.scale, offset=objective.offset
            )
            train_loss.append(float(loss[0]))
            train_acc.append(float(acc[0]))
            held = self.folds == fold
            logits = prompt_logits[held]
            if self.val_offsets[fold] is not None:
                logits = logits + self.val_offsets[fold]
            right = np.argmax(logits, axis=1) == self.y[held]
            rs.pending_val[fold] = float(np.mean(right))
            correct += float(np.sum(right))
        record = {
            "step": rs.step,
            "queries": rs.queries,
            "eval_queries": rs.eval_queries,
            "seconds": round(rs.seconds, 3),
            "stage": self.stage,
            "train_loss": float(np.mean(train_loss)),
            "train_accuracy": float(np.mean(train_acc)),
            "val_accuracy": correct / len(self.y),
            "eval_accuracy": self._eval_report(texts),
        }
        rs.last_eval = record
        self.history.append(record)
        if self.metrics is not None:
            self.metrics.append(record)
        return record

    def _out_of_fold_text_logits(self, texts: list[np.ndarray]) -> np.ndarray:
        """f64[N, K]: each image's text logits from the prompt of its own fold (tuned without it)."""
        logits = np.zeros((len(self.y), len(self.classnames)))
        for fold, text in enumerate(texts):
            held = self.folds == fold
            logits[held] = self.scale * self.X[held] @ text.T
        return logits

    def _eval_report(self, texts: list[np.ndarray]) -> float | None:
        """Accuracy on --eval of the fold prompts' ensemble under the tuning blend (report only)."""
        if self.eval_xy is None:
            return None
        X, y = self.eval_xy
        logits = self.scale * X @ ensemble(texts).T
        if self.offset_weight:
            blend = self.tuning_blend
            logits = logits + self.offset_weight * apply_head(
                blend.head, self._full_head(blend.head, blend.hyper), X
            )
        return float(np.mean(np.argmax(logits, axis=1) == y))

    def _full_head(self, name: str, hyper: dict) -> dict:
        """The arrays of head `name` fitted on all the shots (once per hyper-parameters: the
        evaluations, every candidate's report and the shipped classifier share them)."""
        key = (name, tuple(sorted(hyper.items())))
        if key not in self._full_heads:
            self._full_heads[key] = fit_head(name, self.X, self.y, len(self.classnames), hyper)
        return self._full_heads[key]

    @property
    def stage(self) -> str:
        stages = sorted(set(self.run_state.stages))
        return stages[0] if len(stages) == 1 else "/".join(stages)

    @property
    def state(self) -> FitState:
        rs, last = self.run_state, self.run_state.last_eval
        return FitState(
            step=rs.step,
            queries=rs.queries,
            eval_queries=rs.eval_queries,
            seconds=rs.seconds,
            stage=self.stage,
            train_loss=last.get("train_loss"),
            train_accuracy=last.get("train_accuracy"),
            val_accuracy=last.get("val_accuracy"),
            eval_accuracy=last.get("eval_accuracy"),
            zero_shot_accuracy=self.cheap[0].cv_accuracy,
            finished=rs.finished,
        )

    # -- run directory: checkpoints ------------------------------------------------------------

    def attach(self, run_dir: str | Path, *, metrics_offset: int | None = None) -> None:
        """Use `run_dir` for checkpoints, metrics and artifacts (a fresh run needs an empty one)."""
        run_dir = Path(run_dir)
        fresh = metrics_offset is None
        if self._lock is None:  # marked as edge-tune's and locked (rundir), or refused untouched
            self._lock = (
                rundir.claim_fresh(run_dir, inputs=_data_roots(self.datasets))
                if fresh
                else rundir.RunLock(run_dir)
            )
        self.run_dir = run_dir
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", offset=metrics_offset)
        if fresh:
            for record in self.history:
                self.metrics.append(record)
            self.save()  # from now on `--resume` works, whenever the process dies
        else:
            self.history = read_metrics(run_dir / "metrics.jsonl")

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Checkpoint the whole run (optimiser states, run state, settings) atomically."""
        if run_dir is not None and self.run_dir is None:
            self.attach(run_dir)
        if self.run_dir is None:
            raise CheckpointError("this tuner has no run directory", hint="Call save(run_dir)")
        record = {
            "run_state": self.run_state.to_record(),
            "config": asdict(self.config),
            "optimizers": [
                {"name": opt.name, "config": asdict(opt.config)} for opt in self.optimizers
            ],
            "budget": asdict(self.budget),
            **self.hashes,
            "sources": self.sources,
            "metrics_offset": self.metrics.offset if self.metrics else 0,
        }
        if self.metrics is not None:
            self.metrics.sync()
        return write_checkpoint(
            self.run_dir,
            step=self.run_state.step,
            record=record,
            arrays={},
            optimizer_states=self.opt_states,
        )

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        *,
        bundle=None,
        shots=None,
        eval_set=None,
        budget_queries: int | None = None,
        budget_seconds: float | None = None,
        provider: str = "auto",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        feature_progress=None,
    ) -> Tuner:
        """Continue a checkpointed run, optionally with a new budget; refuses another bundle or
        other data (writing nothing). The optimisers are rebuilt from the settings the run
        recorded, not from today's presets."""
        from edge_tune.optim import optimizer_from_config

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(
                "no such run directory",
                path=run_dir,
                hint="Pass the --out directory of an earlier `edge-tune fit`",
            )
        lock = rundir.RunLock(run_dir)  # before reading: a run in use is refused, not raced
        try:
            checkpoint = read_checkpoint(run_dir)
        except BaseException:
            lock.release()
            raise
        record = checkpoint.record
        sources = record["sources"]
        if eval_set is None and sources.get("eval"):
            eval_set = sources["eval"]
        try:
            tuner = cls(
                bundle if bundle is not None else sources["bundle"],
                shots if shots is not None else sources["data"],
                eval_set=eval_set,
                config=FitConfig(**record["config"]),
                provider=provider,
                threads=threads,
                cache_dir=cache_dir,
                feature_progress=feature_progress,
                _expect={
                    **{key: record[key] for key in ("bundle_hash", "data_hash", "eval_hash")},
                    "run_dir": run_dir,
                },
            )
        except BaseException:
            lock.release()
            raise
        tuner._lock = lock
        tuner.optimizers = [
            optimizer_from_config(o["name"], tuner.space.dim, o["config"])
            for o in record["optimizers"]
        ]
        tuner.opt_states = list(checkpoint.optimizer_states)
        tuner.run_state = RunState.from_record(record["run_state"])
        saved = Budget(**record["budget"])
        tuner.budget = Budget(
            budget_queries if budget_queries is not None else saved.queries,
            budget_seconds if budget_seconds is not None else saved.seconds,
        )
        tuner.attach(run_dir, metrics_offset=int(record["metrics_offset"]))
        return tuner

    # -- the shipped classifier ----------------------------------------------------------------

    def candidates(self) -> tuple[list[select.Blend], np.ndarray]:
        """Every classifier the run could ship, scored on the folds, and the prompts' ensemble
        features f64[K, P] (costs k evaluation queries)."""
        texts = self._fold_text()
        prompt_logits = self._out_of_fold_text_logits(texts)
        tuned = [select.text_alone("prompt", prompt_logits, self.y)]
        for blend in self.cheap:
            if blend.text and blend.head:
                tuned.append(
                    select.best_mix(
                        "prompt",
                        blend.head,
                        blend.hyper,
                        prompt_logits,
                        self.head_logits[blend.head],
                        self.y,
                    )
                )
        return self.cheap + tuned, ensemble(texts)

    def classifier(self, blend: select.Blend | None = None, prompt_features=None):
        """The classifier of `blend` (default: the one the folds choose now), its head fitted on
        all the shots; no text graph needed."""
        from edge_tune.classifier import Classifier

        if blend is None:
            candidates, prompt_features = self.candidates()
            blend = select.choose(candidates)
        text = prompt_features if blend.text == "prompt" else self.zero_shot_features
        head_arrays = {} if blend.head is None else self._full_head(blend.head, blend.hyper)
        return Classifier(
            classnames=list(self.classnames),
            class_features=np.asarray(text, np.float32),
            logit_scale=self.scale,
            bundle_hash=self.bundle.bundle_hash,
            text_weight=blend.text_weight,
            head=blend.head,
            head_arrays=head_arrays,
            head_weight=blend.head_weight,
            name=blend.name,
            bundle=self.bundle,
        )

    def finish(self) -> dict:
        """Choose what to ship on the folds; write prompt.npz, classifier.npz, curve.png and
        result.json; return result.json's content."""
        from edge_tune.prompts import save_prompt

        rs = self.run_state
        if not self.history or self.history[-1]["step"] != rs.step:
            self._evaluate()
        candidates, prompt_features = self.candidates()
        shipped = select.choose(candidates)
        classifier = self.classifier(shipped, prompt_features)
        rows = []
        for blend in candidates:
            row = blend.record()
            row["eval_accuracy"] = None
            if self.eval_xy is not None:
                X, y = self.eval_xy
                predicted = np.argmax(self.classifier(blend, prompt_features).logits(X), axis=1)
                row["eval_accuracy"] = float(np.mean(predicted == y))
            rows.append(row)
        by_name = {row["name"]: row for row in rows}
        measure = "eval_accuracy" if self.eval_xy is not None else "cv_accuracy"
        cheap_names = [b.name for b in self.cheap[1:]]
        best_cheap = min(
            (by_name[n] for n in cheap_names), key=lambda r: r["cv_loss"], default=None
        )
        result = {
            "format": "edge-tune-run",
            "format_version": RESULT_FORMAT,
            "bundle": {
                "path": self.sources["bundle"],
                "hash": self.bundle.bundle_hash,
                "provider": getattr(self.encoder.session, "report", ""),
            },
            "data": {
                "shots": self.sources["data"],
                "eval": self.sources["eval"],
                "hash": self.hashes["data_hash"],
                "eval_hash": self.hashes["eval_hash"],
                "train_images": len(self.y),
                "eval_images": 0 if self.eval_xy is None else len(self.eval_xy[1]),
                "folds": rs.folds,
            },
            "classnames": self.classnames,
            "config": asdict(self.config),
            "optimizers": [asdict(opt.config) for opt in self.optimizers],  # one per fold
            "tuned_for": None if self.tuning_blend is None else self.tuning_blend.name,
            "shipped": shipped.name,
            "candidates": rows,
            "best_cheap": None if best_cheap is None else best_cheap["name"],
            "accuracy_on": "eval set" if self.eval_xy is not None else "cross-validation",
            "zero_shot_accuracy": by_name["zero-shot"][measure],
            "tuned_accuracy": by_name[shipped.name][measure],
            "steps": rs.step,
            "queries": rs.queries,
            "eval_queries": rs.eval_queries,
            "seconds": round(rs.seconds, 3),
            "stage": self.stage,
            "finished": rs.finished,
            "peak_rss_mb": round(peak_rss_mib(), 1),  # MiB (the name predates the unit)
        }
        if self.run_dir is not None:
            save_prompt(
                self.run_dir / "prompt.npz",
                self.space,
                self.fold_params(),
                bundle_hash=self.bundle.bundle_hash,
                optimizer=self.config.optimizer,
                preset=self.config.preset,
            )
            classifier.save(self.run_dir / "classifier.npz")
            draw_curve(
                self.history,
                self.run_dir / "curve.png",
                zero_shot=self.cheap[0].cv_accuracy,
                title=f"edge-tune fit: {self.config.optimizer} ({self.config.preset}), "
                f"{len(self.classnames)} classes, {rs.folds} folds; shipped {shipped.name}",
            )
            atomic_write_json(self.run_dir / "result.json", result)
        if self._lock is not None:  # the run is complete: free it for --resume or predict
            self._lock.release()
            self._lock = None
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


__all__ = [
    "Budget",
    "FitConfig",
    "FitState",
    "RunState",
    "Tuner",
    "parse_duration",
    "resolve_bundle",
    "stop_on_signals",
]
