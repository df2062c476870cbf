"""Load a Hugging Face `CLIPModel` and what the bundle needs beside it (tokenizer file, preprocessing).

Three sources: a registry `random` entry (seeded, built from its config), a hub id (a registry
alias or any "org/name"; from the hub where it is reachable, else from the local Hugging Face cache),
or `--source DIR`, a `save_pretrained` directory (a hub snapshot is one). Weights load in float32
whatever dtype they were saved in: an fp16 graph is a deliberate `--fp16`. Every failure is a
one-line ExportError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge_tune.errors import ExportError
from edge_tune_export import registry

# CLIP's image processor (openai/clip-vit-base-patch16 preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass
class LoadedModel:
    model: object  # transformers.CLIPModel in eval mode
    name: str  # the bundle's model name
    source: str  # "registry:NAME" | "hf:ID" | "dir:/abs/path"
    tokenizer_json: bytes  # a `tokenizers` file of the model's tokenizer
    preprocess: dict  # the manifest's preprocess block


def load_model(name: str, *, source_dir: str | Path | None = None) -> LoadedModel:
    """Resolve `name` (+ optional `source_dir`) to a model; `source_dir` wins over the registry's hub id."""
    if source_dir is not None:
        return _from_dir(name, Path(source_dir))
    entry = registry.lookup(name)
    if entry["kind"] == "random":
        model = registry.build_model(name)
        return LoadedModel(
            model,
            name,
            f"registry:{name}",
            registry.CLIP_BPE_TOKENIZER.read_bytes(),
            default_preprocess(model.config.vision_config.image_size),
        )
    return _from_hub(name, entry["hub_id"])


def default_preprocess(image_size: int) -> dict:
    return {
        "resize_shortest_edge": int(image_size),
        "crop_size": int(image_size),
        "resample": "bicubic",
        "rescale_factor": 1 / 255,
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "convert_rgb": True,
    }


def _float32() -> dict:
    """`from_pretrained` keywords that load float32 weights whatever was saved. fp16-saved
    checkpoints (many community fine-tunes) otherwise load as fp16, and parity then dies in ONNX
    Runtime ("LayerNormalization bound to different types")."""
    import torch

    return {"dtype": torch.float32}  # the keyword since transformers 4.56, pyproject's floor


def _eager(model):
    """Plain attention math: exports to ordinary ONNX ops on every torch version."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = "eager"
    return model.eval()


def _from_dir(name: str, root: Path) -> LoadedModel:
    config_file = root / "config.json"
    hint = "pass a directory written by CLIPModel.save_pretrained (config.json + weights)"
    if not root.is_dir():
        raise ExportError("--source directory does not exist", path=root, hint=hint)
    snapshots = sorted(p.name for p in (root / "snapshots").glob("*") if p.is_dir())
    if not config_file.exists() and snapshots:
        raise ExportError(
            "this is a Hugging Face cache folder, not a checkpoint",
            path=root,
            hint=f"pass one of its snapshots: --source {root / 'snapshots' / snapshots[-1]}"
            + (f" (it has {len(snapshots)}: {', '.join(snapshots)})" if len(snapshots) > 1 else ""),
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExportError(
            "not a CLIP checkpoint (no readable config.json)", path=root, hint=hint
        ) from None
    if config.get("model_type") != "clip":
        raise ExportError(
            f"not a CLIP checkpoint (config.json model_type is {config.get('model_type')!r})",
            path=root,
            hint=hint,
        )
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(root), local_files_only=True, **_float32())
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"cannot load the CLIP weights ({first})", path=root, hint=hint) from None
    return LoadedModel(
        _eager(model),
        name,
        f"dir:{root.resolve()}",
        _dir_tokenizer(root),
        _dir_preprocess(root, model.config.vision_config.image_size),
    )


def _from_hub(name: str, hub_id: str) -> LoadedModel:
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(hub_id, **_float32())
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.txt"]))
    except Exception:
        raise ExportError(
            f"cannot fetch {hub_id} from the Hugging Face hub (unreachable or not cached)",
            hint=f"download it elsewhere and pass --source DIR "
            f"(edge-tune export {name} --source DIR --out OUT)",
        ) from None
    return LoadedModel(
        _eager(model),
        name,
        f"hf:{hub_id}",
        _dir_tokenizer(snapshot),
        _dir_preprocess(snapshot, model.config.vision_config.image_size),
    )


def _dir_tokenizer(root: Path) -> bytes:
    """The checkpoint's own tokenizer as a `tokenizers` file; the CLIP BPE when none was saved."""
    if (root / "tokenizer.json").is_file():
        return (root / "tokenizer.json").read_bytes()
    if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        import tempfile

        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(str(root), local_files_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            tok.save_pretrained(tmp)
            return Path(tmp, "tokenizer.json").read_bytes()
    return registry.CLIP_BPE_TOKENIZER.read_bytes()


def _dir_preprocess(root: Path, image_size: int) -> dict:
    """The checkpoint's `preprocessor_config.json`, in the manifest's terms; CLIP's defaults without one."""
    pre = default_preprocess(image_size)
    try:
        cfg = json.loads((root / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return pre
    size, crop = cfg.get("size", image_size), cfg.get("crop_size", image_size)
    pre["resize_shortest_edge"] = int(
        size.get("shortest_edge", image_size) if isinstance(size, dict) else size
    )
    pre["crop_size"] = int(crop.get("height", image_size) if isinstance(crop, dict) else crop)
    pre["resample"] = RESAMPLE_NAMES.get(cfg.get("resample", 3), "bicubic")
    pre["rescale_factor"] = float(cfg.get("rescale_factor", 1 / 255))
    pre["mean"] = [float(v) for v in cfg.get("image_mean", CLIP_MEAN)]
    pre["std"] = [float(v) for v in cfg.get("image_std", CLIP_STD)]
    pre["convert_rgb"] = bool(cfg.get("do_convert_rgb", True))
    return pre
