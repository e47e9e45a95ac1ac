"""Training speed: seconds per optimizer step, loss targets per second and peak GPU memory.

Runs the real loop (`diamusic.train.train`: data loading, collate, forward, our loss, backward,
AdamW) on the built-in melodies encoded with a 9 x 1024 spectral-RVQ codec, so the vocabulary and
shapes are DAC's. Scratch weights, no downloads. The first steps (warm-up) and the last one (it
holds the final evaluation and checkpoint) are left out. Prints one markdown row per preset.

    .venv/bin/python benchmarks/train_speed.py --presets tiny small --batch-size 4 --frames 430
    # on a GPU, Dia-1.6B's shape in bf16:
    python benchmarks/train_speed.py --presets dia-1.6b --batch-size 4 --frames 860 --steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from diamusic.config import load_config
from diamusic.data.dataset import CodesDataset
from diamusic.data.prepare import prepare
from diamusic.model import build_model, count_parameters
from diamusic.patterns import DelayPattern
from diamusic.train import train

WARMUP_STEPS = 3


def dataset(path: Path, melodies: int) -> Path:
    if not (path / "card.json").exists():  # encoded once, then reused by later calls
        prepare("melodies", "spectral-rvq", path, limit=melodies, max_seconds=30.0,
                codec_options={"codebook_size": 1024}, progress=False)  # fmt: skip
    return path


def measure(data: Path, preset: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    overrides = {
        "data.path": str(data),
        "model.preset": preset,
        "delay_pattern": args.pattern,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "grad_accum": 1,
        "data.crop_frames": args.frames,
        "precision": args.precision,
        "logging.every": 1,
        "eval.every": args.steps,
        "eval.batches": 1,
        "checkpoints.every": args.steps,
        "model.gradient_checkpointing": args.activation_checkpointing,
    }
    result = train(load_config("tiny-cpu", overrides=overrides), out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "perf/step_s" in r][WARMUP_STEPS:-1]
    if not timed:
        raise SystemExit(f"--steps {args.steps} leaves no timed steps: use at least {WARMUP_STEPS + 2}")
    row = {
        "step_s": statistics.median(r["perf/step_s"] for r in timed),
        "tokens_per_s": statistics.median(r["perf/tokens_per_s"] for r in timed),
        "loss": result.last_train["train/loss"],
    }
    if "perf/max_memory_gib" in timed[-1]:
        row["max_memory_gib"] = timed[-1]["perf/max_memory_gib"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--frames", type=int, default=430, help="max frames per clip (430 = 5 s of DAC)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--precision", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16")
    parser.add_argument("--pattern", default="musicgen")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--melodies", type=int, default=60, help="melodies to encode for the dataset")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "diamusic-bench-melodies-1024")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = dataset(args.data, args.melodies)
    vocab = CodesDataset(data).vocab
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    checkpointing = ", activation checkpointing" if args.activation_checkpointing else ""
    print(
        f"Setting: {gpu}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}; "
        f"batch {args.batch_size} x up to {args.frames} frames, pattern {args.pattern}, "
        f"precision {args.precision}{checkpointing}\n"
    )
    print("| preset | params | s/step | loss targets/s | peak GPU memory |")
    print("|---|---:|---:|---:|---:|")
    for preset in args.presets:
        with torch.device("meta"):
            params = count_parameters(build_model(preset, DelayPattern.parse(args.pattern), vocab))
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(data, preset, args, Path(tmp) / "run")
        memory = f"{row['max_memory_gib']:.1f} GiB" if "max_memory_gib" in row else "-"
        print(f"| {preset} | {params / 1e6:.1f}M | {row['step_s']:.3f} | {row['tokens_per_s']:,.0f} | {memory} |")


if __name__ == "__main__":
    main()
