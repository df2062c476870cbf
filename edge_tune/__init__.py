"""edge-tune: forward-only prompt tuning of CLIP on the device (SharpZO over ONNX Runtime).

The runtime needs numpy, onnxruntime, pillow and tokenizers; never torch. Heavy modules are imported
lazily so that `import edge_tune` stays cheap inside an app.
"""

from edge_tune.errors import (
    BundleError,
    CheckpointError,
    DataError,
    EdgeTuneError,
    ExportError,
    NumericalError,
    ProviderError,
)

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "CheckpointError",
    "DataError",
    "EdgeTuneError",
    "ExportError",
    "NumericalError",
    "ProviderError",
    "__version__",
]
