"""Model names -> sources, read from `registry.json` (package data of edge_tune_export).

The registry is data, not code, so adding a checkpoint is one JSON entry. Hub entries name a Hugging
Face id; `random` entries describe a seeded `CLIPConfig`, for tests (`tiny-random`) and for speed and
memory work at real shapes (`b16-random`). Both random models use the CLIP BPE file in `data/clip-bpe` (package data too).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from edge_tune.errors import ExportError

DATA = Path(__file__).resolve().parent / "data"
REGISTRY_FILE = DATA / "registry.json"
CLIP_BPE_TOKENIZER = DATA / "clip-bpe" / "tokenizer.json"


@lru_cache(maxsize=1)
def load_registry(path: Path = REGISTRY_FILE) -> dict[str, dict]:
    """name -> entry, from the registry file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))["models"]
    except (OSError, ValueError, KeyError) as err:
        raise ExportError(
            f"cannot read the model registry ({err})",
            path=path,
            hint="reinstall edge-tune[export]; the registry ships with it",
        ) from None


def known_names() -> list[str]:
    return sorted(load_registry())


def lookup(name: str) -> dict:
    """The registry entry for `name`. A name shaped like a Hugging Face id ("org/model") that the
    registry does not list is a hub entry of its own; any other unknown name lists the known ones
    (the registry's names are short aliases)."""
    entry = load_registry().get(name)
    if entry is None and is_hub_id(name):
        return {"kind": "hub", "hub_id": name}
    if entry is None:
        raise ExportError(
            f"unknown model {name!r}; known models: {', '.join(known_names())}",
            hint="or give any Hugging Face CLIP id (org/name), or --source DIR with a "
            "CLIPModel save_pretrained directory",
        )
    return entry


def is_hub_id(name: str) -> bool:
    """'org/name' with no path parts beyond that (what the hub's repository ids look like)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def clip_config(entry: dict):
    """The `transformers.CLIPConfig` of a `random` entry."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(entry["text_config"]),
        vision_config=dict(entry["vision_config"]),
        projection_dim=entry["projection_dim"],
    )


def build_model(name: str):
    """A seeded random `CLIPModel` for a `random` entry (same weights on every call); None for hub entries."""
    entry = lookup(name)
    if entry["kind"] != "random":
        return None
    import torch
    from transformers import CLIPModel

    torch.manual_seed(int(entry.get("seed", 0)))
    config = clip_config(entry)
    config._attn_implementation = "eager"
    return CLIPModel(config).eval()
