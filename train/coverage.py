"""The recordings that hold the most different syllables, for training's `--pick sounds` (the recipe study).

On speaker A's unseen phrases (30 recordings, the default recipe, 3 seeds), 90 % of the characters the speaker
had recorded in other phrases were right, 70 % of those whose syllable only was recorded, 59 % of the rest. So
the study asked whether 30 recordings chosen to hold the most syllables teach more: they did not (README,
"Recipe study": 83 / 72 % seen / unseen against 93 / 74 % for the first 30, whose repeated everyday patterns
are learnt more firmly). The selection stays an option; the greedy rule: each next recording is the one with
the most syllables (toneless pinyin) not yet covered, the shorter text on a tie, then the one listed first.
Text that is not Chinese counts its words instead.
"""

from __future__ import annotations

import re
from typing import Callable, List, Sequence, Set, TypeVar

from resonance.errors import DependencyMissing

T = TypeVar("T")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _pinyin():
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError as exc:
        raise DependencyMissing(
            "--pick sounds needs 'pypinyin' (the syllables of each phrase), which is not installed",
            "pip install pypinyin (it comes with resonance-asr[train])",
        ) from exc
    return lambda text: lazy_pinyin(text, style=Style.NORMAL, errors="ignore")


def pinyin_parts(text: str) -> List[str]:
    """The initials and finals (toneless) of the Chinese characters in ``text``, in order: 我想 -> w o x iang."""
    han = "".join(_HAN.findall(text))
    if not han:
        return []
    _pinyin()  # the clear error when pypinyin is missing
    from pypinyin import Style, lazy_pinyin

    initials = lazy_pinyin(han, style=Style.INITIALS, strict=False, errors="ignore")
    finals = lazy_pinyin(han, style=Style.FINALS, strict=False, errors="ignore")
    return [part for pair in zip(initials, finals) for part in pair if part]


def sounds(text: str) -> Set[str]:
    """The syllables of ``text``: toneless pinyin for Chinese characters, lower-cased words for the rest."""
    han = "".join(_HAN.findall(text))
    syllables = set(_pinyin()(han)) if han else set()
    other = _HAN.sub(" ", text)
    return syllables | {word.lower() for word in _WORD.findall(other)}


def order_by_sounds(items: Sequence[T], text: Callable[[T], str] = str) -> List[T]:
    """``items`` reordered so that each next one adds the most syllables not in the items before it.

    Greedy set cover: at each step the item with the most new syllables; ties go to the shorter text, then to
    the earlier item. Items that add nothing keep their order at the end.
    """
    covered: Set[str] = set()
    units = [sounds(text(item)) for item in items]
    left = list(range(len(items)))
    order: List[int] = []
    while left:
        best = max(left, key=lambda i: (len(units[i] - covered), -len(text(items[i])), -i))
        if not units[best] - covered:
            order.extend(left)  # nothing new anywhere: the rest as listed
            break
        order.append(best)
        covered |= units[best]
        left.remove(best)
    return [items[i] for i in order]
