"""The exporter: parity of the ONNX graphs with PyTorch, `--source DIR`, exact truncation after EOT."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import export_in_subprocess  # noqa: E402

from edge_tune.bundle import open_bundle  # noqa: E402
from edge_tune_export import registry  # noqa: E402
from edge_tune_export.parity import features_tensor  # noqa: E402

PROMPTS = ["a photo of a cat.", "a blurry photo of a T-shirt/top.", "itap of a dog", "a"]


def tokenise(bundle, prompts, length):
    tok = bundle.tokenizer()
    rows = [tok.encode(p) for p in prompts]
    ids = np.full((len(rows), length), bundle.eot_id, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids, np.array([len(r) - 1 for r in rows], dtype=np.int64)


def ort_text(bundle, ids, eot):
    table = np.asarray(bundle.token_embedding())
    return bundle.text_session("cpu", 1).run({"prompt_embeds": table[ids], "eot_index": eot})


def torch_text(model, ids):
    with torch.no_grad():
        out = features_tensor(model.get_text_features(input_ids=torch.from_numpy(ids)))
        return torch.nn.functional.normalize(out, dim=-1).numpy()


def torch_image(model, pixels):
    with torch.no_grad():
        out = features_tensor(model.get_image_features(pixel_values=torch.from_numpy(pixels)))
        return torch.nn.functional.normalize(out, dim=-1).numpy()


def test_tiny_random_bundle_matches_pytorch(tiny_bundle):
    """Runtime (ORT through edge_tune.bundle) vs HF get_*_features of the same seeded model."""
    bundle = open_bundle(tiny_bundle)
    if bundle.manifest["model"]["source"] != "registry:tiny-random":
        pytest.skip("$EDGE_TUNE_TEST_BUNDLE is not a tiny-random bundle")
    model = registry.build_model("tiny-random")
    ids, eot = tokenise(bundle, PROMPTS, bundle.context_length)
    text_diff = np.abs(ort_text(bundle, ids, eot) - torch_text(model, ids)).max()
    pixels = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    image = bundle.image_session("cpu", 1).run({"pixel_values": pixels})
    image_diff = np.abs(image - torch_image(model, pixels)).max()
    assert text_diff <= 1e-5 and image_diff <= 1e-5, (text_diff, image_diff)
    parity = bundle.manifest["parity"]
    assert parity["tolerance"] == 1e-5 and parity["text_max_abs_diff"] <= 1e-5
    assert bundle.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    assert np.array_equal(
        np.asarray(bundle.token_embedding()),
        model.text_model.embeddings.token_embedding.weight.detach().numpy(),
    )


def test_truncation_after_eot_is_exact(tiny_bundle):
    """The causal mask makes features at EOT independent of later positions: L = max(EOT)+1 == L = 77."""
    bundle = open_bundle(tiny_bundle)
    ids, eot = tokenise(bundle, PROMPTS, bundle.context_length)
    full = ort_text(bundle, ids, eot)
    cut = int(eot.max()) + 1
    short = ort_text(bundle, ids[:, :cut], eot)
    assert cut < 20
    assert np.abs(full - short).max() <= 1e-6


def test_export_from_source_dir_passes_parity(tmp_path):
    """`edge-tune export clip-vit-b16 --source DIR` on a save_pretrained directory (small shapes)."""
    config = registry.clip_config(registry.lookup("tiny-random"))
    torch.manual_seed(7)
    model = transformers.CLIPModel(config).eval()
    source = tmp_path / "checkpoint"
    model.save_pretrained(source)
    out = tmp_path / "bundle"
    done = export_in_subprocess("clip-vit-b16", out, "--source", str(source))
    assert done.returncode == 0, done.stderr
    assert "parity text" in done.stderr and "parity image" in done.stderr
    bundle = open_bundle(out)
    assert bundle.manifest["model"] == {"name": "clip-vit-b16", "source": f"dir:{source.resolve()}"}
    assert bundle.manifest["parity"]["text_max_abs_diff"] <= 1e-5
    assert bundle.manifest["parity"]["image_max_abs_diff"] <= 1e-5
    ids, eot = tokenise(bundle, PROMPTS, 77)
    assert np.abs(ort_text(bundle, ids, eot) - torch_text(model, ids)).max() <= 1e-5
    assert sorted(p.name for p in out.iterdir()) == [
        "image.onnx",
        "manifest.json",
        "text.onnx",
        "text_shared.onnx",
        "token_embedding.npy",
        "tokenizer.json",
    ]
    assert bundle.manifest["parity"]["text_shared_max_abs_diff"] <= 1e-5
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_b16_random_exports_and_passes_parity(tmp_path):
    out = tmp_path / "b16"
    done = export_in_subprocess("b16-random", out, timeout=1800)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dims"]["text_width"] == 512 and manifest["dims"]["image_size"] == 224
    assert manifest["parity"]["text_max_abs_diff"] <= 1e-5
    assert manifest["parity"]["image_max_abs_diff"] <= 1e-5
    bundle = open_bundle(out)
    ids, eot = tokenise(bundle, PROMPTS, 77)
    full, short = ort_text(bundle, ids, eot), ort_text(bundle, ids[:, : int(eot.max()) + 1], eot)
    assert np.abs(full - short).max() <= 1e-6
    print(f"b16-random export seconds: {manifest['exporter']['seconds']}", file=sys.stderr)


def _hub_cache(root, repo, model):
    """A Hugging Face cache holding `repo` at one snapshot, as `from_pretrained` leaves it."""
    folder = root / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    model.save_pretrained(snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    return folder


def test_any_hub_id_exports_from_the_local_cache_with_fp16_weights(tmp_path, monkeypatch):
    # "unknown model" before for any id outside the registry; fp16-saved weights loaded as fp16
    # and parity died in ORT ("LayerNormalization bound to different types")
    config = registry.clip_config(registry.lookup("tiny-random"))
    torch.manual_seed(3)
    model = transformers.CLIPModel(config).eval()
    _hub_cache(tmp_path / "hf", "someone/tiny-clip-fp16", model.half())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "bundle"
    done = export_in_subprocess("someone/tiny-clip-fp16", out, "--no-shared-prefix", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)  # export --json: what it wrote, in one object
    assert (
        printed["bundle"] == str(out) and printed["model"]["source"] == "hf:someone/tiny-clip-fp16"
    )
    assert sorted(printed["files"]) == [
        "image.onnx",
        "text.onnx",
        "token_embedding.npy",
        "tokenizer.json",
    ]
    bundle = open_bundle(out)
    assert bundle.manifest["model"] == {
        "name": "someone/tiny-clip-fp16",
        "source": "hf:someone/tiny-clip-fp16",
    }
    assert bundle.manifest["parity"]["text_max_abs_diff"] <= 1e-5
    reference = model.float()  # the fp16-rounded weights, in float32: what the bundle holds
    ids, eot = tokenise(bundle, PROMPTS, 77)
    assert np.abs(ort_text(bundle, ids, eot) - torch_text(reference, ids)).max() <= 1e-5


def test_a_bare_hub_cache_folder_points_to_its_snapshot(tmp_path):
    config = registry.clip_config(registry.lookup("tiny-random"))
    folder = _hub_cache(tmp_path, "openai/clip-vit-base-patch16", transformers.CLIPModel(config))
    done = export_in_subprocess("clip-vit-b16", tmp_path / "out", "--source", str(folder))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: {folder}: this is a Hugging Face cache folder, not a checkpoint. Pass one of its "
        f"snapshots: --source {folder / 'snapshots' / '0123abcd'}"
    )


def test_a_killed_export_leaves_no_hidden_folder(tmp_path):
    import signal
    import subprocess
    import time

    from conftest import REPO

    out = tmp_path / "bundle"
    command = [sys.executable, "-m", "edge_tune", "export", "tiny-random", "--out", str(out)]
    child = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".bundle.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".bundle.partial-*")), "the export never started its staging folder"
    child.send_signal(signal.SIGTERM)  # systemd, docker stop, timeout
    _, err = child.communicate(timeout=300)
    assert child.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == (
        "Stopped (SIGTERM); the unfinished export was removed: run the command again."
    )
    assert list(tmp_path.iterdir()) == []


def test_scratch_folders_of_exports_that_died_are_removed(tmp_path):
    import os
    import subprocess

    from edge_tune_export.write_bundle import remove_stale, scratch_dir

    out = tmp_path / "bundle"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = tmp_path / f".bundle.partial-{int(gone.stdout)}-x1y2"  # SIGKILLed: 328 MB left behind
    live = tmp_path / f".bundle.int8-{os.getpid()}-z3"  # an export still running
    other = tmp_path / ".bundle.notes"  # not an export's
    for folder in (dead, live, other):
        (folder / "sub").mkdir(parents=True)
    assert remove_stale(out) == [dead]
    fresh = scratch_dir(out, "partial")
    assert fresh.name.startswith(f".bundle.partial-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, fresh.name])


def test_graphs_over_the_single_file_limit_are_refused_before_export():
    """ViT-L/14 fits ONNX's 2 GB single-file limit; ViT-H/14 (laion's open_clip shapes) does not.
    Built on torch's meta device: the real configurations, no weights allocated."""
    from edge_tune.errors import ExportError
    from edge_tune_export.to_onnx import check_graph_sizes, weight_bytes

    def meta_model(entry: str, **vision):
        config = registry.clip_config(registry.lookup(entry))
        for key, value in vision.items():
            setattr(config.vision_config, key, value)
        with torch.device("meta"):
            return transformers.CLIPModel(config)

    large = meta_model("l14-random")
    check_graph_sizes(large)
    assert 1.1e9 < weight_bytes(large.vision_model) < 1.3e9  # ViT-L/14's 304 M image weights
    huge = meta_model("l14-random", hidden_size=1280, intermediate_size=5120, num_hidden_layers=32)
    with pytest.raises(ExportError) as err:
        check_graph_sizes(huge)
    assert str(err.value) == (
        "the image graph would hold 2.53 GB of weights, above ONNX's 2 GB limit for a "
        "single-file graph. Models up to ViT-L/14 export; ViT-H/14 and larger need ONNX "
        "external data, which bundles do not support yet"
    )
