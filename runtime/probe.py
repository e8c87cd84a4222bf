"""`resonance probe`: the hostile home network of issue #12, against a running server on loopback.

(The cases and the table come with the probe command; this module starts with the input it builds.)
"""

from __future__ import annotations

import io

import numpy as np

from resonance.errors import require


def decompression_bomb(seconds: float = 1200.0, rate: int = 48000, container: str = "mp4") -> bytes:
    """A small compressed file of ``seconds`` of stereo silence (AAC at 32 kbit/s): 20 minutes of 48 kHz
    stereo is ~570 KB that decodes to 460 MB of float samples. ``container``: "mp4" (M4A, the length in
    its header) or "adts" (raw AAC, a length FFmpeg can only estimate)."""
    av = require("av", "formats", "building the decompression-bomb case")
    out = io.BytesIO()
    frame_samples = 16384
    silence = np.zeros((2, frame_samples), np.float32)
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream("aac", rate=rate)
        stream.layout = "stereo"
        stream.bit_rate = 32000
        for index in range(int(seconds * rate) // frame_samples):
            frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = index * frame_samples
            for packet in stream.encode(frame):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()
