"""Chinese text normalisation: how people judge a transcript (script and punctuation do not count), and
the invisible characters a label must not hold."""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import List

from resonance.errors import DependencyMissing

# Punctuation and symbols of any script, plus whitespace: not part of what was said.
_NOT_SPOKEN = re.compile(r"[\s\u3000]+")


@functools.lru_cache(maxsize=1)
def _t2s():
    """OpenCC's converter, or its pure-Python port where OpenCC has no wheel (JetPack 5's Python 3.8 on
    aarch64; pyproject.toml installs one or the other). Both read OpenCC's dictionaries; they differ where OpenCC
    keeps an ambiguous character (著) that the port simplifies (着)."""
    try:
        import opencc
    except ImportError:
        try:
            import opencc_purepy as opencc
        except ImportError as exc:
            raise DependencyMissing(
                "Traditional -> Simplified Chinese conversion needs 'opencc' (or 'opencc-purepy'), which is "
                "not installed",
                "pip install opencc (on a Jetson with Python 3.8: pip install opencc-purepy)",
            ) from exc
    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional -> Simplified Chinese (Whisper mixes the two; training labels are Simplified)."""
    return _t2s().convert(text)


def strip_punctuation(text: str) -> str:
    kept = (ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return _NOT_SPOKEN.sub("", "".join(kept))


def invisible_characters(text: str) -> List[str]:
    """The invisible format characters in ``text`` as U+XXXX, each once: Unicode category Cf (zero-width
    space and joiners U+200B-U+200D, U+FEFF, the word joiner U+2060 ...). Pasted in with a phrase, one makes
    a label that looks the same as another but is not."""
    return list(dict.fromkeys(f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) == "Cf"))


def strip_invisible(text: str) -> str:
    """``text`` without invisible format characters and surrounding white space: the label as it was meant."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def normalize_for_cer(text: str) -> str:
    """The form both reference and hypothesis take before CER: Simplified, no punctuation, no spaces, no
    invisible characters (a zero-width space is no character said), lower-case."""
    return strip_punctuation(to_simplified(unicodedata.normalize("NFKC", strip_invisible(text)))).lower()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two short strings (characters)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
