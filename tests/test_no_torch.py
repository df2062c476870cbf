"""The runtime never needs torch: where `import torch` fails, a bundle still loads and both graphs run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BLOCKER = '''
import sys

class _NoTorch:
    """Pretend torch and transformers are not installed."""
    blocked = ("torch", "transformers", "torchvision")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
'''

RUNTIME = """
import json, sys
import numpy as np
try:
    import torch
    sys.exit("torch imported despite the blocker")
except ImportError:
    pass
from edge_tune.bundle import open_bundle
bundle = open_bundle(sys.argv[1])
ids = bundle.tokenizer().encode("a photo of a cat.")
embeds = np.asarray(bundle.token_embedding())[np.array(ids)][None]
eot = np.array([len(ids) - 1])
text = bundle.text_session("cpu", 1).run({"prompt_embeds": embeds, "eot_index": eot})
size = bundle.manifest["dims"]["image_size"]
image = bundle.image_session("auto", 1).run({"pixel_values": np.zeros((2, 3, size, size), np.float32)})
print(json.dumps({"text": list(text.shape), "image": list(image.shape),
                  "norm": float(np.linalg.norm(text[0])),
                  "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def blocked_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    return env


def test_runtime_runs_both_graphs_without_torch(tiny_bundle, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME, str(tiny_bundle)],
        capture_output=True,
        text=True,
        env=blocked_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"text": [1, 32], "image": [2, 32], "norm": result["norm"], "loaded": []}
    assert abs(result["norm"] - 1.0) < 1e-5


def test_info_runs_and_export_names_the_extra_without_torch(tiny_bundle, tmp_path):
    env = blocked_env(tmp_path)
    info = subprocess.run(
        [sys.executable, "-m", "edge_tune", "info", str(tiny_bundle)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert info.returncode == 0, info.stderr
    assert "hashes     all verified" in info.stdout
    export = subprocess.run(
        [sys.executable, "-m", "edge_tune", "export", "tiny-random", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert export.returncode == 1
    assert export.stderr == (
        "Error: edge-tune export needs PyTorch and transformers: pip install 'edge-tune[export]'\n"
    )
    assert not (tmp_path / "b").exists()


def test_fit_eval_predict_and_info_run_without_onnx(tiny_bundle, tmp_path):
    """onnx is no runtime dependency: with it (and torch) blocked, the device commands all run,
    and the speed benchmark, which builds graphs with it, names the extra to install."""
    from fit_support import make_colour_shots

    env = blocked_env(tmp_path)
    (tmp_path / "sitecustomize.py").write_text(
        BLOCKER.replace(
            '("torch", "transformers", "torchvision")',
            '("torch", "transformers", "torchvision", "onnx")',
        )
    )
    env["EDGE_TUNE_CACHE"] = str(tmp_path / "cache")
    shots = make_colour_shots(tmp_path / "shots", per_class=4)

    def edge_tune(*args):
        return subprocess.run(
            [sys.executable, "-m", "edge_tune", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )

    run = tmp_path / "run"
    for args in (
        ("info", tiny_bundle),
        ("fit", "--bundle", tiny_bundle, "--data", shots, "--budget-queries", 80, "--out", run),
        ("eval", "--bundle", tiny_bundle, "--data", shots, "--run", run),
        ("predict", run, shots / "red"),
    ):
        done = edge_tune(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert "onnx" not in done.stderr
    speed = edge_tune("bench", "speed", "--bundle", tiny_bundle, "--no-reference", "--repeats", 1)
    assert speed.returncode == 1
    assert speed.stderr == (
        "Error: the benchmarks need a package that is not installed (onnx). "
        "Install the extra: pip install 'edge-tune[bench]'\n"
    )
