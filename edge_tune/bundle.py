"""Open a bundle directory and check it before anything runs on it.

`manifest.json` is read first; every other file is checked against its sha256 there (once per open), a
newer format version is refused, and each graph's inputs and role are checked when its session is made.
Every problem is one BundleError line naming the file and the fix. The bundle hash (sha256 of the
manifest bytes) names the whole bundle, since the manifest holds every file's hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REEXPORT = "re-export it with `edge-tune export MODEL --out DIR`"
COPY_AGAIN = f"copy the whole bundle again, or {REEXPORT}"
# ORT memory settings per graph (measured in docs/bench.md). The text graph runs every query: it
# keeps its arena (the objective's run-size cap bounds it; off cost ~5% speed for ~20 MiB). The
# image graph runs once per uncached image and is dropped before the loop: without the arena its
# peak is ~50 MiB lower on ViT-B/16. Prepacking stays on for both: without it a feature depends
# on the batch it was computed in (last-bit differences), and cached features must not.
SESSION_MEMORY = {"text": {"cpu_arena": True, "prepacking": True},
                  "text_shared": {"cpu_arena": True, "prepacking": True},
                  "image": {"cpu_arena": False, "prepacking": True}}
# role -> (input name -> (ONNX element type, rank)), output name
GRAPH_SIGNATURES = {
    "text": ({"prompt_embeds": ("tensor(float)", 3), "eot_index": ("tensor(int64)", 1)}, "text_embeds"),
    "image": ({"pixel_values": ("tensor(float)", 4)}, "image_embeds"),
    # optional (written by `edge-tune export` unless --no-shared-prefix): the text graph with each
    # candidate's common prefix (SOT + context) computed once for all its class prompts
    "text_shared": ({"prefix_embeds": ("tensor(float)", 3), "suffix_embeds": ("tensor(float)", 4),
                     "eot_in_suffix": ("tensor(int64)", 2)}, "text_embeds"),
}
REQUIRED_GRAPHS = ("text", "image")
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
        return self.path / name

    def token_embedding(self) -> np.ndarray:
        """f32[V,D]; memory-mapped when stored as f32, so the 100 MB table of ViT-B/16 stays on disk."""
        if "token_embedding" not in self._cache:
            path = self.file("token_embedding.npy")
            try:
                table = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise BundleError(f"cannot read the token table ({err})", path=path, hint=REEXPORT) from None
            if table.ndim != 2 or table.shape[1] != self.text_width:
                raise BundleError(f"token table has shape {table.shape}, expected [V, {self.text_width}]",
                                  path=path, hint=REEXPORT)
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
        return make_session(path, provider, threads, role=role, **memory,
                            validate=lambda inner: check_graph(path, role, inner, width=width))


def check_graph(path: Path, role: str, inner: Any, *, width: int | None = None) -> None:
    """The graph's inputs, output and `edge_tune.*` metadata must match its role, or BundleError."""
    expected, output = GRAPH_SIGNATURES[role]
    inputs = {arg.name: (arg.type, len(arg.shape)) for arg in inner.get_inputs()}
    if inputs != expected:
        have, want = _describe_inputs(inputs), _describe_inputs(expected)
        raise BundleError(f"{role} graph has inputs ({have}), expected ({want})", path=path, hint=REEXPORT)
    outputs = [arg.name for arg in inner.get_outputs()]
    if outputs != [output]:
        raise BundleError(f"{role} graph has outputs {outputs}, expected [{output!r}]", path=path,
                          hint=REEXPORT)
    if width is not None:
        d = next(a.shape[-1] for a in inner.get_inputs() if a.name == WIDTH_INPUT[role])
        if isinstance(d, int) and d != width:
            raise BundleError(f"text graph takes width {d}, manifest says {width}", path=path, hint=REEXPORT)
    meta = inner.get_modelmeta().custom_metadata_map
    found_role = meta.get("edge_tune.role")
    if found_role is not None and found_role != role:
        raise BundleError(f"graph is marked as the {found_role} graph, but the manifest uses it as {role}",
                          path=path, hint=REEXPORT)
    version = meta.get("edge_tune.format_version")
    if version is not None and version.isdigit() and int(version) > FORMAT_VERSION:
        raise BundleError(f"graph has format version {version}, newer than this edge-tune reads "
                          f"({FORMAT_VERSION})", path=path, hint="upgrade edge-tune (pip install -U edge-tune)")


def _describe_inputs(inputs: dict[str, tuple[str, int]]) -> str:
    """{"eot_index": ("tensor(int64)", 1)} -> "eot_index int64[rank 1]"."""
    return ", ".join(f"{name} {kind.removeprefix('tensor(').rstrip(')')}[rank {rank}]"
                     for name, (kind, rank) in inputs.items())


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
    if not root.is_dir():
        raise BundleError("bundle directory does not exist", path=root,
                          hint="pass a directory made by `edge-tune export MODEL --out DIR`")
    manifest_path = root / MANIFEST
    try:
        raw = manifest_path.read_bytes()
    except OSError:
        raise BundleError("no manifest.json: not an edge-tune bundle", path=root,
                          hint="pass a directory made by `edge-tune export MODEL --out DIR`") from None
    manifest = _parse_manifest(raw, manifest_path)
    for name, graph in manifest["graphs"].items():
        if graph.get("file") not in manifest["files"]:
            raise BundleError(f"{name} graph file {graph.get('file')!r} is not listed under 'files'",
                              path=manifest_path, hint=REEXPORT)
    for name, entry in manifest["files"].items():
        file_path = root / name
        if not file_path.is_file():
            raise BundleError("missing bundle file (listed in manifest.json)", path=file_path,
                              hint=COPY_AGAIN)
        if verify:
            size = file_path.stat().st_size
            if "bytes" in entry and size != entry["bytes"]:
                raise BundleError(f"file has {size} bytes, manifest.json says {entry['bytes']} "
                                  "(altered or truncated)", path=file_path, hint=COPY_AGAIN)
            if sha256_file(file_path) != entry.get("sha256"):
                raise BundleError("sha256 does not match manifest.json (file altered or corrupted)",
                                  path=file_path, hint=COPY_AGAIN)
    dims, tokens = manifest["dims"], manifest["tokens"]
    return Bundle(path=root, manifest=manifest, bundle_hash=hashlib.sha256(raw).hexdigest(),
                  text_width=int(dims["text_width"]), projection_dim=int(dims["projection_dim"]),
                  context_length=int(dims["context_length"]), sot_id=int(tokens["sot_id"]),
                  eot_id=int(tokens["eot_id"]), logit_scale=float(manifest["logit_scale"]),
                  preprocess=dict(manifest["preprocess"]))


def _parse_manifest(raw: bytes, path: Path) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BundleError(f"manifest.json is not valid JSON ({err})", path=path, hint=REEXPORT) from None
    if not isinstance(manifest, dict) or manifest.get("format") != "edge-tune-bundle":
        raise BundleError("not an edge-tune bundle manifest (format is not 'edge-tune-bundle')", path=path,
                          hint="pass a directory made by `edge-tune export MODEL --out DIR`")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"invalid format_version {version!r}", path=path, hint=REEXPORT)
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle format_version {version} is newer than this edge-tune reads "
                          f"({FORMAT_VERSION})", path=path,
                          hint="upgrade edge-tune on this device (pip install -U edge-tune)")
    required = {"model": dict, "dims": dict, "tokens": dict, "preprocess": dict, "graphs": dict, "files": dict,
                "logit_scale": (int, float)}
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind):
            raise BundleError(f"manifest.json lacks a valid {key!r} entry", path=path, hint=REEXPORT)
    for role in REQUIRED_GRAPHS:
        if role not in manifest["graphs"] or not isinstance(manifest["graphs"][role], dict):
            raise BundleError(f"manifest.json names no {role} graph", path=path, hint=REEXPORT)
    for key in ("text_width", "projection_dim", "context_length"):
        if not isinstance(manifest["dims"].get(key), int):
            raise BundleError(f"manifest.json dims lack {key!r}", path=path, hint=REEXPORT)
    for key in ("sot_id", "eot_id"):
        if not isinstance(manifest["tokens"].get(key), int):
            raise BundleError(f"manifest.json tokens lack {key!r}", path=path, hint=REEXPORT)
    return manifest


def bundle_info(path: str | Path, *, provider: str = "auto", threads: int | None = None,
                prompt: str = "a photo of a cat.") -> dict:
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
        "bundle": str(bundle.path), "bundle_hash": bundle.bundle_hash, "format_version": m["format_version"],
        "model": m["model"], "dims": m["dims"], "tokens": m["tokens"], "logit_scale": bundle.logit_scale,
        "preprocess": m["preprocess"],
        "files": {name: {"bytes": entry.get("bytes"), "sha256": entry.get("sha256")}
                  for name, entry in m["files"].items()},
        "hashes_verified": True, "parity": m.get("parity"), "exporter": m.get("exporter"),
        "providers": {"available": available_providers(), "requested": provider, "chosen": session.provider,
                      "session": session.providers, "report": session.report},
        "text_forward": {"prompt": prompt, "tokens": len(ids), "ms_median_of_3": 1000 * sorted(times)[1],
                         "feature_norm": float(np.linalg.norm(features[0]))},
    }
