"""Why `make setup` tracks the pitch of a tone once: librosa's pyin is numba code compiled on first use
and cached in the venv. The first pitch track of a fresh process with an empty numba cache, then of a
second process that finds the cache the first one wrote.

    .venv/bin/python benchmarks/numba_warmup.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from record import add_results_option, report

FIRST_TRACK = """
import time, numpy as np
from diamusic.pitch import pitch_track
start = time.perf_counter()
pitch_track(np.sin(np.arange(22050, dtype="float32") / 8), 22050)
print(time.perf_counter() - start)
"""


def first_track(cache: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    done = subprocess.run([sys.executable, "-c", FIRST_TRACK], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_results_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = first_track(cache), first_track(cache)
    table = "| numba cache | first pitch track of a process (s) |\n|---|---:|\n"
    table += f"| empty (a fresh venv) | {cold:.1f} |\n| written by the run before | {warm:.1f} |\n"
    report("librosa's pitch tracker: compiled on first use, then cached", "cpu", table, args.results)


if __name__ == "__main__":
    main()
