"""Inference runtimes behind one protocol, plus export to deployable formats (``runtimes.export``).

Usage: ``from runtimes import get_runtime; out = get_runtime("openvino").load("model.xml").infer(feeds)``.

Importing this package is light: backends (onnxruntime, openvino, tensorrt, torch) load only when a runtime is used.
"""

from runtimes.base import (
    RUNTIMES,
    TOKEN_DTYPE,
    Runtime,
    TensorSpec,
    available_runtimes,
    decode_metadata,
    encode_metadata,
    get_runtime,
    register_runtime,
)

__all__ = [
    "RUNTIMES",
    "TOKEN_DTYPE",
    "Runtime",
    "TensorSpec",
    "available_runtimes",
    "decode_metadata",
    "encode_metadata",
    "get_runtime",
    "register_runtime",
]
