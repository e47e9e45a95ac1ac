"""The one base class of every error meant for the user.

The CLI prints a ``DiamusicError`` as one line and exits non-zero; anything else is a bug and is
reported as an internal error. Messages say what is wrong in the library's terms (run directory,
dataset, checkpoint), never in terms of a CLI flag, so they read the same from Python.
"""

from __future__ import annotations


class DiamusicError(Exception):
    """Bad input or a state the user can fix; the message is one line."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
