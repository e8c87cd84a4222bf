"""Export layer (resonance.export): merge an adapter, export to ONNX with Optimum, quantise, parity-check, bundle.

Public API (imported on first use: ``import resonance.export`` does not load torch)::

    from resonance.export import export_bundle, ParityError
"""

from __future__ import annotations

import importlib
from typing import Any, List

_EXPORTS = {
    "export_bundle": "resonance.export.onnx_export",
    "ParityError": "resonance.export.parity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
