"""Optimiser state ⇄ `.npz`: bit-exact, no pickle, refused when foreign or from another version.

The file holds every leaf of the (nested) state NamedTuple under its dotted path, plus a JSON
schema naming each record's type and each scalar's kind, the strategy name, the state format
version and the numpy version (numpy promises identical random streams only on the same build).
Writes are atomic: temporary file in the same directory, fsync, os.replace.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.atomic import atomic_save_npz
from edge_tune.errors import CheckpointError
from edge_tune.optim.base import State, freeze
from edge_tune.optim.presets import STRATEGIES

STATE_FORMAT = "edge-tune-optimizer-state"
STATE_VERSION = 1
RECORDS = {strategy.state.__name__: strategy.state for strategy in STRATEGIES.values()}
STRATEGY_OF = {strategy.state.__name__: name for name, strategy in STRATEGIES.items()}
_META = "__meta__"


def _flatten(state: Any, prefix: str, arrays: dict, schema: dict) -> None:
    kind = type(state).__name__
    if kind not in RECORDS:
        raise TypeError(f"not an optimiser state: {kind}")
    schema[prefix] = kind
    for field, value in zip(state._fields, state):
        path = f"{prefix}.{field}" if prefix else field
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            _flatten(value, path, arrays, schema)
        elif isinstance(value, np.ndarray):
            schema[path] = "array"
            arrays[path] = value
        elif isinstance(value, (bool, np.bool_)):
            schema[path] = "bool"
            arrays[path] = np.array(bool(value))
        elif isinstance(value, (int, np.integer)):
            schema[path] = "int"
            arrays[path] = np.array(int(value), dtype=np.int64)
        elif isinstance(value, (float, np.floating)):
            schema[path] = "float"
            arrays[path] = np.array(float(value), dtype=np.float64)
        else:
            raise TypeError(f"cannot store {path} of type {type(value).__name__}")


def save_state(path: str | Path, state: State) -> None:
    """Write `state` to `path` (.npz) atomically; a crash leaves the previous file intact."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    schema: dict[str, str] = {}
    _flatten(state, "", arrays, schema)
    meta = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "strategy": STRATEGY_OF[schema[""]],
        "numpy": np.__version__,
        "schema": schema,
    }
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True))
    atomic_save_npz(path, arrays)


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        what,
        path=path,
        hint="It was not written by this edge-tune version's optimiser; "
        "start a new run or use the version that wrote it",
    )


def _rebuild(kind: str, prefix: str, files: Any, schema: dict, path: Path) -> Any:
    cls = RECORDS[kind]
    values = []
    for field in cls._fields:
        key = f"{prefix}.{field}" if prefix else field
        leaf = schema.get(key)
        if leaf is None:
            raise _fail(path, f"state has no {key!r}")
        if leaf in RECORDS:
            values.append(_rebuild(leaf, key, files, schema, path))
            continue
        if key not in files:
            raise _fail(path, f"state file is missing the array {key!r}")
        arr = files[key]
        if leaf == "array":
            values.append(np.array(arr))
        elif leaf == "int":
            values.append(int(arr))
        elif leaf == "float":
            values.append(float(arr))
        elif leaf == "bool":
            values.append(bool(arr))
        else:
            raise _fail(path, f"unknown kind {leaf!r} for {key!r}")
    expected = {f"{prefix}.{f}" if prefix else f for f in cls._fields}
    children = {k for k in schema if k and (k.rsplit(".", 1)[0] if "." in k else "") == prefix}
    if children - expected:
        stray = ", ".join(sorted(children - expected))
        raise _fail(path, f"state has fields this version does not know: {stray}")
    return cls(*values)


def load_state(path: str | Path, *, strategy: str | None = None) -> State:
    """Read a state written by `save_state`; refuse foreign, corrupt or other-version files.

    If `strategy` is given ("sharpzo", "cma", ...), a state of another strategy is refused too.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            "optimizer state file not found",
            path=path,
            hint="Check the run directory, or start without --resume",
        )
    try:
        with np.load(path, allow_pickle=False) as files:
            if _META not in files.files:
                raise _fail(path, "not an edge-tune optimizer state (no metadata)")
            meta = json.loads(str(files[_META]))
            if meta.get("format") != STATE_FORMAT:
                raise _fail(path, "not an edge-tune optimizer state")
            if meta.get("version") != STATE_VERSION:
                raise _fail(
                    path,
                    f"optimizer state version {meta.get('version')} "
                    f"(this edge-tune reads version {STATE_VERSION})",
                )
            if strategy is not None and meta.get("strategy") != strategy:
                other = meta.get("strategy")
                raise CheckpointError(
                    f"state is for optimizer {other!r}, not {strategy!r}",
                    path=path,
                    hint=f"Resume with --optimizer {other}",
                )
            schema = meta.get("schema", {})
            if schema.get("") not in RECORDS:
                raise _fail(path, "state file names an unknown strategy record")
            state = _rebuild(schema[""], "", {k: files[k] for k in files.files}, schema, path)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"optimizer state is unreadable ({type(err).__name__})",
            path=path,
            hint="The file is corrupt or truncated; resume from an earlier checkpoint",
        ) from None
    if meta.get("numpy") != np.__version__:
        warnings.warn(
            f"{path}: state written with numpy {meta.get('numpy')}, "
            f"running {np.__version__}; "
            "random streams may differ, so the continued run may not be bit-identical",
            stacklevel=2,
        )
    return freeze(state)
