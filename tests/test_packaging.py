"""The wheel holds every package and data file the commands read, and works outside the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def import_name(folder: Path) -> str:
    """The import name setuptools gives a folder of the checkout, through `package-dir`."""
    relative = folder.relative_to(REPO).parts
    for name, source in SETUPTOOLS.get("package-dir", {}).items():
        if relative[: len(Path(source).parts)] == Path(source).parts:
            return ".".join([name, *relative[len(Path(source).parts) :]])
    return ".".join(relative)


def test_every_package_folder_is_listed_in_pyproject():
    roots = [REPO / "edge_tune", *(REPO / source for source in SETUPTOOLS["package-dir"].values())]
    folders = {init.parent for root in roots for init in root.rglob("__init__.py")}
    listed = set(SETUPTOOLS["packages"])
    missing = sorted(import_name(folder) for folder in folders if import_name(folder) not in listed)
    assert not missing, f"add to [tool.setuptools] packages: {missing}"


def test_the_files_the_code_reads_are_package_data():
    from edge_tune.fit import DEFAULT_BUNDLE
    from edge_tune_export.registry import CLIP_BPE_TOKENIZER, REGISTRY_FILE

    edge_tune = REPO / "edge_tune"
    export = REPO / SETUPTOOLS["package-dir"]["edge_tune_export"]
    assert (
        DEFAULT_BUNDLE.is_relative_to(edge_tune) and (DEFAULT_BUNDLE / "text_shared.onnx").is_file()
    )
    assert REGISTRY_FILE.is_relative_to(export) and CLIP_BPE_TOKENIZER.is_relative_to(export)
    data = SETUPTOOLS["package-data"]
    assert data[import_name(DEFAULT_BUNDLE)] == ["*"]
    globs = data[import_name(REGISTRY_FILE.parent)]
    assert REGISTRY_FILE.name in globs and f"{CLIP_BPE_TOKENIZER.parent.name}/*" in globs


@pytest.mark.slow
def test_the_wheel_fits_predicts_evaluates_and_exports_from_an_unrelated_folder(tmp_path):
    done = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "wheel_check.sh"),
            "--workdir",
            str(tmp_path),
            "--python",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "wheel_check: installed with [cpu] only (no onnx, torch or transformers)" in lines
    assert any(line.startswith("wheel_check: eval: accuracy ") for line in lines), lines
    assert "wheel_check: predict: 50 predictions" in lines
    assert lines[-2:] == ["wheel_check: export tiny-random: tiny", "wheel_check: ok"]
