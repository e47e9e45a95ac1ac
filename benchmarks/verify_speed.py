"""How long `verify` (run by every `train` before it writes anything, and by `data inspect --verify`)
takes per GB of codes: every shard's header checked, its codes' range read and the fingerprint
recomputed from the shards and index.

A dataset of random DAC-shaped codes (9 codebooks x 1024) is written directly in the prepared layout
(no codec: 1 GB of codes is ~180 h of audio), then verified; the files are in the page cache, so this
is the CPU's share, and a cold disk adds its read time.

    .venv/bin/python benchmarks/verify_speed.py --gb 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from record import add_results_option, report

from diamusic.data import CARD_FILE, FORMAT, fingerprint
from diamusic.data.dataset import verify

CODEBOOKS, CODES, FRAME_RATE = 9, 1024, 86.13
CLIP_FRAMES = 30 * 86  # 30 s clips
CLIPS_PER_SHARD = 32


def write_dataset(out: Path, gigabytes: float) -> int:
    """Shards of random codes, their index and card; returns the bytes of codes written."""
    (out / "shards").mkdir(parents=True)
    rng = np.random.default_rng(0)
    shard_bytes = CLIPS_PER_SHARD * CLIP_FRAMES * CODEBOOKS * 2
    shards = max(1, round(gigabytes * 1e9 / shard_bytes))
    rows = []
    for s in range(shards):
        codes = rng.integers(0, CODES, (CLIPS_PER_SHARD * CLIP_FRAMES, CODEBOOKS), np.uint16)
        np.save(out / "shards" / f"{s:05d}.npy", codes)
        for c in range(CLIPS_PER_SHARD):
            rows.append({"id": f"{s}-{c}", "text": "a tune", "frames": CLIP_FRAMES, "offset": c * CLIP_FRAMES,
                         "shard": s, "split": "train", "final": True, "source": f"{s}-{c}"})  # fmt: skip
    (out / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = [out / "shards" / f"{s:05d}.npy" for s in range(shards)]
    codec = {"name": "dac", "fingerprint": "0" * 16, "sample_rate": 44100, "frame_rate": FRAME_RATE,
             "num_codebooks": CODEBOOKS, "codebook_size": CODES}  # fmt: skip
    card = {"format": FORMAT, "fingerprint": fingerprint(codec["fingerprint"], paths, rows), "codec": codec,
            "shards": shards, "clips": len(rows)}  # fmt: skip
    (out / CARD_FILE).write_text(json.dumps(card))
    return shards * shard_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="gigabytes of codes")
    add_results_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size = write_dataset(Path(tmp) / "ds", args.gb)
        verify(Path(tmp) / "ds")  # once to warm the page cache
        start = time.perf_counter()
        verify(Path(tmp) / "ds")
        seconds = time.perf_counter() - start
    hours = size / (CODEBOOKS * 2) / FRAME_RATE / 3600
    lines = ["| codes | audio at DAC's rate | verify | per GB |", "|---:|---:|---:|---:|",
             f"| {size / 1e9:.2f} GB | {hours:.0f} h | {seconds:.2f} s | {seconds / (size / 1e9):.2f} s |"]  # fmt: skip
    report("verify: every byte of a dataset checked before training (CPU, page cache warm)", "cpu",
           "\n".join(lines), args.results)  # fmt: skip


if __name__ == "__main__":
    main()
