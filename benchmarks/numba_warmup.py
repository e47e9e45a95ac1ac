"""Why `make setup` analyses two seconds of audio once: librosa's pyin and beat tracker are numba code
compiled on first use and cached in the venv. The first analysis (`audio_metrics.compile_kernels`: pitch
track, the checkpoint scores, tempo) of a fresh process with an empty numba cache, then of a second process
that finds the cache the first one wrote.

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
import time
from diamusic.audio_metrics import compile_kernels
start = time.perf_counter()
compile_kernels()
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
    table = "| numba cache | first analysis of a process (s) |\n|---|---:|\n"
    table += f"| empty (a fresh venv) | {cold:.1f} |\n| written by the run before | {warm:.1f} |\n"
    report("librosa's pitch and beat trackers: compiled on first use, then cached", "cpu", table, args.results)


if __name__ == "__main__":
    main()
