"""Progress a person can follow: a start and an end line, with its duration, for each long stage, and
bars that turn into plain lines where stderr is not a terminal (a log file, a SLURM job, CI)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

# off a terminal a bar writes a line this often at most, instead of redrawing itself
LOG_INTERVAL_SECONDS = 30.0


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s' or '1 h 02 min'."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def length(frames: int, frame_rate: float) -> str:
    """A clip's length as a listener thinks of it, and as the model counts it: '3.0 s (258 frames)'."""
    return f"{frames / frame_rate:.1f} s ({frames} frame{'s' if frames != 1 else ''})"


@contextlib.contextmanager
def stage(what: str, shown: bool = True) -> Iterator[None]:
    """'what...' now and 'what: done in 12 s' when the block ends (nothing when it raises)."""
    started = time.monotonic()
    if shown:
        print(f"{what}...", file=sys.stderr, flush=True)
    yield
    if shown:
        print(f"{what}: done in {duration(time.monotonic() - started)}", file=sys.stderr, flush=True)


class _Lines:
    """A stream for tqdm off a terminal: each refresh a line of its own, no carriage returns."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text and text != self.last:  # tqdm draws its last state again when it closes
            self.stream.write(text + "\n")
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


def bar(shown: bool = True, **options: Any) -> Any:
    """A tqdm bar on stderr: redrawn on a terminal, a line every `LOG_INTERVAL_SECONDS` elsewhere."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(file=sys.stderr, dynamic_ncols=True, disable=not shown, **options)
    return tqdm(file=_Lines(sys.stderr), mininterval=LOG_INTERVAL_SECONDS, ncols=100, disable=not shown, **options)
