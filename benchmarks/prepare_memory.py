"""`prepare`'s peak memory on long inputs: every clip of a shard held until the shard is encoded
(an unbounded buffer, what prepare did before) against encoding in turns under a byte budget.

A folder of long synthetic tones (one shard: fewer inputs than `ITEMS_PER_SHARD`) is prepared with
the offline codec, once per buffer size, each in its own process; peak RSS is the process's maximum.

    .venv/bin/python benchmarks/prepare_memory.py --files 8 --minutes 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from record import add_results_option, report

RATE = 22050
CHILD = """
import json, resource, sys
from diamusic.data import prepare as module
folder, out, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
module.ENCODE_BUFFER_BYTES = budget
result = module.prepare(folder, "spectral-rvq", out, max_seconds=30.0, codec_options={"codebook_size": 64},
                        progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_bytes": peak, "clips": result.clips, "hours": result.hours}))
"""


def write_tones(folder: Path, files: int, minutes: float) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    rows, total = [], 0
    for i in range(files):
        t = np.arange(int(minutes * 60 * RATE)) / RATE
        wave = (0.3 * np.sin(2 * np.pi * (220 * 2 ** (i / 12)) * t * (1 + 0.01 * np.sin(t)))).astype(np.float32)
        sf.write(folder / f"tone{i}.wav", wave, RATE)
        rows.append({"file": f"tone{i}.wav", "text": f"a long tone number {i}"})
        total += wave.nbytes
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--budget-mb", type=int, default=64, help="the bounded buffer measured")
    add_results_option(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = write_tones(Path(tmp) / "audio", args.files, args.minutes)
        for name, budget in (("unbounded (before)", 1 << 50), (f"{args.budget_mb} MB buffer", args.budget_mb << 20)):
            out = Path(tmp) / f"ds{budget}"
            done = subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "audio"), str(out), str(budget)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            found = json.loads(done.stdout.strip().splitlines()[-1])
            card = json.loads((out / "card.json").read_text())
            rows.append((name, found["peak_bytes"], card["fingerprint"], found["clips"]))
    lines = [f"{args.files} inputs of {args.minutes:g} min ({audio / 2**20:.0f} MB of float32 audio), one shard",
             "", "| buffer | peak RSS | dataset fingerprint | clips |", "|---|---:|---|---:|"]  # fmt: skip
    lines += [f"| {n} | {p / 2**20:.0f} MB | `{f}` | {c} |" for n, p, f, c in rows]
    report("prepare's peak memory on long inputs (CPU)", "cpu", "\n".join(lines), args.results)


if __name__ == "__main__":
    main()
