"""Prompt parameterisations: a vector w ∈ R^d → one prompt-embedding sequence per class.

SharpZO (arXiv 2506.20990 §3, code `PromptLearner`): m context tokens start at the token embeddings
of an init phrase ("a photo of a", m = 4) and move in a d-dimensional subspace through a fixed,
seeded random projection A [m·D, d]: ctx(w) = ctx0 + reshape(A·w, (m, D)). CoOp: the m context
vectors are free, d = m·D, ctx(w) = ctx0 + reshape(w) (so w = 0 is the init phrase in both).
Each class k reads [SOT] ctx "<class name>." [EOT]; the sequence is cut to L = max(EOT)+1 positions,
which is exact because the text graph is causal and reads the EOT position only.

A is generated from the seed with our own Box–Muller over PCG64's raw stream (which numpy keeps
stable), not `Generator.standard_normal` (whose stream numpy may change), and `spec()` stores a
checksum of it, so a saved prompt rebuilds to the same A on any machine or refuses loudly.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from edge_tune.errors import CheckpointError, DataError

PARAMETERISATIONS = ("sharpzo", "coop")
#: The zero-shot prompt (CLIP's), and the phrase before its class name, whose token embeddings
#: initialise the tuned context: w = 0 is exactly zero-shot.
DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_INIT = DEFAULT_TEMPLATE.split("{}")[0].strip()
DEFAULT_DIM = 512


class PromptSpace:
    """Everything needed to turn candidate vectors W[n, d] into text-graph inputs."""

    def __init__(
        self,
        *,
        parameterisation: str,
        init: str,
        seed: int,
        projection_std: float | None,
        classnames: list[str],
        ctx0: np.ndarray,
        projection: np.ndarray | None,
        base: np.ndarray,
        eot_index: np.ndarray,
        context_length: int,
    ):
        self.parameterisation = parameterisation
        self.init = init
        self.seed = seed
        self.projection_std = projection_std
        self.classnames = list(classnames)
        self.ctx0 = ctx0  # f64[m, D]
        self.projection = projection  # f64[m*D, d] (sharpzo) or None (coop: identity)
        # A·w for a batch is W @ Aᵀ; a contiguous Aᵀ keeps it one plain BLAS call
        self._projection_t = None if projection is None else np.ascontiguousarray(projection.T)
        self.base = base  # f32[K, L, D]: SOT, ctx0, class suffix, padding
        self.eot_index = eot_index  # i64[K]
        self.context_length = context_length

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        bundle,
        classnames: Sequence[str],
        *,
        init: str = DEFAULT_INIT,
        dim: int | None = None,
        projection_std: float | None = None,
        seed: int = 0,
        parameterisation: str = "sharpzo",
    ) -> PromptSpace:
        """Tokenise the init phrase and every class; draw A (`projection_std=None`: table std)."""
        if parameterisation not in PARAMETERISATIONS:
            raise DataError(
                f"unknown prompt parameterisation {parameterisation!r}",
                hint=f"Use one of {', '.join(PARAMETERISATIONS)}",
            )
        if len(classnames) < 1:
            raise DataError("no class names given", hint="Pass at least two classes")
        table = bundle.token_embedding()
        tokenizer = bundle.tokenizer()
        sot, eot = int(bundle.sot_id), int(bundle.eot_id)
        pad = int(bundle.manifest.get("tokens", {}).get("pad_id", eot))
        context_length = int(bundle.context_length)
        width = int(table.shape[1])
        init_ids = _inner_ids(tokenizer.encode(init), sot, eot, what=f"init phrase {init!r}")
        if not init_ids:
            raise DataError(
                f"init phrase {init!r} has no tokens", hint=f'Use e.g. --init "{DEFAULT_INIT}"'
            )
        m = len(init_ids)
        suffixes = []
        for name in classnames:
            ids = _inner_ids(tokenizer.encode(f"{name}."), sot, eot, what=f"class {name!r}") + [eot]
            if 1 + m + len(ids) > context_length:
                raise DataError(
                    f"class name {name!r} is {len(ids) - 1} tokens; with {m} context tokens the "
                    f"prompt needs {1 + m + len(ids)} positions, more than the model's "
                    f"{context_length}",
                    hint="Shorten the class name (classnames.json)",
                )
            suffixes.append(ids)
        eot_index = np.array([m + len(ids) for ids in suffixes], dtype=np.int64)
        length = int(eot_index.max()) + 1
        base = np.empty((len(classnames), length, width), dtype=np.float32)
        for k, ids in enumerate(suffixes):
            row = [sot] + init_ids + ids + [pad] * (length - 1 - m - len(ids))
            base[k] = _rows(table, row)
        ctx0 = _rows(table, init_ids).astype(np.float64)
        if parameterisation == "coop":
            if dim not in (None, m * width):
                raise DataError(
                    f"the coop parameterisation has d = m·D = {m * width}, not {dim}",
                    hint="Leave --dim unset with coop",
                )
            projection, std = None, None
        else:
            dim = DEFAULT_DIM if dim is None else int(dim)
            if dim < 1:
                raise DataError(
                    f"prompt dimension {dim} must be at least 1", hint="Use e.g. --dim 512"
                )
            std = float(table_std(table) if projection_std is None else projection_std)
            if not np.isfinite(std) or std <= 0:
                raise DataError(
                    f"projection std {std} must be a positive number", hint="Use e.g. 0.02"
                )
            projection = seeded_normal(seed, (m * width, dim)) * std
        return cls(
            parameterisation=parameterisation,
            init=init,
            seed=int(seed),
            projection_std=std,
            classnames=list(classnames),
            ctx0=ctx0,
            projection=projection,
            base=base,
            eot_index=eot_index,
            context_length=context_length,
        )

    def spec(self) -> dict:
        """A plain, JSON-able description from which `from_spec` rebuilds this space exactly."""
        return {
            "parameterisation": self.parameterisation,
            "init": self.init,
            "context_tokens": self.m,
            "dim": self.dim,
            "seed": self.seed,
            "projection_std": self.projection_std,
            "text_width": self.text_width,
            "projection_sha256": self.projection_checksum(),
        }

    @classmethod
    def from_spec(cls, bundle, classnames: Sequence[str], spec: dict) -> PromptSpace:
        """Rebuild from `spec()`; `CheckpointError` if the bundle or generator no longer agree."""
        space = cls.build(
            bundle,
            classnames,
            init=spec["init"],
            dim=spec["dim"],
            projection_std=spec.get("projection_std"),
            seed=spec["seed"],
            parameterisation=spec["parameterisation"],
        )
        if space.text_width != spec.get("text_width", space.text_width) or space.m != spec.get(
            "context_tokens", space.m
        ):
            raise CheckpointError(
                f"prompt was made for text width {spec.get('text_width')} with "
                f"{spec.get('context_tokens')} context tokens, this bundle gives "
                f"{space.text_width} and {space.m}",
                path=getattr(bundle, "path", None),
                hint="Use the bundle the prompt was tuned with",
            )
        if (
            spec.get("projection_sha256", space.projection_checksum())
            != space.projection_checksum()
        ):
            raise CheckpointError(
                "the rebuilt projection A differs from the one the prompt was tuned with",
                path=getattr(bundle, "path", None),
                hint="Re-tune, or use the edge-tune version that made the prompt",
            )
        return space

    def padded(self, length: int) -> PromptSpace:
        """The same space with sequences padded to `length` positions (for truncation checks)."""
        if not self.length <= length <= self.context_length:
            raise DataError(
                f"length {length} is outside {self.length}..{self.context_length}",
                hint="Pick a length between max(EOT)+1 and the context length",
            )
        other = copy.copy(self)
        extra = length - self.length
        other.base = (
            np.concatenate([self.base, self._pad_rows(extra)], axis=1) if extra else self.base
        )
        return other

    # --- shapes ------------------------------------------------------------------------------
    @property
    def m(self) -> int:
        return int(self.ctx0.shape[0])

    @property
    def text_width(self) -> int:
        return int(self.ctx0.shape[1])

    @property
    def dim(self) -> int:
        return (
            self.m * self.text_width if self.projection is None else int(self.projection.shape[1])
        )

    @property
    def num_classes(self) -> int:
        return int(self.base.shape[0])

    @property
    def length(self) -> int:
        """L, the sequence length fed to the text graph."""
        return int(self.base.shape[1])

    # --- the map w -> prompts ----------------------------------------------------------------
    def context(self, W: np.ndarray) -> np.ndarray:
        """f64[n, m, D] context tokens for candidates W[n, d] (float64 throughout)."""
        W = self.candidates(W)
        offsets = W if self._projection_t is None else W @ self._projection_t
        return self.ctx0[None] + offsets.reshape(len(W), self.m, self.text_width)

    def embeddings(self, W: np.ndarray) -> np.ndarray:
        """f32[n*K, L, D] prompt embeddings, candidate-major (row i*K + k)."""
        W = self.candidates(W)
        return self.prompt_rows(W, 0, len(W) * self.num_classes)

    def prompt_rows(self, W: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of `embeddings(W)` without building the others (bounded memory)."""
        W = self.candidates(W)
        rows = np.arange(start, stop)
        candidate, klass = rows // self.num_classes, rows % self.num_classes
        used = np.unique(candidate)
        return self.assemble(self.context32(W[used]), np.searchsorted(used, candidate), klass)

    def context32(self, W: np.ndarray) -> np.ndarray:
        """f32[n, m, D] context tokens: the ORT boundary, where float64 is cast once."""
        return self.context(W).astype(np.float32)

    def assemble(
        self,
        context: np.ndarray,
        candidate: np.ndarray,
        klass: np.ndarray,
        length: int | None = None,
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """f32[r, length, D]: prompt r is class `klass[r]`'s sequence cut to `length` positions
        (default L) with candidate `candidate[r]`'s row of `context` (f32[n, m, D]) in it;
        written into the first r rows of `out` (f32[>= r, length, D]) when given."""
        base = self.base[:, : self.length if length is None else length]
        if out is None:
            out = base[klass]  # a copy
        else:
            out = np.take(base, klass, axis=0, out=out[: len(klass)])
        out[:, 1 : 1 + self.m, :] = context[candidate]
        return out

    # --- the same prompts split for text_shared.onnx ---------------------------------------
    @property
    def prefix_length(self) -> int:
        """P = 1 + m: SOT and the context tokens, the part every class prompt of a candidate shares."""
        return 1 + self.m

    def prefixes(self, W: np.ndarray) -> np.ndarray:
        """f32[n, P, D]: each candidate's [SOT, ctx(w)] (positions 0..P-1 of all its prompts)."""
        W = self.candidates(W)
        out = np.repeat(self.base[:1, : self.prefix_length], len(W), axis=0)
        out[:, 1:] = self.context32(W)
        return out

    def suffixes(self) -> tuple[np.ndarray, np.ndarray]:
        """(f32[K, S, D], i64[K]): each class's positions P..L-1, and its EOT index within them."""
        start = self.prefix_length
        return self.base[:, start:], (self.eot_index - start).astype(np.int64)

    def projection_checksum(self) -> str | None:
        if self.projection is None:
            return None
        return hashlib.sha256(
            np.ascontiguousarray(self.projection, dtype="<f8").tobytes()
        ).hexdigest()[:16]

    def candidates(self, W: np.ndarray) -> np.ndarray:
        """W as f64[n, d] (one vector becomes n = 1); a wrong width is a ValueError."""
        W = np.asarray(W, dtype=np.float64)
        if W.ndim == 1:
            W = W[None]
        if W.ndim != 2 or W.shape[1] != self.dim:
            raise ValueError(f"candidates must have shape [n, {self.dim}], got {list(np.shape(W))}")
        return W

    def _pad_rows(self, count: int) -> np.ndarray:
        """Extra positions: copies of each row's last one (pad or EOT), inert by causality."""
        last = self.base[:, -1:, :]
        return np.repeat(last, count, axis=1)


def check_template(template: str) -> tuple[str, str]:
    """(text before, text after) the one `{}` of a template; any other brace is a DataError (a
    `{kind}` field or a lone `{` is a mistake, not text to keep)."""
    rest = template.replace("{}", "", 1)
    if "{}" not in template or "{" in rest or "}" in rest:
        raise DataError(
            f"template {template!r} must contain '{{}}' exactly once and no other braces",
            hint=f'Use e.g. --template "{DEFAULT_TEMPLATE}"',
        )
    before, after = template.split("{}")
    return before, after


def template_prompts(
    bundle, classnames: Sequence[str], template: str = DEFAULT_TEMPLATE
) -> tuple[np.ndarray, np.ndarray]:
    """(f32[K, L, D], i64[K]) for a hand-written template, each sentence tokenised whole."""
    before, after = check_template(template)
    table = bundle.token_embedding()
    tokenizer = bundle.tokenizer()
    eot = int(bundle.eot_id)
    pad = int(bundle.manifest.get("tokens", {}).get("pad_id", eot))
    sequences = []
    for name in classnames:
        ids = list(tokenizer.encode(before + name + after))
        if len(ids) > int(bundle.context_length):
            raise DataError(
                f"the prompt for class {name!r} is {len(ids)} tokens, more than the model's "
                f"{bundle.context_length}",
                hint="Shorten the template or the class name",
            )
        sequences.append(ids)
    length = max(len(ids) for ids in sequences)
    embeds = np.stack([_rows(table, ids + [pad] * (length - len(ids))) for ids in sequences])
    eot_index = np.array([len(ids) - 1 for ids in sequences], dtype=np.int64)
    return embeds.astype(np.float32), eot_index


def seeded_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, 1) from PCG64(seed)'s raw 64-bit stream (Box–Muller): stable across numpy versions."""
    count = int(np.prod(shape))
    raw = np.random.PCG64(seed).random_raw(2 * ((count + 1) // 2))
    uniform = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u1, u2 = uniform[0::2], uniform[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    normal = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return normal[:count].reshape(shape)


def table_std(table: np.ndarray, block: int = 8192) -> float:
    """Standard deviation of all entries of the token table, in blocks of `block` rows.

    A memory-mapped table (the bundle's `token_embedding.npy`) is read with plain file reads, so
    the ~100 MB of ViT-B/16's table never becomes resident in this process (only the few rows a
    prompt uses are ever touched through the map). The blocks and their float64 arithmetic are
    the same either way, so the std, and hence the projection A, is bit-identical.
    """
    total, total_sq, count = 0.0, 0.0, 0
    for chunk in _table_blocks(table, block):
        total += float(chunk.sum())
        np.square(chunk, out=chunk)
        total_sq += float(chunk.sum())
        count += chunk.size
    mean = total / count
    return float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def _table_blocks(table: np.ndarray, block: int):
    """f64 copies of `table[start : start + block]`, read from the file when it is mapped."""
    rows, width = table.shape
    mapped = (
        isinstance(table, np.memmap)
        and getattr(table, "filename", None)
        and table.flags.c_contiguous
        and table.dtype.isnative
    )
    if not mapped:
        for start in range(0, rows, block):
            yield np.array(table[start : start + block], dtype=np.float64)
        return
    row_bytes = width * table.dtype.itemsize
    with open(table.filename, "rb") as handle:
        for start in range(0, rows, block):
            count = min(block, rows - start)
            handle.seek(int(table.offset) + start * row_bytes)
            raw = np.fromfile(handle, dtype=table.dtype, count=count * width)
            yield raw.reshape(count, width).astype(np.float64)


def _inner_ids(ids: Sequence[int], sot: int, eot: int, *, what: str) -> list[int]:
    """Token ids without the SOT/EOT the tokenizer adds."""
    ids = list(ids)
    if not ids or ids[0] != sot or ids[-1] != eot:
        raise DataError(f"tokenizer did not wrap {what} in SOT/EOT", hint="Re-export the bundle")
    return ids[1:-1]


def _rows(table: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Embedding rows for token ids, as float32, with a clear error for ids outside the table."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise DataError(
            f"token id {int(ids.max())} is outside the {table.shape[0]}-row embedding table",
            hint="The tokenizer does not match the bundle; re-export it",
        )
    return np.asarray(table[ids], dtype=np.float32)


PROMPT_FORMAT = 2  # 2: one tuned vector per cross-validation fold (`w` is f64[k, d])


def save_prompt(
    path, space: PromptSpace, W: np.ndarray, *, bundle_hash: str, optimizer: str, preset: str
) -> None:
    """Write `prompt.npz`: the tuned vectors W f64[k, d] (one per fold; the shipped text side is
    their ensemble), their context tokens, and the prompt-space spec that rebuilds them."""
    from edge_tune.atomic import atomic_save_npz

    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    atomic_save_npz(
        path,
        {
            "format_version": np.array(PROMPT_FORMAT, dtype=np.int64),
            "w": W,
            "context": space.context(W).astype(np.float32),
            "classnames": np.array(space.classnames, dtype=np.str_),
            "spec": np.array(json.dumps(space.spec(), sort_keys=True), dtype=np.str_),
            "bundle_hash": np.array(bundle_hash, dtype=np.str_),
            "optimizer": np.array(optimizer, dtype=np.str_),
            "preset": np.array(preset, dtype=np.str_),
        },
    )


def load_prompt(path, bundle) -> tuple[np.ndarray, dict, list[str]]:
    """(W f64[k, d], space spec, class names) from a tuned `prompt.npz` or a run folder holding one.

    Refuses a prompt tuned with another bundle (its `bundle_hash` differs from this bundle's).
    Format 1 files (one vector `w` f64[d]) load as k = 1.
    """
    from pathlib import Path

    path = Path(path)
    file = path / "prompt.npz" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(
            "no prompt.npz here", path=file, hint="Pass a run folder made by edge-tune fit"
        )
    try:
        with np.load(file, allow_pickle=False) as arrays:
            w = np.asarray(arrays["w"], dtype=np.float64)
            spec = json.loads(str(arrays["spec"]))
            classnames = [str(n) for n in arrays["classnames"]]
            bundle_hash = str(arrays["bundle_hash"])
    except KeyError as err:
        raise CheckpointError(
            f"prompt file lacks the array {err}",
            path=file,
            hint="Re-run edge-tune fit to write a complete prompt.npz",
        ) from err
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"prompt file is unreadable ({err})",
            path=file,
            hint="Re-run edge-tune fit to write it again",
        ) from err
    if bundle_hash != bundle.bundle_hash:
        raise CheckpointError(
            f"prompt was tuned with bundle {bundle_hash[:12]}, not this one "
            f"({bundle.bundle_hash[:12]})",
            path=file,
            hint="Pass the --bundle the prompt was tuned with",
        )
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] != spec.get("dim"):
        raise CheckpointError(
            f"w has shape {list(w.shape)} but the spec says d = {spec.get('dim')}",
            path=file,
            hint="Re-run edge-tune fit to write it again",
        )
    return w, spec, classnames
