"""YAML as people write it in config files: ``1e9`` and ``5e-4`` are numbers.

PyYAML follows YAML 1.1, where a float needs a dot (``5.0e-4``) and ``5e-4`` is the *string* "5e-4", so a
learning rate or a size written the way every other tool accepts failed with "must be a number, got str".
YAML 1.2 (and JSON) read them as numbers; this loader does too, and is otherwise PyYAML's safe loader.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    pass


# YAML 1.1's float forms plus an exponent without a dot (1e9, -5e-4, 2E+3): YAML 1.2's core schema.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2's numbers (raises yaml.YAMLError as it does)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only, never objects
