"""Export layer (resonance.export): merge an adapter, export to ONNX with Optimum, quantise, parity-check, bundle."""
