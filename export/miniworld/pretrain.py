"""Pretrain a small CLIP on Fashion-MNIST (torch), contrastively, with style captions.

Recipe (why each part is there):
- a `transformers.CLIPModel` of width 128 (4 text + 4 vision layers, patch 4 on 28×28 greyscale
  repeated to 3 channels) with the REAL CLIP BPE tokenizer, so the exported bundle is an ordinary CLIP;
- captions drawn from several templates and class synonyms; on part of each batch the image is shifted
  (blur, noise, low contrast, pixelation, inversion, upside-down) and its caption names that style
  ("a blurry photo of a coat."). Without style captions the text encoder learns to ignore the context
  words, and prompt tuning would have nothing to move;
- a multi-positive contrastive loss: captions of the same (class, style) are all positives, since a batch
  of 256 from 10 classes holds many;
- a learned logit scale (CLIP's init 1/0.07, clamped at 100), which the bundle reports.

    python -m edge_tune_export.miniworld.pretrain --out /tmp/miniworld/clip
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_tune_export.miniworld import tasks
from edge_tune_export.miniworld.fashion import CLASSNAMES, SYNONYMS, load_split
from edge_tune_export.registry import CLIP_BPE_TOKENIZER

TOKENIZER_FILE = CLIP_BPE_TOKENIZER
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train pixel statistics (of x/255)
SOT, EOT = 49406, 49407

CLEAN_TEMPLATES = (
    ("a photo of a {}.", 4),
    ("a picture of a {}.", 1),
    ("an image of a {}.", 1),
    ("a photo of the {}.", 1),
    ("a {}.", 1),
    ("a product photo of a {}.", 1),
)


@dataclass(frozen=True)
class Style:
    """A shift applied during pretraining and the words its captions use for it."""

    name: str
    words: tuple[str, ...]
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _per_image(
    fn: Callable[[np.ndarray, float, np.random.Generator], np.ndarray], lo: float, hi: float
):
    """Apply `fn(x_i, strength_i, rng)` with a strength drawn uniformly in [lo, hi] per image."""

    def apply(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = rng.uniform(lo, hi, len(x))
        return (
            np.stack([fn(x[i : i + 1], float(s[i]), rng)[0] for i in range(len(x))])
            if len(x)
            else x
        )

    return apply


STYLES = (
    Style(
        "blur",
        ("blurry", "blurred", "out of focus"),
        _per_image(lambda x, s, r: tasks.gaussian_blur(x, s), 1.0, 2.5),
    ),
    Style(
        "noise",
        ("noisy", "grainy"),
        _per_image(lambda x, s, r: tasks.add_noise(x, s, r), 0.25, 0.7),
    ),
    Style(
        "low_contrast",
        ("low contrast", "faded", "washed out"),
        _per_image(lambda x, s, r: tasks.low_contrast(x, s), 0.08, 0.35),
    ),
    Style(
        "pixelate",
        ("pixelated", "low resolution"),
        _per_image(lambda x, s, r: tasks.pixelate(x, 4 if s < 0.5 else 7), 0.0, 1.0),
    ),
    Style("inverted", ("inverted", "negative"), lambda x, r: 1.0 - x),
    Style("upside_down", ("upside-down", "flipped"), lambda x, r: x[:, ::-1, :].copy()),
)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_table() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Every caption with its class, style (0 = clean, i = STYLES[i-1]) and sampling weight."""
    texts, classes, styles, weights = [], [], [], []
    for c, syns in enumerate(SYNONYMS):
        syn_w = [len(syns)] + [1] * (
            len(syns) - 1
        )  # the official name outweighs all others together
        for sw, syn in zip(syn_w, syns):
            for tpl, tw in CLEAN_TEMPLATES:
                texts.append(tpl.format(syn))
                classes.append(c)
                styles.append(0)
                weights.append(sw * tw)
            for s, style in enumerate(STYLES, start=1):
                for word in style.words:
                    for noun in ("photo", "picture", "image"):
                        texts.append(f"{article(word)} {word} {noun} of a {syn}.")
                        classes.append(c)
                        styles.append(s)
                        weights.append(sw * (3 if noun == "photo" else 1))
    return texts, np.array(classes), np.array(styles), np.array(weights, dtype=np.float64)


def tokenize_all(
    texts: list[str], tokenizer_file: Path = TOKENIZER_FILE
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids int64[N, L] padded with EOT, and the EOT index of each caption."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = [tok.encode(t).ids for t in texts]
    if any(i[0] != SOT or i[-1] != EOT for i in ids):
        raise RuntimeError(f"{tokenizer_file}: does not add <|startoftext|>/<|endoftext|>")
    length = max(map(len, ids))
    out = np.full((len(ids), length), EOT, dtype=np.int64)
    for row, i in zip(out, ids):
        row[: len(i)] = i
    return out, np.array([len(i) - 1 for i in ids])


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    width: int = 128
    layers: int = 4
    heads: int = 4
    patch: int = 7
    projection_dim: int = 128
    batch: int = 256
    epochs: float = 3.0
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    clean_fraction: float = 0.4  # the rest of each batch is split evenly over STYLES


def make_model(r: Recipe):
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=49408,
        hidden_size=r.width,
        intermediate_size=4 * r.width,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        max_position_embeddings=77,
        bos_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
    )
    vision = dict(
        hidden_size=r.width,
        intermediate_size=4 * r.width,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        image_size=28,
        patch_size=r.patch,
        num_channels=3,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=r.projection_dim)
    torch.manual_seed(r.seed)
    return CLIPModel(config)


def to_pixels(x: np.ndarray) -> torch.Tensor:
    """float [N,28,28] in [0,1] -> normalised [N,3,28,28], exactly what CLIPImageProcessor gives for the PNG."""
    t = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) - MEAN) / STD
    return t[:, None].expand(-1, 3, -1, -1)


def augment_batch(x: np.ndarray, labels: np.ndarray, table, r: Recipe, rng: np.random.Generator):
    """Shift part of the batch and draw a caption naming each image's class and style."""
    texts_cls, texts_style, weights = table
    style = np.where(
        rng.random(len(x)) < r.clean_fraction, 0, rng.integers(1, len(STYLES) + 1, len(x))
    )
    x = x.copy()
    for s in range(1, len(STYLES) + 1):
        sel = np.flatnonzero(style == s)
        if len(sel):
            x[sel] = STYLES[s - 1].augment(x[sel], rng)
    caption = np.empty(len(x), dtype=np.int64)
    for i, (c, s) in enumerate(zip(labels, style)):
        pool = np.flatnonzero((texts_cls == c) & (texts_style == s))
        p = weights[pool] / weights[pool].sum()
        caption[i] = rng.choice(pool, p=p)
    return np.clip(x, 0.0, 1.0), caption, labels * (len(STYLES) + 1) + style


def multi_positive_loss(
    img: torch.Tensor, txt: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor
):
    """Symmetric CLIP loss where every pair with the same (class, style) key is a positive."""
    logits = scale * img @ txt.T
    target = (keys[:, None] == keys[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (
        -(target * F.log_softmax(logits, 1)).sum(1).mean()
        - (target * F.log_softmax(logits.T, 1)).sum(1).mean()
    )


@torch.no_grad()
def zero_shot_accuracy(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    template: str = "a photo of a {}.",
    classnames=CLASSNAMES,
    batch: int = 1000,
) -> float:
    """Top-1 accuracy of `template` prompts on uint8 images (the clean-test figure the README quotes)."""
    ids, eot = tokenize_all([template.format(n) for n in classnames])
    txt = F.normalize(text_features(model, torch.from_numpy(ids), torch.from_numpy(eot)), dim=-1)
    correct = 0
    for i in range(0, len(images), batch):
        img = F.normalize(image_features(model, to_pixels(images[i : i + batch] / 255.0)), dim=-1)
        correct += int((img @ txt.T).argmax(1).eq(torch.from_numpy(labels[i : i + batch])).sum())
    return correct / len(images)


def _features(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features; 4.x returned the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def text_features(model, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Projected EOT features (un-normalised), pooled at the given EOT index."""
    hidden = model.text_model(input_ids=ids).last_hidden_state
    return model.text_projection(hidden[torch.arange(len(ids)), eot])


def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    return _features(model.get_image_features(pixel_values=pixels))


def train(r: Recipe, out: Path, log=print) -> dict:
    torch.manual_seed(r.seed)
    rng = np.random.default_rng(r.seed)
    images, labels = load_split("train")
    test_images, test_labels = load_split("test")
    texts, t_cls, t_style, t_w = caption_table()
    ids, eot = tokenize_all(texts)
    ids_t, eot_t = torch.from_numpy(ids), torch.from_numpy(eot)
    model = make_model(r)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": r.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=r.lr,
        betas=(0.9, 0.98),
    )
    steps_per_epoch = len(images) // r.batch
    total = int(r.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / r.warmup_steps)
            * 0.5
            * (1 + math.cos(math.pi * min(s, total) / total))
        ),
    )
    log(
        f"captions: {len(texts)} (max {ids.shape[1]} tokens); steps: {total}; "
        f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
    )
    start, step = time.time(), 0
    model.train()
    while step < total:
        order = rng.permutation(len(images))
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * r.batch : (b + 1) * r.batch]
            x, cap, keys = augment_batch(
                images[idx] / 255.0, labels[idx], (t_cls, t_style, t_w), r, rng
            )
            img = F.normalize(image_features(model, to_pixels(x)), dim=-1)
            txt = F.normalize(text_features(model, ids_t[cap], eot_t[cap]), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100.0)
            loss = multi_positive_loss(img, txt, torch.from_numpy(keys), scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=math.log(100.0))
            step += 1
            if step % 50 == 0 or step == total:
                log(
                    f"step {step}/{total} loss {loss.item():.4f} scale {scale.item():.1f} "
                    f"{time.time() - start:.0f}s"
                )
    train_s = time.time() - start
    model.eval()
    acc = zero_shot_accuracy(model, test_images, test_labels)
    log(f"clean zero-shot accuracy on the 10,000 test images: {acc:.4f} (trained {train_s:.0f}s)")
    summary = {
        "recipe": asdict(r),
        "train_seconds": round(train_s, 1),
        "steps": total,
        "clean_zero_shot_accuracy": acc,
        "logit_scale": float(model.logit_scale.detach().exp()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    save(model, out, summary)
    return summary


def save(model, out: Path, summary: dict) -> None:
    """`save_pretrained` (safetensors) + tokenizer + a CLIPImageProcessor config for 28×28 greyscale."""
    from transformers import CLIPImageProcessor, CLIPTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    CLIPTokenizerFast(tokenizer_file=str(TOKENIZER_FILE)).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        image_mean=[MEAN] * 3,
        image_std=[STD] * 3,
        do_convert_rgb=True,
    ).save_pretrained(out)
    tmp = out / "miniworld.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
        f.flush()
        import os

        os.fsync(f.fileno())
    tmp.replace(out / "miniworld.json")


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=Recipe.epochs)
    p.add_argument("--seed", type=int, default=Recipe.seed)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 is fastest on a busy 2-core machine)",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    train(Recipe(seed=a.seed, epochs=a.epochs), a.out, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
