"""Bad bundles and bad exports: each one exact line naming the file and the fix, nothing half-written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest

from edge_tune.bundle import FORMAT_VERSION, open_bundle
from edge_tune.errors import BundleError, ExportError

REEXPORT = "re-export it with `edge-tune export MODEL --out DIR`"
REEXPORT_HINT = REEXPORT[:1].upper() + REEXPORT[1:]  # a hint starts its own sentence
COPY_AGAIN = f"Copy the whole bundle again, or {REEXPORT}"


@pytest.fixture
def copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def rewrite_manifest(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def rehash(root: Path, name: str) -> None:
    data = (root / name).read_bytes()

    def change(m):
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    rewrite_manifest(root, change)


def error_of(call) -> str:
    with pytest.raises(BundleError) as caught:
        call()
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_a_good_bundle_opens_with_its_manifest_hash(copy):
    bundle = open_bundle(copy)
    assert bundle.bundle_hash == hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
    assert (bundle.text_width, bundle.projection_dim, bundle.context_length) == (64, 32, 77)
    assert (bundle.sot_id, bundle.eot_id) == (49406, 49407)
    assert bundle.token_embedding().shape == (49408, 64)
    assert bundle.manifest["format_version"] == FORMAT_VERSION
    for name in ("image.onnx", "text.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(copy / name)).metadata_props}
        assert meta == {"edge_tune.role": name.split(".")[0], "edge_tune.format_version": "1"}


def test_missing_file(copy):
    (copy / "text.onnx").unlink()
    assert (
        error_of(lambda: open_bundle(copy))
        == f"{copy / 'text.onnx'}: missing bundle file (listed in manifest.json). {COPY_AGAIN}"
    )


def test_altered_file_same_size(copy):
    path = copy / "token_embedding.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert (
        error_of(lambda: open_bundle(copy))
        == f"{path}: sha256 does not match manifest.json (file altered or corrupted). {COPY_AGAIN}"
    )
    assert open_bundle(copy, verify=False).bundle_hash  # verify=False skips the hashes


def test_truncated_file(copy):
    path = copy / "image.onnx"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:1000])
    assert (
        error_of(lambda: open_bundle(copy))
        == f"{path}: file has 1000 bytes, manifest.json says {size} (altered or truncated). {COPY_AGAIN}"
    )


def test_newer_format_version(copy):
    rewrite_manifest(copy, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    assert error_of(lambda: open_bundle(copy)) == (
        f"{copy / 'manifest.json'}: bundle format_version 2 is newer than this edge-tune reads (1). "
        "Upgrade edge-tune on this device (pip install -U edge-tune)"
    )


def test_not_a_bundle(tmp_path):
    assert error_of(lambda: open_bundle(tmp_path)) == (
        f"{tmp_path}: no manifest.json: not an edge-tune bundle. "
        "Pass a directory made by `edge-tune export MODEL --out DIR`"
    )
    assert error_of(lambda: open_bundle(tmp_path / "nowhere")) == (
        f"{tmp_path / 'nowhere'}: bundle directory does not exist. "
        "Pass a directory made by `edge-tune export MODEL --out DIR`"
    )
    (tmp_path / "manifest.json").write_text("{not json")
    assert error_of(lambda: open_bundle(tmp_path)).startswith(
        f"{tmp_path / 'manifest.json'}: manifest.json is not valid JSON ("
    )


def test_text_graph_with_wrong_inputs(copy):
    shutil.copy(copy / "image.onnx", copy / "text.onnx")
    rehash(copy, "text.onnx")
    bundle = open_bundle(copy)
    assert error_of(lambda: bundle.text_session("cpu", 1)) == (
        f"{copy / 'text.onnx'}: text graph has inputs (pixel_values float[rank 4]), expected "
        f"(prompt_embeds float[rank 3], eot_index int64[rank 1]). {REEXPORT_HINT}"
    )


def test_graph_marked_with_another_role(copy):
    proto = onnx.load(str(copy / "text.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "edge_tune.role":
            prop.value = "image"
    onnx.save(proto, str(copy / "text.onnx"))
    rehash(copy, "text.onnx")
    assert error_of(lambda: open_bundle(copy).text_session("cpu", 1)) == (
        f"{copy / 'text.onnx'}: graph is marked as the image graph, but the manifest uses it as text. {REEXPORT_HINT}"
    )


def test_cli_prints_one_line_and_exit_code_1(copy, run_cli):
    (copy / "tokenizer.json").write_text("{}")
    done = run_cli("info", copy)
    assert done.returncode == 1
    assert done.stderr == (
        f"Error: {copy / 'tokenizer.json'}: file has 2 bytes, manifest.json says "
        f"3642074 (altered or truncated). {COPY_AGAIN}\n"
    )


def test_info_reports_model_files_hashes_providers_and_a_timed_forward(tiny_bundle, run_cli):
    done = run_cli("info", tiny_bundle, "--provider", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["model"]["name"] == "tiny-random" and info["hashes_verified"] is True
    assert set(info["files"]) == {
        "image.onnx",
        "text.onnx",
        "text_shared.onnx",
        "token_embedding.npy",
        "tokenizer.json",
    }
    assert info["providers"]["chosen"] == "cpu" and "cpu" in info["providers"]["available"]
    assert info["text_forward"]["tokens"] == 8
    assert info["text_forward"]["feature_norm"] == pytest.approx(1.0, abs=1e-5)
    human = run_cli("info", tiny_bundle)
    assert human.returncode == 0 and "hashes     all verified" in human.stdout


# --- export-side bad input (needs torch) --------------------------------------------------------


def test_source_dir_that_is_not_a_clip_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from edge_tune_export import export_bundle

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    hint = "Pass a directory written by CLIPModel.save_pretrained (config.json + weights)"
    with pytest.raises(ExportError) as caught:
        export_bundle("clip-vit-b16", tmp_path / "out", source_dir=tmp_path / "bert")
    assert str(caught.value) == (
        f"{tmp_path / 'bert'}: not a CLIP checkpoint (config.json model_type is 'bert'). {hint}"
    )
    with pytest.raises(ExportError) as caught:
        export_bundle("clip-vit-b16", tmp_path / "out", source_dir=tmp_path)
    assert (
        str(caught.value) == f"{tmp_path}: not a CLIP checkpoint (no readable config.json). {hint}"
    )
    assert not (tmp_path / "out").exists()


def test_unknown_model_lists_the_known_ones(tmp_path):
    pytest.importorskip("torch")
    from edge_tune_export import export_bundle

    with pytest.raises(ExportError) as caught:
        export_bundle("clip-vit-h99", tmp_path / "out")
    assert str(caught.value) == (
        "unknown model 'clip-vit-h99'; known models: b16-random, clip-vit-b16, "
        "clip-vit-b32, clip-vit-l14, l14-336-random, l14-random, tiny-random. Or give any "
        "Hugging Face CLIP id (org/name), "
        "or --source DIR with a CLIPModel save_pretrained directory"
    )


def test_out_holding_a_different_bundle_is_refused(tiny_bundle, tmp_path, run_cli):
    pytest.importorskip("torch")
    other = Path(shutil.copytree(tiny_bundle, tmp_path / "other"))
    rewrite_manifest(
        other,
        lambda m: m["model"].update(name="clip-vit-b32", source="hf:openai/clip-vit-base-patch32"),
    )
    before = sorted((p.name, p.stat().st_mtime_ns) for p in other.iterdir())
    done = run_cli("export", "tiny-random", "--out", other)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"Error: {other}: --out already holds a different bundle ('clip-vit-b32' from "
        "'hf:openai/clip-vit-base-patch32'). Choose another --out or delete that bundle first"
    )
    assert sorted((p.name, p.stat().st_mtime_ns) for p in other.iterdir()) == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    from edge_tune_export.write_bundle import bundle_identity, check_target

    with pytest.raises(ExportError, match="non-empty directory that is not an edge-tune bundle"):
        check_target(tmp_path / "junk", {})
    same = json.loads((tiny_bundle / "manifest.json").read_text())
    check_target(
        tiny_bundle, bundle_identity(same)
    )  # the same bundle again: allowed (overwrite-safe)


def test_failed_export_leaves_nothing_half_written(tmp_path):
    """A parity failure (tolerance 0 cannot be met) after both graphs were written: no --out, no temp dir."""
    pytest.importorskip("torch")
    from edge_tune_export import export_bundle

    out = tmp_path / "bundle"
    lines = []
    with pytest.raises(ExportError) as caught:
        export_bundle("tiny-random", out, tolerance=0.0, echo=lines.append)
    assert str(caught.value).startswith("bundle.partial-") is False
    assert "parity check failed: ONNX differs from PyTorch by" in str(caught.value)
    assert any(line.startswith("parity text") for line in lines)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_hub_says_to_pass_source(tmp_path, run_cli):
    pytest.importorskip("torch")
    done = run_cli(
        "export",
        "clip-vit-b16",
        "--out",
        tmp_path / "b16",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "Error: cannot fetch openai/clip-vit-base-patch16 from the Hugging Face hub (unreachable or not "
        "cached). Download it elsewhere and pass --source DIR (edge-tune export clip-vit-b16 --source DIR "
        "--out OUT)"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "hf"] or list(tmp_path.iterdir()) == []
