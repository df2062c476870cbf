"""Open a bundle directory and check it before anything runs on it.

`manifest.json` is read first; every other file is checked against its sha256 there (once per open), a
newer format version is refused, and each graph's inputs and role are checked when its session is made.
Every problem is one BundleError line naming the file and the fix. The bundle hash (sha256 of the
manifest bytes) names the whole bundle, since the manifest holds every file's hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.errors import BundleError
from edge_tune.manifest import FORMAT_VERSION, NOT_A_BUNDLE, REEXPORT, bundle_file, parse_manifest

MANIFEST = "manifest.json"
COPY_AGAIN = f"copy the whole bundle again, or {REEXPORT}"
# ORT memory settings per graph (measured in docs/bench.md). The text graph runs every query: it
# keeps its arena (the objective's run-size cap bounds it; off cost ~5% speed for ~20 MiB). The
# image graph runs once per uncached image and is dropped before the loop: without the arena its
# peak is ~50 MiB lower on ViT-B/16. Prepacking stays on for both: without it a feature depends
# on the batch it was computed in (last-bit differences), and cached features must not.
SESSION_MEMORY = {
    "text": {"cpu_arena": True, "prepacking": True},
    "text_shared": {"cpu_arena": True, "prepacking": True},
    "image": {"cpu_arena": False, "prepacking": True},
}
# role -> (input name -> (ONNX element type, rank)), output name
GRAPH_SIGNATURES = {
    "text": (
        {"prompt_embeds": ("tensor(float)", 3), "eot_index": ("tensor(int64)", 1)},
        "text_embeds",
    ),
    "image": ({"pixel_values": ("tensor(float)", 4)}, "image_embeds"),
    # optional (written by `edge-tune export` unless --no-shared-prefix): the text graph with each
    # candidate's common prefix (SOT + context) computed once for all its class prompts
    "text_shared": (
        {
            "prefix_embeds": ("tensor(float)", 3),
            "suffix_embeds": ("tensor(float)", 4),
            "eot_in_suffix": ("tensor(int64)", 2),
        },
        "text_embeds",
    ),
}
#: The input whose last axis is the text width D, per text role.
WIDTH_INPUT = {"text": "prompt_embeds", "text_shared": "prefix_embeds"}


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    bundle_hash: str
    text_width: int
    projection_dim: int
    context_length: int
    sot_id: int
    eot_id: int
    logit_scale: float
    preprocess: dict
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["dims"]["image_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["dims"]["vocab_size"])

    def file(self, name: str) -> Path:
        """The path of a file the manifest lists (and so hashes), confined to the bundle."""
        if name not in self.manifest["files"]:
            raise BundleError(
                f"{name} is not listed in manifest.json (its hash is unknown)",
                path=self.path / MANIFEST,
                hint=REEXPORT,
            )
        return bundle_file(self.path, name)

    def token_embedding(self) -> np.ndarray:
        """f32[V,D]; memory-mapped when stored as f32, so the 100 MB table of ViT-B/16 stays on disk."""
        if "token_embedding" not in self._cache:
            path = self.file("token_embedding.npy")
            try:
                table = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as err:
                raise BundleError(
                    f"cannot read the token table ({type(err).__name__}: {err})",
                    path=path,
                    hint=REEXPORT,
                ) from None
            if table.ndim != 2 or table.shape != (self.vocab_size, self.text_width):
                raise BundleError(
                    f"token table has shape {list(table.shape)}, expected "
                    f"[{self.vocab_size}, {self.text_width}]",
                    path=path,
                    hint=REEXPORT,
                )
            if table.dtype not in (np.float32, np.float16):
                raise BundleError(
                    f"token table is {table.dtype}, expected float32 or float16",
                    path=path,
                    hint=REEXPORT,
                )
            if table.dtype != np.float32:
                table = np.asarray(table, dtype=np.float32)
            self._cache["token_embedding"] = table
        return self._cache["token_embedding"]

    def tokenizer(self):
        if "tokenizer" not in self._cache:
            from edge_tune.tokenizer import ClipTokenizer

            self._cache["tokenizer"] = ClipTokenizer.from_file(self.file("tokenizer.json"))
        return self._cache["tokenizer"]

    def release_tokenizer(self) -> None:
        """Forget the cached tokenizer (~30 MB for CLIP's BPE); `tokenizer()` loads it again."""
        self._cache.pop("tokenizer", None)

    def text_session(self, provider: str = "auto", threads: int | None = None):
        return self.session("text", provider, threads)

    def has_graph(self, role: str) -> bool:
        return role in self.manifest["graphs"]

    def image_session(self, provider: str = "auto", threads: int | None = None):
        return self.session("image", provider, threads)

    def session(self, role: str, provider: str = "auto", threads: int | None = None):
        """An ORT session of the graph `role` (image, text, text_shared), checked against the manifest."""
        from edge_tune.providers import make_session

        path = self.file(self.manifest["graphs"][role]["file"])
        width = self.text_width if role in WIDTH_INPUT else None
        memory = dict(SESSION_MEMORY[role])
        if (self.manifest.get("quantization") or {}).get("mode") == "int8":
            # int8 weights prepacked are a second copy (−17 MiB fit peak without, ~4% slower),
            # and dynamic quantisation is batch-dependent anyway (docs/bench.md)
            memory["prepacking"] = False
        return make_session(
            path,
            provider,
            threads,
            role=role,
            **memory,
            validate=lambda inner: check_graph(path, role, inner, width=width),
        )


def check_graph(path: Path, role: str, inner: Any, *, width: int | None = None) -> None:
    """The graph's inputs, output and `edge_tune.*` metadata must match its role, or BundleError."""
    expected, output = GRAPH_SIGNATURES[role]
    inputs = {arg.name: (arg.type, len(arg.shape)) for arg in inner.get_inputs()}
    if inputs != expected:
        have, want = _describe_inputs(inputs), _describe_inputs(expected)
        raise BundleError(
            f"{role} graph has inputs ({have}), expected ({want})", path=path, hint=REEXPORT
        )
    outputs = [arg.name for arg in inner.get_outputs()]
    if outputs != [output]:
        raise BundleError(
            f"{role} graph has outputs {outputs}, expected [{output!r}]", path=path, hint=REEXPORT
        )
    if width is not None:
        d = next(a.shape[-1] for a in inner.get_inputs() if a.name == WIDTH_INPUT[role])
        if isinstance(d, int) and d != width:
            raise BundleError(
                f"text graph takes width {d}, manifest says {width}", path=path, hint=REEXPORT
            )
    meta = inner.get_modelmeta().custom_metadata_map
    found_role = meta.get("edge_tune.role")
    if found_role is not None and found_role != role:
        raise BundleError(
            f"graph is marked as the {found_role} graph, but the manifest uses it as {role}",
            path=path,
            hint=REEXPORT,
        )
    version = meta.get("edge_tune.format_version")
    if version is not None and version.isdigit() and int(version) > FORMAT_VERSION:
        raise BundleError(
            f"graph has format version {version}, newer than this edge-tune reads "
            f"({FORMAT_VERSION})",
            path=path,
            hint="upgrade edge-tune (pip install -U edge-tune)",
        )


def _describe_inputs(inputs: dict[str, tuple[str, int]]) -> str:
    """{"eot_index": ("tensor(int64)", 1)} -> "eot_index int64[rank 1]"."""
    return ", ".join(
        f"{name} {kind.removeprefix('tensor(').rstrip(')')}[rank {rank}]"
        for name, (kind, rank) in inputs.items()
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check `path`/manifest.json (and, with `verify`, every file's sha256)."""
    if isinstance(path, Bundle):  # already open: callers may pass either
        return path
    root = Path(path)
    if not root.exists():
        raise BundleError("bundle directory does not exist", path=root, hint=NOT_A_BUNDLE)
    if not root.is_dir():
        raise BundleError("is a file, not a bundle directory", path=root, hint=NOT_A_BUNDLE)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise BundleError("no manifest.json: not an edge-tune bundle", path=root, hint=NOT_A_BUNDLE)
    try:
        raw = bundle_file(root, MANIFEST).read_bytes()
    except OSError as err:
        raise BundleError(
            f"cannot read manifest.json ({err.strerror})", path=manifest_path, hint=COPY_AGAIN
        ) from None
    manifest = parse_manifest(raw, manifest_path)
    for name, entry in manifest["files"].items():
        file_path = bundle_file(root, name)  # confined, a regular file: before anything opens it
        if verify:
            size = file_path.stat().st_size
            if "bytes" in entry and size != entry["bytes"]:
                raise BundleError(
                    f"file has {size} bytes, manifest.json says {entry['bytes']} "
                    "(altered or truncated)",
                    path=file_path,
                    hint=COPY_AGAIN,
                )
            if sha256_file(file_path) != entry.get("sha256"):
                raise BundleError(
                    "sha256 does not match manifest.json (file altered or corrupted)",
                    path=file_path,
                    hint=COPY_AGAIN,
                )
    dims, tokens = manifest["dims"], manifest["tokens"]
    return Bundle(
        path=root,
        manifest=manifest,
        bundle_hash=hashlib.sha256(raw).hexdigest(),
        text_width=int(dims["text_width"]),
        projection_dim=int(dims["projection_dim"]),
        context_length=int(dims["context_length"]),
        sot_id=int(tokens["sot_id"]),
        eot_id=int(tokens["eot_id"]),
        logit_scale=float(manifest["logit_scale"]),
        preprocess=dict(manifest["preprocess"]),
    )


def bundle_info(
    path: str | Path,
    *,
    provider: str = "auto",
    threads: int | None = None,
    prompt: str = "a photo of a cat.",
) -> dict:
    """What `edge-tune info` shows: model, dims, files, verified hashes, providers, one timed text forward."""
    import time

    from edge_tune.providers import available_providers

    bundle = open_bundle(path, verify=True)
    session = bundle.text_session(provider, threads)
    ids = bundle.tokenizer().encode(prompt)[: bundle.context_length]
    embeds = np.asarray(bundle.token_embedding()[np.asarray(ids)], dtype=np.float32)[None]
    eot = np.asarray([len(ids) - 1], dtype=np.int64)
    feeds = {"prompt_embeds": embeds, "eot_index": eot}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        features = session.run(feeds)
        times.append(time.perf_counter() - start)
    m = bundle.manifest
    return {
        "bundle": str(bundle.path),
        "bundle_hash": bundle.bundle_hash,
        "format_version": m["format_version"],
        "model": m["model"],
        "dims": m["dims"],
        "tokens": m["tokens"],
        "logit_scale": bundle.logit_scale,
        "preprocess": m["preprocess"],
        "files": {
            name: {"bytes": entry.get("bytes"), "sha256": entry.get("sha256")}
            for name, entry in m["files"].items()
        },
        "hashes_verified": True,
        "parity": m.get("parity"),
        "exporter": m.get("exporter"),
        "providers": {
            "available": available_providers(),
            "requested": provider,
            "chosen": session.provider,
            "session": session.providers,
            "report": session.report,
        },
        "text_forward": {
            "prompt": prompt,
            "tokens": len(ids),
            "ms_median_of_3": 1000 * sorted(times)[1],
            "feature_norm": float(np.linalg.norm(features[0])),
        },
    }
