"""Log lines that cannot be forged: control characters in a record become visible escapes.

A request path, a header or a form field is written by whoever sends the request. Logged as is, a path
ending in ``%0AINFO ... loaded bundle 'evil'`` adds a fake line to the server's log, and ``%1b[2J`` clears
the terminal that shows it. Every formatted record is one line; a traceback still follows on its own lines.
"""

from __future__ import annotations

import logging
import re

# C0 controls (CR, LF, ESC ...), DEL, C1 controls, Unicode line/paragraph separators and bidi overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as its Python escape (``\\n``, ``\\x1b`` ...)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class OneLineFormatter(logging.Formatter):
    """A Formatter whose message part is always one line of printable text."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))
