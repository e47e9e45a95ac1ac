"""The offline codec's transforms and fit: numpy's inverse STFT against torch.istft, and one k-means
level on one thread against two (the codec runs on one, see `codecs._one_thread`).

    .venv/bin/python benchmarks/codec_speed.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from record import add_results_option, report

from diamusic import codecs


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_option(parser)
    args = parser.parse_args()
    n_fft, hop = 2048, 256
    wave = np.random.default_rng(0).standard_normal(22050 * 3).astype(np.float32)
    window = torch.hann_window(n_fft)
    spec = codecs._stft(wave, n_fft, hop, window.numpy())
    length = (len(spec) - 1) * hop
    spec_t = torch.from_numpy(spec.T.copy())
    ours = best_of(20, lambda: codecs._istft(spec, n_fft, hop, window.numpy(), length))
    theirs = best_of(20, lambda: torch.istft(spec_t, n_fft, hop, window=window, center=True, length=length))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((60_000, 128)).astype(np.float32))
    levels = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        levels[threads] = best_of(2, lambda: codecs._kmeans(x, 1024, 8, torch.Generator().manual_seed(0)))
    lines = ["| work | time |", "|---|---:|",
             f"| inverse STFT of 3 s (n_fft 2048, hop 256), numpy (ours) | {ours * 1e3:.1f} ms |",
             f"| the same, torch.istft | {theirs * 1e3:.1f} ms |",
             f"| one k-means level, 60,000 frames x 1,024 centroids, 8 iterations, 1 thread | {levels[1]:.2f} s |",
             f"| the same, 2 threads | {levels[2]:.2f} s |"]  # fmt: skip
    report("offline codec: transforms and fit (CPU, best of 20 / 2)", "cpu", "\n".join(lines), args.results)


if __name__ == "__main__":
    main()
