"""Runtime layer (resonance.runtime): transcription on onnxruntime. Never imports torch or transformers.

Kept runnable on Python 3.8 (JetPack 5): no 3.9+ syntax or APIs here.

Public API (imported on first use, so ``import resonance.runtime`` stays light)::

    from resonance.runtime import Transcriber
    result = Transcriber("bundles/grandpa").transcribe("clip.wav")
    result = Transcriber.for_device("bundles/grandpa", "jetson-orin-nano").transcribe(samples, sample_rate=44100)
    match = Transcriber("bundles/grandpa").match_phrases("clip.wav")
"""

from __future__ import annotations

from resonance.lazy import lazy_exports

# name -> module that defines it (PEP 562 lazy attributes: numpy/onnxruntime load only when a name is used).
_EXPORTS = {
    "Transcriber": "resonance.runtime.transcriber",
    "TranscriptionResult": "resonance.runtime.transcriber",
    "Segment": "resonance.runtime.transcriber",
    "DecodingOptions": "resonance.runtime.decoding",
    "PhraseMatch": "resonance.runtime.phrases",
    "load_device_config": "resonance.runtime.device_config",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
