"""Execution providers: what is compiled in, what really runs, and clear errors for what cannot."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edge_tune.errors import ProviderError
from edge_tune.providers import PROVIDER_NAMES, available_providers, make_session, resolve_provider


def absent_provider() -> str:
    have = set(ort.get_available_providers())
    return next(
        short
        for short in ("coreml", "nnapi", "cuda", "tensorrt", "directml")
        if PROVIDER_NAMES[short] not in have
    )


def test_available_lists_this_build_in_short_names():
    have = available_providers()
    assert "cpu" in have
    assert {PROVIDER_NAMES[s] for s in have} <= set(ort.get_available_providers())


def test_auto_picks_a_compiled_in_provider():
    chosen = resolve_provider("auto")
    assert chosen in available_providers()
    if available_providers() == ["cpu"]:
        assert chosen == "cpu"


def test_explicit_absent_provider_is_an_error():
    name = absent_provider()
    with pytest.raises(ProviderError) as caught:
        resolve_provider(name)
    assert str(caught.value).startswith(
        f"execution provider {name!r} is not in this onnxruntime build (available: "
        f"{', '.join(available_providers())}). "
    )
    assert "\n" not in str(caught.value)


def test_unknown_provider_is_an_error():
    with pytest.raises(ProviderError) as caught:
        resolve_provider("quantum")
    assert str(caught.value).startswith("execution provider 'quantum' is unknown") is False
    assert str(caught.value).startswith(
        "unknown execution provider 'quantum'. Use one of: auto, cpu, cuda, "
    )


def test_cpu_session_runs_with_the_threads_asked_for(tiny_bundle):
    session = make_session(tiny_bundle / "text.onnx", "cpu", threads=1, role="text")
    assert session.providers == ["CPUExecutionProvider"] and session.provider == "cpu"
    assert session.report == "running on CPU (1 thread)"
    assert session.inner.get_session_options().intra_op_num_threads == 1
    out = session.run(
        {
            "prompt_embeds": np.zeros((3, 5, 64), np.float32),
            "eot_index": np.array([4, 2, 0], np.int64),
        }
    )
    assert out.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_auto_session_reports_what_really_runs(tiny_bundle):
    session = make_session(tiny_bundle / "image.onnx", "auto", role="image")
    assert session.providers[0] in ort.get_available_providers()
    assert session.providers == session.inner.get_providers()
    assert "\n" not in session.report and session.report


def test_zero_threads_is_an_error(tiny_bundle):
    with pytest.raises(ProviderError, match="--threads must be at least 1, got 0"):
        make_session(tiny_bundle / "text.onnx", "cpu", threads=0, role="text")


def test_cli_explicit_absent_provider_is_one_line(tiny_bundle, run_cli):
    name = absent_provider()
    done = run_cli("info", tiny_bundle, "--provider", name)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(
        f"Error: execution provider {name!r} is not in this onnxruntime build"
    )
