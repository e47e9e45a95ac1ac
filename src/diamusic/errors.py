"""The one base class of every error meant for the user.

The CLI prints a ``DiamusicError`` as one line and exits non-zero; anything else is a bug and is
reported as an internal error. Messages say what is wrong in the library's terms (run directory,
dataset, checkpoint), never in terms of a CLI flag, so they read the same from Python. A message whose
last words offer a way out that is an argument of the call (``force``, ``overwrite``, ``resume``) names it
in ``option``, and the CLI shows it as its flag.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiamusicError(Exception):
    """Bad input or a state the user can fix; the message is one line."""

    def __init__(self, message: str = "", option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'musicgen'?)' for the known name closest to a mistyped one; '' when none is close."""
    close = difflib.get_close_matches(name.strip().lower(), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
