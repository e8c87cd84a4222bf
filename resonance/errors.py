"""One error type for everything a user can fix: what went wrong, and what to do about it."""

from __future__ import annotations

from typing import Iterable


class ResonanceError(Exception):
    """An error caused by input or environment, with a hint telling the user what to do.

    The CLI prints ``message`` and ``hint`` and exits with status 2; the server maps it to a 4xx reply.
    Bugs are *not* ResonanceErrors: they keep their traceback.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  what to do: {self.hint}" if self.hint else self.message


class AudioError(ResonanceError):
    """Audio that cannot be decoded or used (empty, corrupt, unsupported format)."""


class DependencyMissing(ResonanceError):
    """An optional dependency (an extra) is not installed."""


def require(module: str, extra: str, purpose: str):
    """Import an optional heavy module, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyMissing(
            f"{purpose} needs the Python package '{module}', which is not installed ({exc}).",
            f"pip install 'resonance-asr[{extra}]'",
        ) from exc


def reject_unknown_fields(cls: type, values: Iterable[str], what: str) -> None:
    """A mapping meant for dataclass ``cls`` (from YAML/JSON/an API) may name only its fields."""
    from dataclasses import fields

    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ResonanceError(f"unknown {what}(s) {unknown}", f"known options: {known}")
