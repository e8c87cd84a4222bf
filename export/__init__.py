"""Export layer (resonance.export): merge an adapter, export to ONNX with Optimum, quantise, parity-check, bundle.

Public API (imported on first use: ``import resonance.export`` does not load torch)::

    from resonance.export import export_bundle, ParityError
"""

from __future__ import annotations

from resonance.lazy import lazy_exports

_EXPORTS = {
    "export_bundle": "resonance.export.onnx_export",
    "ParityError": "resonance.export.parity",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
