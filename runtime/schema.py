"""Type checks for settings dataclasses read from YAML/JSON/forms (device configs, decoding options).

A dataclass's annotations are its schema: ``int`` fields refuse a YAML ``true`` or ``"4"``, ``float`` fields
take ints, ``Optional[X]`` takes null, ``Tuple[str, ...]`` takes a list. Range rules stay with each field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple, Union, get_args, get_origin, get_type_hints


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML `true` is a bool, and bool is an int


_SIMPLE = {
    int: ("an integer", _is_int),
    float: ("a number", lambda v: _is_int(v) or isinstance(v, float)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def type_problem(hint: Any, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for a field annotated ``hint``, or None when it fits."""
    if get_origin(hint) is Union:  # Optional[X] is Union[X, None]
        options = [h for h in get_args(hint) if h is not type(None)]
        if value is None:
            return None
        problems = [type_problem(h, value) for h in options]
        return None if None in problems else f"{problems[0]} or null"
    if get_origin(hint) is tuple:  # Tuple[X, ...]: a YAML list
        item = get_args(hint)[0]
        if not isinstance(value, (list, tuple)) or any(type_problem(item, v) for v in value):
            kind = _SIMPLE[item][0] if item in _SIMPLE else item.__name__
            return f"must be a list of {kind.split(' ', 1)[-1]}s, got {value!r}"
        return None
    if get_origin(hint) is list:  # List[X]: a JSON/YAML list
        item = get_args(hint)[0]
        if not isinstance(value, list) or any(type_problem(item, v) for v in value):
            kind = _SIMPLE[item][0] if item in _SIMPLE else getattr(item, "__name__", str(item))
            return f"must be a list of {kind.split(' ', 1)[-1]}s, got {_short(value)}"
        return None
    if get_origin(hint) is dict:  # Dict[str, X]: a JSON/YAML mapping
        key, item = get_args(hint)
        if not isinstance(value, dict) or any(type_problem(key, k) for k in value):
            return f"must be a mapping, got {_short(value)}"
        problems = [type_problem(item, v) for v in value.values()] if item is not Any else []
        return next((f"has an entry that {p}" for p in problems if p), None)
    if hint in _SIMPLE:
        kind, ok = _SIMPLE[hint]
        return None if ok(value) else f"must be {kind}, got {type(value).__name__} {value!r}"
    return None  # nested dataclasses and the like check themselves


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def field_types(cls: type) -> Dict[str, Any]:
    """``cls``'s fields and their resolved annotations (they are strings under postponed evaluation)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def normalized(hint: Any, value: Any) -> Any:
    """A checked value in its field's own type: ints where a float is declared become floats, lists tuples."""
    if get_origin(hint) is Union and value is not None:
        hint = next(h for h in get_args(hint) if h is not type(None))
    if hint is float and value is not None:
        return float(value)
    if get_origin(hint) is tuple:
        return tuple(value)
    return value


def check_types(instance: Any, skip: Tuple[str, ...] = ()) -> Optional[Tuple[str, str]]:
    """(field, problem) for the first field of a dataclass instance whose value has the wrong type; None if
    all fit. Fit values are normalised in place (works on frozen dataclasses: called from __post_init__)."""
    for name, hint in field_types(type(instance)).items():
        if name in skip:
            continue
        value = getattr(instance, name)
        problem = type_problem(hint, value)
        if problem:
            return name, problem
        object.__setattr__(instance, name, normalized(hint, value))
    return None
