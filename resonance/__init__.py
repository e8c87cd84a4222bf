"""Resonance (共鸣): personal speech recognition for people with dysarthria.

Layers, each importable on its own:
  resonance.data     check / convert / record a patient's recordings (audio/*.wav + labels.json)
  resonance.train    import a base Whisper, fine-tune its encoder (or LoRA) per patient, CER    (torch)
  resonance.export   merge + export to a self-describing ONNX bundle, parity-checked            (torch, optimum)
  resonance.runtime  onnxruntime transcription, Flask API, microphone; never imports torch
"""

__version__ = "0.1.0"
__all__ = ["ResonanceError", "__version__"]

from resonance.errors import ResonanceError
