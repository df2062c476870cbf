"""The image-feature cache: hits, misses, edits, atomic entries, bounded batches (real graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tune.data import load_shots
from edge_tune.features import FeatureExtractor, default_cache_dir, image_features
from edge_tune.preprocess import preprocess_image

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = Path(skimage_data.__file__).parent


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from edge_tune.bundle import open_bundle

    return open_bundle(tiny_bundle)


@pytest.fixture
def shots(tmp_path) -> Path:
    """Two classes of real photos (different sizes and modes), one duplicated file."""
    root = tmp_path / "shots"
    for folder, names in {
        "cat": ["chelsea.png", "coffee.png", "astronaut.png"],
        "rocket": ["rocket.jpg", "camera.png", "motorcycle_left.png"],
    }.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes((PHOTOS / name).read_bytes())
    (root / "rocket" / "copy.jpg").write_bytes((PHOTOS / "rocket.jpg").read_bytes())
    return root


def direct_features(bundle, paths) -> np.ndarray:
    """What the image graph gives for each file on its own, no cache involved."""
    session = bundle.image_session("cpu", 1)
    return np.concatenate(
        [session.run({"pixel_values": preprocess_image(p, bundle.preprocess)[None]}) for p in paths]
    )


def test_second_pass_runs_the_image_graph_zero_times(bundle, shots, tmp_path):
    dataset = load_shots(shots)
    paths = [s.path for s in dataset.samples]
    first = FeatureExtractor(bundle, cache_dir=tmp_path / "cache", batch_size=4)
    features = first.encode_paths(paths)
    assert first.images_encoded == 6 and first.image_graph_runs == 2  # 7 files, 6 distinct contents
    np.testing.assert_allclose(features, direct_features(bundle, paths), rtol=0, atol=1e-6)
    second = FeatureExtractor(bundle, cache_dir=tmp_path / "cache", batch_size=4)
    np.testing.assert_array_equal(second.encode_paths(paths), features)
    assert second.image_graph_runs == 0 and second.cache_hits == 7 and second._session is None


def test_an_edited_photo_is_recomputed(bundle, shots, tmp_path):
    paths = [s.path for s in load_shots(shots).samples]
    before = FeatureExtractor(bundle, cache_dir=tmp_path / "cache").encode_paths(paths)
    edited = shots / "cat" / "coffee.png"
    Image.open(edited).rotate(90).save(edited)
    extractor = FeatureExtractor(bundle, cache_dir=tmp_path / "cache")
    after = extractor.encode_paths(paths)
    assert extractor.images_encoded == 1 and extractor.cache_hits == 6
    changed = [i for i in range(len(paths)) if not np.array_equal(before[i], after[i])]
    assert changed == [paths.index(edited)]
    np.testing.assert_allclose(after[changed[0]], direct_features(bundle, [edited])[0], atol=1e-6)


def test_batches_are_bounded_and_do_not_change_features(bundle, shots, tmp_path):
    paths = [s.path for s in load_shots(shots).samples]
    seen = []
    one = FeatureExtractor(bundle, batch_size=1, use_cache=False)
    three = FeatureExtractor(bundle, batch_size=3, use_cache=False)
    by_one = one.encode_paths(paths)
    by_three = three.encode_paths(paths, progress=lambda done, total: seen.append((done, total)))
    assert (one.image_graph_runs, three.image_graph_runs) == (6, 2)
    # progress counts paths handled (7, one a duplicate), after each batch of 3 misses and at the end
    assert seen == [(0, 7), (3, 7), (6, 7), (7, 7)]
    np.testing.assert_allclose(by_three, by_one, rtol=0, atol=1e-6)


def test_entries_are_whole_npy_files_and_a_broken_one_is_rewritten(bundle, shots, tmp_path):
    cache = tmp_path / "cache"
    dataset = load_shots(shots)
    features, labels = image_features(bundle, dataset, cache_dir=cache)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 6 and not list(cache.rglob("*.tmp"))
    for entry in entries:
        row = np.load(entry, allow_pickle=False)
        assert row.dtype == np.float32 and row.shape == (bundle.projection_dim,)
    entries[0].write_bytes(entries[0].read_bytes()[:40])  # as if the disk had lost the tail
    extractor = FeatureExtractor(bundle, cache_dir=cache)
    np.testing.assert_array_equal(
        extractor.encode_paths([s.path for s in dataset.samples]), features
    )
    assert extractor.images_encoded == 1
    assert np.load(entries[0], allow_pickle=False).shape == (bundle.projection_dim,)


def test_cache_dir_defaults_to_env_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_TUNE_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    monkeypatch.delenv("EDGE_TUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "edge-tune"


def test_entries_are_keyed_by_bundle_hash(bundle, shots, tmp_path):
    """Features of another bundle (another hash) are never read back for this one."""
    paths = [s.path for s in load_shots(shots).samples]
    FeatureExtractor(bundle, cache_dir=tmp_path / "cache").encode_paths(paths)
    other = OtherHash(bundle)
    extractor = FeatureExtractor(other, cache_dir=tmp_path / "cache")
    extractor.encode_paths(paths)
    assert (
        extractor.cache_hits == 0 and extractor.images_encoded == 6
    )  # duplicate content: encoded once


class OtherHash:
    """The same graphs under another bundle hash (as a re-export would have)."""

    def __init__(self, bundle):
        self._bundle = bundle
        self.bundle_hash = "f" * 64

    def __getattr__(self, name):
        return getattr(self._bundle, name)


def test_misses_are_encoded_as_they_are_read_one_batch_in_memory(bundle, shots, monkeypatch):
    # 120 phone photos once held 1.1 GB: every miss was read before the first batch ran
    import edge_tune.features as features_module

    events = []
    read = features_module._read_bytes
    monkeypatch.setattr(features_module, "_read_bytes", lambda p: events.append("read") or read(p))
    extractor = FeatureExtractor(bundle, batch_size=2, use_cache=False)
    run = extractor._run
    monkeypatch.setattr(extractor, "_run", lambda pixels: events.append("run") or run(pixels))
    extractor.encode_paths([s.path for s in load_shots(shots).samples])
    reads_between_runs = "".join("." if e == "read" else "|" for e in events).split("|")
    held = max(len(chunk) for chunk in reads_between_runs)
    assert events.count("run") == 3 and held <= 2 + 1  # a batch, and the duplicate read beside it
