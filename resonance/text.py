"""Chinese text normalisation: how people judge a transcript (script and punctuation do not count)."""

from __future__ import annotations

import functools
import re
import unicodedata

# Punctuation and symbols of any script, plus whitespace: not part of what was said.
_NOT_SPOKEN = re.compile(r"[\s\u3000]+")


@functools.lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional -> Simplified Chinese (Whisper mixes the two; training labels are Simplified)."""
    return _t2s().convert(text)


def strip_punctuation(text: str) -> str:
    kept = (ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return _NOT_SPOKEN.sub("", "".join(kept))


def normalize_for_cer(text: str) -> str:
    """The form both reference and hypothesis take before CER: Simplified, no punctuation, no spaces, lower-case."""
    return strip_punctuation(to_simplified(unicodedata.normalize("NFKC", text))).lower()
