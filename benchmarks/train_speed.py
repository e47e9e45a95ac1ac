"""Training speed against the hardware: step time, loss targets/s, frames/s, peak memory and MFU,
with and without torch.compile and activation checkpointing; and the loader's batches/s against
the step rate.

Runs the real loop (`diamusic.train.train`: loader, collate, forward, our loss, backward, AdamW) on
the built-in melodies encoded with a 9 x 1024 spectral-RVQ codec, so the vocabulary and shapes are
DAC's. Scratch weights, no downloads. Each run stops one step short of its end, so no evaluation
or checkpoint is timed or written; the first steps (warm-up, compilation) are left out and figures
are medians over the rest.

MFU = model FLOPs per second (`diamusic.flops`, from the config and the batches' shapes) / peak.
On a GPU the peak is its dense bf16 peak (`diamusic.flops.BF16_PEAK_TFLOPS`, or `--peak-tflops`);
a CPU has no such figure, so there it is a measured large matmul in the run's precision (say so
when quoting it). "loader x" = the loader's batches/s (one batch = one optimizer step's micro-
batches, with the run's workers and pinning) / the step rate: above 1 the GPU never waits for data.

    .venv/bin/python benchmarks/train_speed.py --presets tiny small --threads 2
    # one GPU, Dia-1.6B's shape at the research log's batch (20 x 10 s):
    python benchmarks/train_speed.py --presets dia-1.6b --batch-size 20 --frames 860 --workers 4
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from record import add_results_option, report

from diamusic.config import load_config, pattern_of_config
from diamusic.data.dataset import CodesDataset, StepBatches
from diamusic.data.prepare import prepare
from diamusic.flops import peak_tflops
from diamusic.model import build_model, count_parameters
from diamusic.patterns import DelayPattern
from diamusic.train import data_loader, train
from diamusic.trainer import batch_plan

CHECKPOINTING = {"model.gradient_checkpointing": True}
VARIANTS = {  # name: what it sets
    "plain": {},
    "compile": {"compile": True},
    "checkpointing": CHECKPOINTING,
    "compile+checkpointing": {"compile": True, **CHECKPOINTING},
    "lora+checkpointing": {"model.lora_rank": 16, **CHECKPOINTING},  # adapters on every attention projection
    "adamw8bit+checkpointing": {"optim.name": "adamw8bit", **CHECKPOINTING},  # torchao's 8-bit moments
}


def dataset(path: Path, melodies: int, channels: str = "mono") -> Path:
    if not (path / "card.json").exists():  # encoded once, then reused by later calls
        prepare("melodies", "spectral-rvq", path, limit=melodies, max_seconds=30.0, channels=channels,
                codec_options={"codebook_size": 1024}, progress=False)  # fmt: skip
    return path


def config_for(data: Path, preset: str, variant: str, args: argparse.Namespace):
    """``args.config``'s settings (the research log's, say), with the preset, batch and variant measured."""
    overrides = {
        "data.path": str(data),
        "model.preset": preset,
        "delay_pattern": args.pattern,
        # one step more than is run (measure stops after args.steps): the last step's evaluation and
        # checkpoint (20 GB of weights and optimizer state for Dia-1.6B) are never reached
        "steps": args.steps + 1,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "data.crop_frames": args.frames,
        "data.num_workers": args.workers,
        "precision": args.precision,
        **VARIANTS[variant],
        "logging.every": 1,
        "eval.every": args.steps + 1,
        "checkpoints.every": args.steps + 1,
        "samples.every": 0,
        "tracking.backends": [],  # metrics.jsonl only: what a preset sends to TensorBoard or W&B is not timed
    }
    return load_config(args.config, overrides=overrides)


def measure(config, out: Path, warmup: int) -> dict[str, float]:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(config, out, progress=False, stop_after=config.steps - 1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "perf/step_s" in r][warmup:]
    if not timed:
        raise SystemExit(f"--steps {config.steps - 1} leaves no timed steps: use at least {warmup + 1}")
    row = {key: statistics.median(r[f"perf/{key}"] for r in timed) for key in ("step_s", "tokens_per_s", "tflops")}
    row["memory_gib"] = timed[-1].get("perf/max_memory_gib", float("nan"))
    return row


def loader_batches_per_s(config, device: torch.device, batches: int) -> float:
    """The run's DataLoader alone (same plan, workers and pinning), after its first batch."""
    data = CodesDataset(config.data.path)
    steps = StepBatches(data, batch_plan(config), pattern_of_config(config), 0, batches + 1)
    loader = iter(data_loader(steps, config.data, device))
    next(loader)  # worker start-up
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches / (time.perf_counter() - start)


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """The device's reached matmul rate: the reference for MFU where no data-sheet peak exists."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--frames", type=int, default=430, help="max frames per clip (430 = 5 s of DAC)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5, help="first logged steps left out (compilation)")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16")
    parser.add_argument("--pattern", default="musicgen")
    parser.add_argument("--config", default="tiny-cpu", help="the settings measured (a preset or YAML)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--channels", choices=["mono", "stereo"], default="mono", help="of the benchmark's dataset")
    parser.add_argument("--workers", type=int, default=0, help="loader processes (data.num_workers)")
    parser.add_argument("--peak-tflops", type=float, help="the reference for MFU (default: see above)")
    parser.add_argument("--melodies", type=int, default=60, help="melodies to encode for the dataset")
    parser.add_argument("--data", type=Path, help="the encoded dataset (default: made once under the temp folder)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    add_results_option(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    name = "diamusic-bench-melodies-1024" + ("-stereo" if args.channels == "stereo" else "")
    default = Path(tempfile.gettempdir()) / name
    data = dataset(args.data or default, args.melodies, args.channels)
    prepared = CodesDataset(data)
    vocab, frame_rate = prepared.vocab, prepared.card["codec"]["frame_rate"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device == "cuda")
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if device == "cuda" and bf16 else None)
    if peak is None:
        peak = matmul_tflops(device, torch.bfloat16 if bf16 else torch.float32)
        reference = f"a measured {'bf16' if bf16 else 'fp32'} 2048^3 matmul, {peak:.2f} TFLOP/s"
    else:
        reference = f"bf16 peak {peak:g} TFLOP/s"

    lines = [
        f"{args.config}: batch {args.batch_size} x {args.grad_accum} x up to {args.frames} frames, {args.channels}, "
        f"pattern {args.pattern}, "
        f"{'bf16' if bf16 else 'fp32'}, {args.workers} loader worker(s); MFU against {reference}.",
        "",
        "| preset | params | variant | s/step | loss targets/s | audio s/s | model TFLOP/s | MFU | peak memory "
        "| loader x |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pattern = DelayPattern.parse(args.pattern, audio_channels=vocab.audio_channels)
    for preset in args.presets:
        with torch.device("meta"):
            params = count_parameters(build_model(preset, pattern, vocab))
        loader_rate = None
        for variant in args.variants:
            config = config_for(data, preset, variant, args)
            if loader_rate is None:
                loader_rate = loader_batches_per_s(config, torch.device(device), batches=2 * args.steps)
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    row = measure(config, Path(tmp) / "run", args.warmup)
                except torch.cuda.OutOfMemoryError:
                    row = None
            if row is None:  # outside the handler, whose traceback held the model
                gc.collect()
                torch.cuda.empty_cache()
                lines.append(f"| {preset} | {params / 1e6:.1f}M | {variant} | out of memory | | | | | | |")
                print(lines[-1], flush=True)
                continue
            memory = "-" if row["memory_gib"] != row["memory_gib"] else f"{row['memory_gib']:.1f} GiB"
            audio_per_s = row["tokens_per_s"] / vocab.num_streams / frame_rate  # a frame: a target per stream
            lines.append(
                f"| {preset} | {params / 1e6:.1f}M | {variant} | {row['step_s']:.3f} | {row['tokens_per_s']:,.0f} | "
                f"{audio_per_s:,.1f} | {row['tflops']:.3f} | {row['tflops'] / peak:.1%} | {memory} | "
                f"{loader_rate * row['step_s']:.1f} |"
            )
            print(lines[-1], flush=True)  # a run stopped at a time limit keeps what it measured
    title = f"Training speed, {device}"
    report(title, device, "\n".join(lines), args.results)


if __name__ == "__main__":
    main()
