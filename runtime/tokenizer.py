"""Token ids -> text with the bundle's ``tokenizer.json`` (Hugging Face ``tokenizers``: Rust, no transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

from resonance.errors import DependencyMissing


class Tokenizer:
    """Decodes Whisper output; every id from ``eot`` up is special (eot, sot, languages, tasks, timestamps)."""

    def __init__(self, path: Path, eot: int) -> None:
        try:
            import tokenizers
        except ImportError as exc:  # a base dependency: only a broken or partial install gets here
            raise DependencyMissing(
                f"decoding Whisper tokens needs the Python package 'tokenizers', which does not load ({exc})",
                "reinstall it: pip install --only-binary :all: 'tokenizers>=0.15' (a wheel: no Rust compiler "
                "needed), or pip install --force-reinstall resonance-asr",
            ) from exc
        self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        self.eot = eot

    def decode(self, ids: Iterable[int]) -> str:
        # Byte-level BPE: one Chinese character is often split over 2-3 tokens, so decode the whole sequence
        # at once (never token by token) and let the byte decoder reassemble the UTF-8.
        text_ids: List[int] = [int(i) for i in ids if int(i) < self.eot]
        return self._tokenizer.decode(text_ids, skip_special_tokens=True).strip()

    def encode(self, text: str) -> List[int]:
        """Text -> ids without special tokens (used to check phrases and in tests)."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)
