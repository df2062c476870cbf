"""First-order headroom: how far can autograd prompt tuning move zero-shot accuracy on each task?

For every task folder (`TASK/shots`, `TASK/eval`, as written by `tasks.py`) this measures, with the
model's own learned logit scale and image features cached once per task:
- zero-shot accuracy with "a photo of a {class}." (the starting point of every tuner);
- Adam on w through SharpZO's parameterisation, ctx = ctx0 + reshape(A·w), with the A the runtime
  draws (`edge_tune.prompts.seeded_normal`, same seed, the token table's std): the optimum the ZO
  methods search for, in the same space;
- Adam directly on the m context-token embeddings (CoOp; the better ceiling).
A task is useful for comparing optimisers only if the ceiling is well above zero-shot.

    python -m edge_tune_export.miniworld.first_order --model /tmp/miniworld/clip \
        --tasks /tmp/miniworld/tasks --out /tmp/miniworld/first_order.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edge_tune.errors import DataError
from edge_tune.prompts import DEFAULT_INIT, seeded_normal, table_std
from edge_tune_export.miniworld.pretrain import image_features, to_pixels, tokenize_all

CTX_INIT = DEFAULT_INIT
N_CTX = 4


def load_model(path: str | Path):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(path), dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def read_folder(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names (from classnames.json, in its order), uint8 images [N,H,W] and labels of `root/<class>/*.png`."""
    names_file = root / "classnames.json"
    if not names_file.is_file():
        raise DataError(
            "classnames.json not found",
            path=names_file,
            hint="Write the task with `python -m edge_tune_export.miniworld.tasks`",
        )
    folders = json.loads(names_file.read_text(encoding="utf-8"))
    images, labels = [], []
    for label, folder in enumerate(folders):
        for png in sorted((root / folder).glob("*.png")):
            images.append(np.asarray(Image.open(png).convert("L")))
            labels.append(label)
    return list(folders.values()), np.stack(images), np.array(labels, dtype=np.int64)


@dataclass
class PromptParts:
    """Frozen pieces of the K class prompts: [SOT] [ctx × m] [class name . EOT pad]."""

    prefix: torch.Tensor  # [1, D]
    ctx0: torch.Tensor  # [m, D]
    suffix: torch.Tensor  # [K, L-1-m, D]
    eot: torch.Tensor  # [K]


def prompt_parts(model, classnames: list[str]) -> PromptParts:
    ids, eot = tokenize_all([f"{CTX_INIT} {n}." for n in classnames])
    ctx_ids, _ = tokenize_all([CTX_INIT])
    if not (ids[:, 1 : 1 + N_CTX] == ctx_ids[0, 1 : 1 + N_CTX]).all():
        raise RuntimeError(
            f"'{CTX_INIT}' does not tokenise to the same {N_CTX} tokens in every prompt"
        )
    table = model.text_model.embeddings.token_embedding.weight
    emb = table[torch.from_numpy(ids)]
    return PromptParts(
        emb[0, :1], emb[0, 1 : 1 + N_CTX].clone(), emb[:, 1 + N_CTX :], torch.from_numpy(eot)
    )


def encode_prompts(model, parts: PromptParts, ctx: torch.Tensor) -> torch.Tensor:
    """L2-normalised text features [K, P] of the prompts with context `ctx` [m, D] (differentiable in ctx)."""
    tm = model.text_model
    k = parts.suffix.shape[0]
    embeds = torch.cat([parts.prefix.expand(k, -1, -1), ctx.expand(k, -1, -1), parts.suffix], dim=1)
    length = embeds.shape[1]
    hidden = embeds + tm.embeddings.position_embedding.weight[:length]
    mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
    hidden = tm.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
    hidden = tm.final_layer_norm(hidden)[torch.arange(k), parts.eot]
    return F.normalize(model.text_projection(hidden), dim=-1)


@torch.no_grad()
def cached_features(model, images: np.ndarray, batch: int = 1000) -> torch.Tensor:
    return torch.cat(
        [
            F.normalize(image_features(model, to_pixels(images[i : i + batch] / 255.0)), dim=-1)
            for i in range(0, len(images), batch)
        ]
    )


def accuracy(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor) -> float:
    return float((img @ txt.T).argmax(1).eq(labels).float().mean())


def projection(
    ctx0: torch.Tensor, table: torch.Tensor, dim: int, seed: int
) -> tuple[torch.Tensor, float]:
    """A [m·D, d], drawn exactly as the runtime's `PromptSpace.build` draws it: `seeded_normal(seed)`
    scaled by the token table's std (lesson 3 of issue 6: A on the embedding scale, not the paper's
    0.2). The table here is the checkpoint's fp32 one; a bundle stored with `--token-table fp16`
    has a std that differs in the 4th significant digit."""
    std = table_std(table.detach().double().numpy())
    a = seeded_normal(seed, (ctx0.numel(), dim)) * std
    return torch.from_numpy(a).float(), std


def tune(
    model,
    parts: PromptParts,
    scale: float,
    shots: tuple[torch.Tensor, torch.Tensor],
    evals: tuple[torch.Tensor, torch.Tensor],
    *,
    mode: str,
    steps: int,
    lr: float,
    dim: int = 512,
    seed: int = 0,
) -> dict:
    """Full-batch Adam with cosine decay on w ('sharpzo') or on the context tokens ('coop')."""
    torch.manual_seed(seed)
    if mode == "sharpzo":
        a, a_std = projection(
            parts.ctx0, model.text_model.embeddings.token_embedding.weight, dim, seed
        )
        param = torch.zeros(dim, requires_grad=True)
        make_ctx = lambda: parts.ctx0 + (a @ param).reshape(parts.ctx0.shape)  # noqa: E731
    else:
        a_std = None
        param = parts.ctx0.clone().requires_grad_(True)
        make_ctx = lambda: param  # noqa: E731
    opt = torch.optim.Adam([param], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    img, y = shots
    for _ in range(steps):
        loss = F.cross_entropy(scale * img @ encode_prompts(model, parts, make_ctx()).T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        txt = encode_prompts(model, parts, make_ctx())
        return {
            "mode": mode,
            "steps": steps,
            "lr": lr,
            "projection_std": a_std,
            "train_loss": float(F.cross_entropy(scale * img @ txt.T, y)),
            "train_accuracy": accuracy(img, txt, y),
            "eval_accuracy": accuracy(evals[0], txt, evals[1]),
        }


def headroom(
    model,
    task: Path,
    *,
    steps: int = 1000,
    lrs_w: tuple[float, ...] = (0.01, 0.05),
    lrs_ctx: tuple[float, ...] = (2e-3, 1e-2),
    seed: int = 0,
) -> dict:
    """Zero-shot and first-order accuracies on one task; each mode keeps its best lr by train loss."""
    start = time.time()
    names, shot_img, shot_y = read_folder(task / "shots")
    _, eval_img, eval_y = read_folder(task / "eval")
    shots = (cached_features(model, shot_img), torch.from_numpy(shot_y))
    evals = (cached_features(model, eval_img), torch.from_numpy(eval_y))
    scale = float(model.logit_scale.exp())
    parts = prompt_parts(model, names)
    with torch.no_grad():
        zs = accuracy(evals[0], encode_prompts(model, parts, parts.ctx0), evals[1])
    runs = [
        tune(model, parts, scale, shots, evals, mode="sharpzo", steps=steps, lr=lr, seed=seed)
        for lr in lrs_w
    ]
    runs += [
        tune(model, parts, scale, shots, evals, mode="coop", steps=steps, lr=lr, seed=seed)
        for lr in lrs_ctx
    ]
    best = {
        m: min((r for r in runs if r["mode"] == m), key=lambda r: r["train_loss"])
        for m in ("sharpzo", "coop")
    }
    return {
        "task": task.name,
        "shots": len(shot_y),
        "eval_images": len(eval_y),
        "logit_scale": scale,
        "zero_shot": zs,
        "first_order_w": best["sharpzo"]["eval_accuracy"],
        "first_order_ctx": best["coop"]["eval_accuracy"],
        "gain": max(best["sharpzo"]["eval_accuracy"], best["coop"]["eval_accuracy"]) - zs,
        "runs": runs,
        "seconds": round(time.time() - start, 1),
    }


def markdown_table(results: list[dict]) -> str:
    rows = [
        "| task | zero-shot | Adam on w (SharpZO param.) | Adam on ctx tokens | gain (best) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['task']} | {100 * r['zero_shot']:.1f} | {100 * r['first_order_w']:.1f} | "
            f"{100 * r['first_order_ctx']:.1f} | {100 * r['gain']:+.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, required=True, help="save_pretrained dir from pretrain.py")
    p.add_argument("--tasks", type=Path, required=True, help="folder of task folders (or one task)")
    p.add_argument("--only", nargs="*", help="task names to run (default: all)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--out", type=Path, help="write all results as JSON here")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model)
    if (a.tasks / "shots").is_dir():
        tasks = [a.tasks]
    else:
        tasks = sorted(
            t
            for t in a.tasks.iterdir()
            if (t / "shots").is_dir() and (not a.only or t.name in a.only)
        )
    results = []
    for task in tasks:
        results.append(headroom(model, task, steps=a.steps))
        r = results[-1]
        print(
            f"{r['task']}: zero-shot {r['zero_shot']:.3f}, Adam-w {r['first_order_w']:.3f}, "
            f"Adam-ctx {r['first_order_ctx']:.3f} ({r['seconds']}s)",
            flush=True,
        )
    print(markdown_table(results))
    if a.out:
        tmp = a.out.with_name(a.out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(a.out)


if __name__ == "__main__":
    main()
