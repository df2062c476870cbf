"""The prompt parameterisations against their definitions, on the real tiny bundle."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tune.errors import CheckpointError, DataError
from edge_tune.prompts import PromptSpace, seeded_normal, table_std, template_prompts

CLASSES = ["dog", "tabby cat", "crème brûlée", "sea lion (wild), Pacific!"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from edge_tune.bundle import open_bundle

    return open_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def space(bundle):
    return PromptSpace.build(bundle, CLASSES, seed=7)


def encode(bundle, text):
    return list(bundle.tokenizer().encode(text))


def test_w_zero_is_the_sentence_a_photo_of_a_class(bundle, space):
    """SharpZO's prompt at w = 0 is exactly CLIP's token embeddings of "a photo of a <class>."."""
    table = np.asarray(bundle.token_embedding())
    assert space.m == 4 and space.dim == 512 and space.text_width == table.shape[1]
    np.testing.assert_array_equal(space.ctx0, table[encode(bundle, "a photo of a")[1:-1]])
    prompts = space.embeddings(np.zeros((1, space.dim)))
    for k, name in enumerate(CLASSES):
        ids = encode(bundle, f"a photo of a {name}.")
        assert space.eot_index[k] == len(ids) - 1 and ids[-1] == bundle.eot_id
        np.testing.assert_array_equal(prompts[k, : len(ids)], table[ids])
    assert space.length == max(len(encode(bundle, f"a photo of a {n}.")) for n in CLASSES)
    embeds, eot = template_prompts(bundle, CLASSES, "a photo of a {}.")
    np.testing.assert_array_equal(eot, space.eot_index)
    np.testing.assert_array_equal(embeds, prompts)


def test_context_is_ctx0_plus_projected_w(space):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3, space.dim))
    expected = space.ctx0[None] + (space.projection @ W.T).T.reshape(3, space.m, space.text_width)
    np.testing.assert_allclose(space.context(W), expected, rtol=0, atol=1e-12)
    prompts = space.embeddings(W)
    assert (
        prompts.shape == (3 * len(CLASSES), space.length, space.text_width)
        and prompts.dtype == np.float32
    )
    for i in range(3):
        for k in range(
            len(CLASSES)
        ):  # candidate-major rows, context at positions 1..m, rest untouched
            row = prompts[i * len(CLASSES) + k]
            np.testing.assert_array_equal(row[1 : 1 + space.m], expected[i].astype(np.float32))
            np.testing.assert_array_equal(row[1 + space.m :], space.base[k, 1 + space.m :])
    np.testing.assert_array_equal(space.prompt_rows(W, 5, 11), prompts[5:11])


def test_projection_is_seeded_and_scaled_to_the_token_table(bundle, space):
    table = np.asarray(bundle.token_embedding())
    assert space.projection.shape == (space.m * space.text_width, 512)
    assert space.projection_std == pytest.approx(float(np.std(table, dtype=np.float64)), rel=1e-9)
    assert np.std(space.projection) == pytest.approx(space.projection_std, rel=0.01)
    again = PromptSpace.build(bundle, CLASSES, seed=7)
    np.testing.assert_array_equal(again.projection, space.projection)
    assert not np.allclose(PromptSpace.build(bundle, CLASSES, seed=8).projection, space.projection)
    custom = PromptSpace.build(bundle, CLASSES, seed=7, projection_std=0.5, dim=16)
    assert custom.dim == 16 and custom.projection_std == 0.5
    np.testing.assert_allclose(
        custom.projection, seeded_normal(7, (custom.m * custom.text_width, 16)) * 0.5
    )


def test_seeded_normal_is_standard_normal_and_pinned():
    draws = seeded_normal(0, (1_000_000,))
    assert abs(draws.mean()) < 0.005 and abs(draws.std() - 1) < 0.005
    # PCG64's raw stream is stable across numpy versions; these values pin our transform of it,
    # so a prompt tuned on one machine rebuilds the same A on another.
    np.testing.assert_allclose(
        seeded_normal(0, (3,)),
        [-0.1177767320295333, 2.514159782747969, 0.9424543399096111],
        rtol=0,
        atol=1e-15,
    )


def test_table_std_in_blocks_equals_numpy(bundle):
    table = np.asarray(bundle.token_embedding())
    assert table_std(table, block=1000) == pytest.approx(
        float(np.std(table, dtype=np.float64)), rel=1e-9
    )


def test_coop_parameterisation_has_free_context(bundle):
    coop = PromptSpace.build(bundle, CLASSES, parameterisation="coop")
    assert coop.projection is None and coop.dim == coop.m * coop.text_width
    w = np.random.default_rng(2).standard_normal(coop.dim)
    np.testing.assert_allclose(
        coop.context(w[None])[0], coop.ctx0 + w.reshape(coop.m, coop.text_width)
    )
    with pytest.raises(DataError, match=r"the coop parameterisation has d = m·D = \d+, not 512"):
        PromptSpace.build(bundle, CLASSES, parameterisation="coop", dim=512)


def test_spec_rebuilds_the_same_space(bundle, space):
    spec = space.spec()
    assert spec == {
        "parameterisation": "sharpzo",
        "init": "a photo of a",
        "context_tokens": 4,
        "dim": 512,
        "seed": 7,
        "projection_std": space.projection_std,
        "text_width": space.text_width,
        "projection_sha256": space.projection_checksum(),
    }
    rebuilt = PromptSpace.from_spec(bundle, CLASSES, spec)
    np.testing.assert_array_equal(rebuilt.projection, space.projection)
    np.testing.assert_array_equal(rebuilt.base, space.base)
    with pytest.raises(
        CheckpointError, match="the rebuilt projection A differs from the one the prompt"
    ):
        PromptSpace.from_spec(bundle, CLASSES, spec | {"projection_sha256": "0" * 16})
    custom = PromptSpace.build(
        bundle, CLASSES, init="a blurry photo of the", seed=3, parameterisation="coop"
    )
    assert PromptSpace.from_spec(bundle, CLASSES, custom.spec()).m == 5


def test_padded_space_keeps_prompts_and_eot(space):
    long = space.padded(space.context_length)
    assert long.length == space.context_length
    W = np.random.default_rng(3).standard_normal((2, space.dim))
    np.testing.assert_array_equal(long.embeddings(W)[:, : space.length], space.embeddings(W))
    np.testing.assert_array_equal(long.eot_index, space.eot_index)


def test_too_long_class_name_and_bad_inputs(bundle, space):
    long_name = " ".join(["word"] * 80)
    with pytest.raises(DataError) as err:
        PromptSpace.build(bundle, ["dog", long_name])
    assert str(err.value) == (
        f"class name {long_name!r} is 81 tokens; with 4 context tokens the prompt "
        f"needs 87 positions, more than the model's 77. Shorten the class name "
        "(classnames.json)"
    )
    with pytest.raises(DataError, match=r"template 'a photo' must contain '\{\}' exactly once"):
        template_prompts(bundle, CLASSES, "a photo")
    with pytest.raises(ValueError, match=r"candidates must have shape \[n, 512\], got \[2, 3\]"):
        space.embeddings(np.zeros((2, 3)))
