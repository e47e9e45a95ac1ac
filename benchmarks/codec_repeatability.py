"""Whether the offline codec gives the same bits in every process: N fresh interpreters each fit a
small codec, encode its training audio and decode fixed codes, and the distinct results are counted.
Half the processes set torch to one thread first, as a loaded machine can leave MKL with fewer threads
than asked for (MKL's matmuls sum in an order that depends on their threads). With --load, a busy loop
keeps one core occupied meanwhile.

    .venv/bin/python benchmarks/codec_repeatability.py --processes 40
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys

from record import add_results_option, report

CHILD = """
import hashlib, sys
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[1]))
from diamusic.codecs import SpectralRVQCodec
rng = np.random.default_rng(0)
t = np.arange(22050 * 4) / 22050
waves = [(0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
         for f in (220, 330, 440, 523)]
codec = SpectralRVQCodec.fit(waves, 22050, codebook_size=64, iters=2)
codes = np.concatenate(codec.encode_batch(waves, 22050))
wave = codec.decode(rng.integers(0, 64, size=(43, 9)))
digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()[:12]
print(sys.argv[1], codec.fingerprint, digest(codes), digest(wave))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=40)
    parser.add_argument("--load", action="store_true", help="keep one core busy meanwhile")
    add_results_option(parser)
    args = parser.parse_args()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    try:
        seen = collections.Counter(
            subprocess.run([sys.executable, "-c", CHILD, str(1 + i % 2)], capture_output=True, text=True, check=True)
            .stdout.strip()
            for i in range(args.processes)
        )
    finally:
        if busy is not None:
            busy.kill()
    lines = [f"{args.processes} fresh processes{', one core kept busy' if args.load else ''}", "",
             "| torch threads | fit fingerprint | encoded codes | decoded wave | processes |",
             "|---:|---|---|---|---:|"]  # fmt: skip
    for key, n in sorted(seen.items()):
        threads, *digests = key.split()
        lines.append(f"| {threads} | " + " | ".join(f"`{d}`" for d in digests) + f" | {n} |")
    report("offline codec: the same bits in every process (CPU)", "cpu", "\n".join(lines), args.results)


if __name__ == "__main__":
    main()
