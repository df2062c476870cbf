"""Image features, computed once per image and cached on disk.

An entry is keyed by (bundle hash, sha256 of the file's bytes, preprocessing settings), so a second
fit on the same shots runs the image graph zero times, an edited photo gets a new key and is
recomputed, and another bundle never reads this one's features. The bytes that are hashed are the
bytes that are decoded (no race with an editor saving the file). Each entry is one `.npy` written
to a temporary file in the same folder, fsynced and renamed into place, so a killed process never
leaves a half-written entry; an unreadable entry is treated as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_tune.atomic import atomic_write
from edge_tune.errors import DataError
from edge_tune.preprocess import preprocess_image, preprocess_key

# Images per image-graph run: ViT-B/16's activations at 4 images are ~300 MiB below 16, at the
# same speed per image (docs/bench.md).
DEFAULT_BATCH_SIZE = 4
Progress = Callable[[int, int], None]  # (paths handled so far, paths)


def default_cache_dir() -> Path:
    """`$EDGE_TUNE_CACHE`, else `~/.cache/edge-tune`."""
    env = os.environ.get("EDGE_TUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-tune"


class FeatureExtractor:
    """Encodes image files with a bundle's image graph through the on-disk cache.

    The image session is created only on the first cache miss, so a fully cached folder never
    loads the image graph. Counters (`image_graph_runs`, `images_encoded`, `cache_hits`) let tests
    and benchmarks see what really ran.
    """

    def __init__(
        self,
        bundle,
        *,
        cache_dir: str | Path | None = None,
        provider: str = "auto",
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        use_cache: bool = True,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bundle = bundle
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.provider, self.threads, self.batch_size, self.use_cache = (
            provider,
            threads,
            batch_size,
            use_cache,
        )
        self.image_graph_runs = 0
        self.images_encoded = 0
        self.cache_hits = 0
        self.store_errors = 0  # entries that could not be written (read-only/full disk)
        self.last_store_error: str | None = None
        self._session = None
        settings = json.dumps(preprocess_key(bundle.preprocess), sort_keys=True)
        self._settings_hash = hashlib.sha256(settings.encode()).hexdigest()[:16]
        self._width = int(bundle.projection_dim)

    def encode_paths(
        self,
        paths: list[Path],
        *,
        progress: Progress | None = None,
        digests: list[str] | None = None,
    ) -> np.ndarray:
        """f32[N, P] L2-normalised features, row i for paths[i].

        Files are read in order and each miss joins the batch being filled, which runs as soon as
        it is full: memory holds one batch of files and pixels, never the folder (120 phone
        photos held 1.1 GB when every miss was read first). `digests` (each file's sha256, from
        `file_digest`) spares reading the files that are in the cache: a resumed fit then reads
        each image once, to hash it. `progress(done, total)` counts paths handled."""
        features = np.empty((len(paths), self._width), dtype=np.float32)
        known: dict[str, tuple[int, bool]] = {}  # digest -> (a row holding it, from the cache?)
        waiting: dict[str, list[int]] = {}  # digest -> rows that wait for the batch being filled
        batch: list[tuple[str, Path, bytes]] = []

        def run_batch() -> None:
            pixels = np.stack(
                [
                    preprocess_image(data, self.bundle.preprocess, name=path)
                    for _, path, data in batch
                ]
            )
            for (digest, _, _), row in zip(batch, self._run(pixels), strict=True):
                rows = waiting.pop(digest)
                features[rows] = row
                known[digest] = (rows[0], False)
                if self.use_cache:
                    self._store(digest, row)
            self.images_encoded += len(batch)
            batch.clear()

        if progress is not None:
            progress(0, len(paths))
        for i, path in enumerate(paths):
            data = None if digests is not None else _read_bytes(Path(path))
            digest = digests[i] if digests is not None else hashlib.sha256(data).hexdigest()
            if digest in known:
                row, cached = known[digest]
                features[i] = features[row]
                self.cache_hits += cached
                continue
            if digest in waiting:
                waiting[digest].append(i)
                continue
            cached = self._load(digest) if self.use_cache else None
            if cached is not None:
                features[i] = cached
                known[digest] = (i, True)
                self.cache_hits += 1
                continue
            if data is None:
                data = _read_bytes(Path(path))
                if hashlib.sha256(data).hexdigest() != digest:
                    raise DataError(
                        "the image changed while the run was reading it",
                        path=path,
                        hint="Leave the photos alone while fit runs, then run it again",
                    )
            waiting[digest] = [i]
            batch.append((digest, Path(path), data))
            if len(batch) == self.batch_size:
                run_batch()
                if progress is not None:
                    progress(i + 1, len(paths))
        if batch:
            run_batch()
        if progress is not None:
            progress(len(paths), len(paths))
        return features

    # --- internals ------------------------------------------------------------------------------
    def _run(self, pixels: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = self.bundle.image_session(self.provider, self.threads)
        self.image_graph_runs += 1
        out = np.asarray(self._session.run({"pixel_values": pixels}), dtype=np.float32)
        if out.shape != (len(pixels), self._width):
            raise DataError(
                f"image graph returned features of shape {list(out.shape)}, expected "
                f"[{len(pixels)}, {self._width}]",
                path=self.bundle.path,
                hint="Re-export the bundle",
            )
        if not np.all(np.isfinite(out)):
            bad = int(np.sum(~np.all(np.isfinite(out), axis=1)))
            raise DataError(
                f"image graph returned non-finite features for {bad} of {len(pixels)} images",
                path=self.bundle.path,
                hint="Re-export the bundle (an fp16 graph can overflow: export it in fp32)",
            )
        return out

    def _entry(self, digest: str) -> Path:
        key = hashlib.sha256(
            f"{self.bundle.bundle_hash}|{digest}|{self._settings_hash}".encode()
        ).hexdigest()
        return self.cache_dir / "features" / self.bundle.bundle_hash[:16] / key[:2] / f"{key}.npy"

    def _load(self, digest: str) -> np.ndarray | None:
        path = self._entry(digest)
        try:
            row = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if row.dtype != np.float32 or row.shape != (self._width,) or not np.all(np.isfinite(row)):
            return None
        return row

    def _store(self, digest: str, row: np.ndarray) -> None:
        path = self._entry(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_npy_atomic(path, row)
        except OSError as err:  # a read-only or full cache must not stop a fit: it only costs speed
            self.store_errors += 1
            self.last_store_error = f"{path.parent}: {err.strerror or err}"


def image_features(
    bundle,
    dataset,
    *,
    cache_dir: str | Path | None = None,
    provider: str = "auto",
    threads: int | None = None,
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    digests: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(f32[N, P] features, i64[N] labels) for a `Dataset`, through the cache."""
    extractor = FeatureExtractor(
        bundle, cache_dir=cache_dir, provider=provider, threads=threads, batch_size=batch_size
    )
    paths = [s.path for s in dataset.samples]
    features = extractor.encode_paths(paths, progress=progress, digests=digests)
    return features, dataset.labels


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the feature cache's key and the run's data hash are made of it."""
    return hashlib.sha256(_read_bytes(Path(path))).hexdigest()


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `.npy` all or nothing (`edge_tune.atomic`), never pickled."""
    atomic_write(
        path, lambda stream: np.save(stream, np.ascontiguousarray(array), allow_pickle=False)
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise DataError(
            "image disappeared since the folder was read",
            path=path,
            hint="Run again on the current folder",
        ) from err
    except OSError as err:
        raise DataError(
            f"cannot read the file ({err.strerror or err})",
            path=path,
            hint="Fix its permissions or remove it",
        ) from err
