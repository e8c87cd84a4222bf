"""Runtime layer (resonance.runtime): transcription on onnxruntime. Never imports torch or transformers.

Kept runnable on Python 3.8 (JetPack 5): no 3.9+ syntax or APIs here.
"""
