"""ONNX Runtime sessions on the best execution provider this machine really has.

"Available" is not "usable": a CUDA build without cuDNN lists CUDAExecutionProvider and then runs on
CPU, and a wheel built for another GPU fails only at the first run. So a session is created, its
`get_providers()` compared with the request, and one warm-up run made before it is handed out. `auto`
falls back to CPU and says so in one line; an explicitly requested provider that cannot run is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.errors import EdgeTuneError, ProviderError

# Short names users type -> ORT provider names.
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "cann": "CANNExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "rknpu": "RknpuExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
}
# What `auto` tries, best first. TensorRT is left to an explicit request: it builds an engine per
# input shape (minutes on a Jetson), and the text graph's C and L change between calls.
AUTO_ORDER = ("cuda", "rocm", "migraphx", "coreml", "directml", "openvino", "dnnl", "cpu")
PROVIDER_CHOICES = ("auto", *PROVIDER_NAMES)


def _ort():
    import onnxruntime

    return onnxruntime


def available_providers() -> list[str]:
    """Short names of the providers compiled into this onnxruntime build."""
    compiled = set(_ort().get_available_providers())
    return [short for short, full in PROVIDER_NAMES.items() if full in compiled]


def resolve_provider(provider: str) -> str:
    """`auto` -> the best compiled-in short name; a known short name is checked against this build."""
    name = (provider or "auto").strip().lower()
    have = available_providers()
    if name == "auto":
        return next(short for short in AUTO_ORDER if short in have or short == "cpu")
    if name not in PROVIDER_NAMES:
        raise ProviderError(
            f"unknown execution provider {provider!r}",
            hint=f"use one of: {', '.join(PROVIDER_CHOICES)}",
        )
    if name not in have:
        raise ProviderError(
            f"execution provider {name!r} is not in this onnxruntime build "
            f"(available: {', '.join(have)})",
            hint=_install_hint(name),
        )
    return name


def _install_hint(name: str) -> str:
    if name in ("cuda", "tensorrt"):
        return (
            "install onnxruntime-gpu (pip install 'edge-tune[gpu]'; on Jetson the Jetson AI Lab "
            "wheel), or use --provider auto"
        )
    if name == "openvino":
        return "install onnxruntime-openvino, or use --provider auto"
    return "use --provider auto or cpu"


class Session:
    """An ORT session that runs one graph; `run` returns its single output."""

    def __init__(self, inner: Any, providers: list[str], report: str, path: Path, role: str):
        self.inner = inner
        self.providers = providers
        self.report = report
        self.path = path
        self.role = role
        self.input_names = [i.name for i in inner.get_inputs()]
        self.output_name = inner.get_outputs()[0].name

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.inner.run([self.output_name], feeds)[0]

    @property
    def provider(self) -> str:
        """Short name of the provider that runs first (the one the user gets)."""
        full = self.providers[0] if self.providers else "CPUExecutionProvider"
        return next((s for s, f in PROVIDER_NAMES.items() if f == full), full)


def session_options(threads: int | None = None, *, cpu_arena: bool = True, prepacking: bool = True):
    """ORT options. `cpu_arena=False` frees each run's buffers instead of keeping a grown arena;
    `prepacking=False` keeps only the original weights (prepacked copies cost ~100 MB on ViT-B/16's
    image graph) but makes results depend on the batch size in the last bit."""
    options = _ort().SessionOptions()
    options.enable_cpu_mem_arena = bool(cpu_arena)
    if not prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = (
        3  # ORT's own fallback warnings are replaced by our one-line report
    )
    if threads is not None:
        if int(threads) < 1:
            raise ProviderError(
                f"--threads must be at least 1, got {threads}", hint="pass --threads 1 or more"
            )
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def make_session(
    onnx_path: str | Path,
    provider: str = "auto",
    threads: int | None = None,
    *,
    role: str,
    validate: Callable[[Any], None] | None = None,
    cpu_arena: bool = True,
    prepacking: bool = True,
) -> Session:
    """A warmed-up session on `provider`; `auto` falls back to CPU with a one-line report.

    `validate(inner)` runs on the new ORT session before the warm-up, so a graph of the wrong kind is
    reported as such rather than as a provider failure.
    """
    path = Path(onnx_path)
    requested = (provider or "auto").strip().lower()
    short = resolve_provider(requested)
    if short == "cpu":
        inner = _create(path, ["CPUExecutionProvider"], threads, validate, cpu_arena, prepacking)
        _warm_up(inner)
        return Session(
            inner, inner.get_providers(), f"running on CPU ({_threads_text(threads)})", path, role
        )
    wanted = PROVIDER_NAMES[short]
    try:
        inner = _create(
            path, [wanted, "CPUExecutionProvider"], threads, validate, cpu_arena, prepacking
        )
        if wanted not in inner.get_providers():
            raise RuntimeError(f"{wanted} could not be created (missing libraries?)")
        _warm_up(inner)
    except EdgeTuneError:
        raise
    except Exception as err:
        reason = _first_line(err)
        if requested != "auto":
            raise ProviderError(
                f"execution provider {short!r} cannot run {path.name}: {reason}",
                path=path,
                hint="install its libraries, or use --provider auto or cpu",
            ) from None
        inner = _create(path, ["CPUExecutionProvider"], threads, validate, cpu_arena, prepacking)
        _warm_up(inner)
        return Session(
            inner,
            inner.get_providers(),
            f"{wanted} unavailable ({reason}); running on CPU",
            path,
            role,
        )
    return Session(
        inner, inner.get_providers(), f"running on {wanted} (CPU for unsupported nodes)", path, role
    )


def _create(
    path: Path,
    providers: list[str],
    threads: int | None,
    validate: Callable[[Any], None] | None = None,
    cpu_arena: bool = True,
    prepacking: bool = True,
):
    from edge_tune.errors import BundleError

    ort = _ort()
    options = session_options(threads, cpu_arena=cpu_arena, prepacking=prepacking)
    try:
        inner = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:
        if "CPUExecutionProvider" in providers and len(providers) == 1:
            raise BundleError(
                f"onnxruntime cannot load this graph ({_first_line(err)})",
                path=path,
                hint="re-export the bundle with `edge-tune export`",
            ) from None
        raise
    if validate is not None:
        validate(inner)
    return inner


def _warm_up(inner) -> None:
    """One tiny run: the only honest test that a provider works on this device."""
    feeds = {}
    for arg in inner.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = np.int64 if "int64" in arg.type else np.float32
        feeds[arg.name] = np.zeros(shape, dtype=dtype)
    inner.run(None, feeds)


def _threads_text(threads: int | None) -> str:
    return f"{threads} thread{'s' if threads != 1 else ''}" if threads else "default threads"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
