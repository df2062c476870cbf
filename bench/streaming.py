"""Peak memory against the number of images: `predict` on a folder, and fit's uncached feature
pass. Both must be bounded by one batch, not by the folder (a Pi service's `MemoryMax`).

Each measurement runs in a fresh interpreter (`edge_tune_bench.process`). The photos are
2000 x 1500 noise JPEGs of about 2.7 MB each, the size of a phone photo's file; the first `n`
of one folder are used for each count.

    python -m edge_tune_bench.streaming                         # 12, 48, 192 photos, ~3 min
    python -m edge_tune_bench.streaming --counts 8 32 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.memory import peak_rss_mib

CASES = ("session", "predict", "features")
PHOTO_SIZE = (2000, 1500)


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` noise JPEGs (the worst case for a decoder's and a file's size)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:04d}.jpg"
        if not path.exists():
            width, height = PHOTO_SIZE
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def streaming_case(case: str, bundle_path: str, folder: str, count: int) -> dict[str, Any]:
    """One measurement, alone in a fresh process: {"case", "count", "peak_mib"}."""
    from edge_tune.bundle import open_bundle

    bundle = open_bundle(bundle_path)
    paths = sorted(Path(folder).glob("*.jpg"))[:count]
    if case == "session":  # the image graph's own peak: one batch of pixels through it
        from edge_tune.features import FeatureExtractor

        FeatureExtractor(bundle, use_cache=False).encode_paths(paths[:1])
    elif case == "predict":
        from edge_tune.classifier import Classifier

        classifier = Classifier.zero_shot(bundle, ["a photo", "a drawing", "noise"])
        predictions, skipped = classifier.predict_files(paths)
        assert len(predictions) == count and not skipped
    elif case == "features":
        from edge_tune.features import FeatureExtractor

        FeatureExtractor(bundle, use_cache=False).encode_paths(paths)
    return {"case": case, "count": count, "peak_mib": peak_rss_mib()}


def table(rows: list[dict]) -> str:
    session = next(r["peak_mib"] for r in rows if r["case"] == "session")
    lines = [
        f"image graph + one batch, one photo: peak {session:.0f} MiB",
        "",
        "| photos | predict peak MiB | fit's feature pass peak MiB |",
        "|---:|---:|---:|",
    ]
    for count in sorted({r["count"] for r in rows if r["case"] != "session"}):
        peak = {r["case"]: r["peak_mib"] for r in rows if r["count"] == count}
        lines.append(f"| {count} | {peak['predict']:.0f} | {peak['features']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from edge_tune.fit import resolve_bundle
    from edge_tune_bench.process import run_child

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", nargs="+", type=int, default=[12, 48, 192])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--photos", type=Path, help="where to write the photos [a temporary dir]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bundle = str(resolve_bundle(args.bundle))
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.photos or Path(scratch) / "photos"
        make_photos(folder, max(args.counts))
        rows = []
        for case, count in [("session", 1)] + [(c, n) for n in args.counts for c in CASES[1:]]:
            job = {"case": case, "bundle_path": bundle, "folder": str(folder), "count": count}
            rows.append(run_child("streaming", job, threads=1, timeout=1800))
            print(f"{case} {count}: {rows[-1]['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    print(json.dumps({"rows": rows}) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
