"""CLIP's byte-pair tokenizer through the `tokenizers` library (no torch, no transformers, no network).

The bundle's `tokenizer.json` holds CLIP's normaliser (NFC, whitespace collapse, lower-case), its
pre-tokeniser and its SOT/EOT post-processor, so `encode` gives the ids CLIP's own tokenizer gives.
"""

from __future__ import annotations

from pathlib import Path

from edge_tune.errors import BundleError

SOT_TOKEN, EOT_TOKEN = "<|startoftext|>", "<|endoftext|>"


class ClipTokenizer:
    def __init__(self, inner, path: Path | None = None):
        self.inner = inner
        self.path = path
        sot, eot = inner.token_to_id(SOT_TOKEN), inner.token_to_id(EOT_TOKEN)
        if sot is None or eot is None:
            raise BundleError(
                "not a CLIP tokenizer (no <|startoftext|>/<|endoftext|> tokens)",
                path=path,
                hint="re-export the bundle with `edge-tune export`",
            )
        self.sot_id: int = sot
        self.eot_id: int = eot
        self.inner.no_truncation()
        self.inner.no_padding()

    @classmethod
    def from_file(cls, path: str | Path) -> ClipTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            inner = Tokenizer.from_file(str(path))
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
            raise BundleError(
                f"cannot read the tokenizer ({reason})",
                path=path,
                hint="re-export the bundle with `edge-tune export`",
            ) from None
        return cls(inner, path)

    def encode(self, text: str) -> list[int]:
        """Ids with SOT first and EOT last, no padding; case and spacing normalised as CLIP does."""
        ids = list(self.inner.encode(text.strip()).ids)
        if not ids or ids[0] != self.sot_id:
            ids = [self.sot_id, *ids]
        if ids[-1] != self.eot_id:
            ids = [*ids, self.eot_id]
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        """Text back from ids (lower-cased, one space per word end), for messages and debugging."""
        from tokenizers.decoders import ByteLevel

        tokens = [self.inner.id_to_token(i) for i in ids if i not in (self.sot_id, self.eot_id)]
        # CLIP marks word ends with "</w>"; "Ġ" is the byte-level symbol of a space.
        return ByteLevel().decode([t.replace("</w>", "Ġ") for t in tokens if t]).strip()
