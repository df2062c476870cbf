"""Parity is part of export: the ONNX graphs must reproduce PyTorch before a bundle is finished.

Text: ORT on `token_embedding(ids)` + the first-EOT index vs HF `get_text_features(input_ids)`,
normalised, on real tokenised prompts. Image: ORT vs `get_image_features`. A diff above the tolerance
refuses the bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_tune.errors import ExportError

TOLERANCE = 1e-5
PARITY_PROMPTS = (
    "a photo of a cat.",
    "a photo of a dog.",
    "a blurry photo of a T-shirt/top.",
    "itap of a golden retriever",
    "a photo of the large tabby cat sitting on a red sofa.",
    "X",
)


def features_tensor(out) -> torch.Tensor:
    """transformers 4.x returns a tensor from get_*_features, 5.x an output object (`.pooler_output`)."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def tokenise(tokenizer_json: bytes, prompts=PARITY_PROMPTS, *, eot_id: int, length: int):
    """ids i64[C,length] padded with EOT, and the first EOT index per prompt."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    rows = [tok.encode(p).ids[:length] for p in prompts]
    ids = np.full((len(rows), length), eot_id, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    eot = (ids == eot_id).argmax(axis=1).astype(np.int64)
    return ids, eot


def check_parity(
    model,
    bundle_dir: Path,
    tokenizer_json: bytes,
    *,
    eot_id: int,
    tolerance: float = TOLERANCE,
    echo=print,
) -> dict:
    """Max abs diffs ORT vs torch for both graphs; ExportError above `tolerance`."""
    import onnxruntime as ort

    text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
    ids, eot = tokenise(tokenizer_json, eot_id=eot_id, length=text_cfg.max_position_embeddings)
    generator = torch.Generator().manual_seed(0)
    size = vision_cfg.image_size
    pixels = torch.randn(3, 3, size, size, generator=generator)
    with torch.no_grad():
        ids_t = torch.from_numpy(ids)
        want_text = F.normalize(
            features_tensor(model.get_text_features(input_ids=ids_t)), dim=-1
        ).numpy()
        embeds = model.text_model.embeddings.token_embedding(ids_t).numpy()
        want_image = F.normalize(
            features_tensor(model.get_image_features(pixel_values=pixels)), dim=-1
        ).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    text = ort.InferenceSession(
        str(bundle_dir / "text.onnx"), options, providers=["CPUExecutionProvider"]
    )
    image = ort.InferenceSession(
        str(bundle_dir / "image.onnx"), options, providers=["CPUExecutionProvider"]
    )
    got_text = text.run(None, {"prompt_embeds": embeds.astype(np.float32), "eot_index": eot})[0]
    got_image = image.run(None, {"pixel_values": pixels.numpy()})[0]
    result = {
        "text_max_abs_diff": float(np.abs(got_text - want_text).max()),
        "image_max_abs_diff": float(np.abs(got_image - want_image).max()),
        "tolerance": tolerance,
    }
    echo(
        f"parity text  (ORT vs get_text_features, {len(ids)} prompts): max abs diff "
        f"{result['text_max_abs_diff']:.3g}"
    )
    echo(
        f"parity image (ORT vs get_image_features, {len(pixels)} images): max abs diff "
        f"{result['image_max_abs_diff']:.3g}"
    )
    worst = max(result["text_max_abs_diff"], result["image_max_abs_diff"])
    if not worst <= tolerance:
        raise ExportError(
            f"parity check failed: ONNX differs from PyTorch by {worst:.3g} "
            f"(text {result['text_max_abs_diff']:.3g}, image {result['image_max_abs_diff']:.3g}; "
            f"tolerance {tolerance:g})",
            path=bundle_dir.name,
            hint="no bundle was written; report this model with the printed diffs",
        )
    return result


SHARED_PREFIXES = ("a photo of a", "a blurry photo of")  # two candidates' contexts, 4 tokens each
SHARED_SUFFIXES = ("cat.", "dog.", "large tabby cat sitting on a red sofa.", "T-shirt/top.")


def check_shared_parity(
    model,
    bundle_dir: Path,
    tokenizer_json: bytes,
    *,
    eot_id: int,
    tolerance: float = TOLERANCE,
    echo=print,
) -> dict:
    """text_shared.onnx vs `get_text_features` on real prompts "<prefix> <suffix>" that share a prefix.

    Each prefix is one candidate (SOT + its tokens, P positions); the suffixes are its class prompts.
    """
    import onnxruntime as ort

    length = model.config.text_config.max_position_embeddings
    prompts = [f"{p} {s}" for p in SHARED_PREFIXES for s in SHARED_SUFFIXES]
    ids, eot = tokenise(tokenizer_json, prompts, eot_id=eot_id, length=length)
    n, k = len(SHARED_PREFIXES), len(SHARED_SUFFIXES)
    prefix_ids = tokenise(tokenizer_json, SHARED_PREFIXES, eot_id=eot_id, length=length)[
        1
    ]  # EOT = 1 + m
    p = int(prefix_ids.min())
    if (
        not (prefix_ids == p).all()
        or not (ids.reshape(n, k, -1)[:, :, :p] == ids.reshape(n, k, -1)[:, :1, :p]).all()
    ):
        raise ExportError(
            "the tokenizer does not split the shared-prefix parity prompts at one place",
            path=bundle_dir.name,
            hint="export with --no-shared-prefix",
        )
    s = int(eot.max()) + 1 - p
    with torch.no_grad():
        ids_t = torch.from_numpy(ids)
        want = F.normalize(
            features_tensor(model.get_text_features(input_ids=ids_t)), dim=-1
        ).numpy()
        embeds = model.text_model.embeddings.token_embedding(ids_t).numpy().astype(np.float32)
    embeds = embeds.reshape(n, k, length, -1)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(bundle_dir / "text_shared.onnx"), options, providers=["CPUExecutionProvider"]
    )
    got = session.run(
        None,
        {
            "prefix_embeds": np.ascontiguousarray(embeds[:, 0, :p]),
            "suffix_embeds": np.ascontiguousarray(embeds[:, :, p : p + s]),
            "eot_in_suffix": (eot - p).reshape(n, k),
        },
    )[0]
    diff = float(np.abs(got.reshape(n * k, -1) - want).max())
    echo(
        f"parity text_shared (ORT vs get_text_features, {n} prefixes x {k} suffixes): max abs diff "
        f"{diff:.3g}"
    )
    if not diff <= tolerance:
        raise ExportError(
            f"parity check failed: text_shared.onnx differs from PyTorch by {diff:.3g} "
            f"(tolerance {tolerance:g})",
            path=bundle_dir.name,
            hint="no bundle was written; export with --no-shared-prefix, and report this model",
        )
    return {"text_shared_max_abs_diff": diff}
