"""The runtime tokenizer: CLIP's ids from the shipped tokenizer.json, with `tokenizers` only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_tune.errors import BundleError
from edge_tune.tokenizer import ClipTokenizer

CLIP_BPE = (
    Path(__file__).resolve().parent.parent / "export" / "data" / "clip-bpe" / "tokenizer.json"
)


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer.from_file(CLIP_BPE)


def test_known_ids(tok):
    # OpenAI's SimpleTokenizer gives these ids (shared/reference/feasibility.md §5).
    assert tok.encode("a photo of a cat.") == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert (tok.sot_id, tok.eot_id) == (49406, 49407)


def test_case_and_spacing_are_normalised_as_clip_does(tok):
    assert tok.encode("  A   PHOTO of a\tCat.  ") == tok.encode("a photo of a cat.")


def test_empty_and_unusual_text(tok):
    assert tok.encode("") == [49406, 49407]
    for text in ("T-shirt/top", "café crème", "猫", "🐈 cat"):
        ids = tok.encode(text)
        assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) > 2
        assert all(0 <= i < 49406 for i in ids[1:-1])


def test_no_truncation_or_padding(tok):
    ids = tok.encode(" ".join(["cat"] * 100))
    assert len(ids) == 102


def test_decode_round_trip(tok):
    assert tok.decode(tok.encode("A photo of a Cat.")).strip() == "a photo of a cat ."


def test_bad_file_is_a_bundle_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{broken")
    with pytest.raises(BundleError) as caught:
        ClipTokenizer.from_file(path)
    assert str(caught.value).startswith(f"{path}: cannot read the tokenizer (")
    path.write_text(
        json.dumps(
            json.loads(CLIP_BPE.read_text())["model"]
            and {
                "version": "1.0",
                "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"},
            }
        )
    )
    with pytest.raises(BundleError) as caught:
        ClipTokenizer.from_file(path)
    assert str(caught.value) == (
        f"{path}: not a CLIP tokenizer (no <|startoftext|>/<|endoftext|> tokens). "
        "Re-export the bundle with `edge-tune export`"
    )
