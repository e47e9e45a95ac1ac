"""Delay-pattern comparisons: the same config trained once per pattern, then one table; and the
demo, that comparison on the built-in melodies with the offline codec.

Every run differs only in its delay pattern (same data, seed, steps and batch plan), so the table's
differences are the pattern's. Generation speed is measured on the same prompts and length cap, on
the device the run trained on.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from diamusic.codecs import SpectralConfig
from diamusic.config import TrainConfig, load_config
from diamusic.data.dataset import CodesDataset
from diamusic.data.prepare import prepare
from diamusic.generate import SamplingConfig, generate_files
from diamusic.patterns import DelayPattern
from diamusic.runs import load_run
from diamusic.train import train


@dataclass
class PatternRow:
    pattern: str
    delays: list[int]
    extra_steps: int
    train_loss: float
    eval_loss: float
    train_entropy: float
    eval_entropy: float
    loss_noise: float
    eval_gap: float
    decode_frames_per_s: float
    run_dir: str


def run_pattern(
    config: TrainConfig, pattern: DelayPattern, run_dir: Path, prompts: list[str], seconds: float, progress: bool
) -> PatternRow:
    """Train one pattern, then generate the prompts from its final checkpoint into RUN/generated."""
    spec = pattern.name if pattern.name != "custom" else ",".join(map(str, pattern.delays))
    result = train(dataclasses.replace(config, delay_pattern=spec), run_dir, progress=progress)
    run = load_run(run_dir)  # on the training device: decode speed is part of the comparison
    sampling = SamplingConfig.for_seconds(seconds, run.codec.frame_rate, seed=config.seed)
    generated, _ = generate_files(run.model, prompts, run.codec, sampling, run_dir / "generated", "gen", {})
    t, e = result.last_train, result.last_eval
    return PatternRow(
        pattern=run.pattern.name,
        delays=run.pattern.to_list(),
        extra_steps=run.pattern.extra_steps,
        train_loss=t["train/loss"],
        eval_loss=e.get("eval/loss", float("nan")),
        train_entropy=t["train/entropy"],
        eval_entropy=e.get("eval/entropy", float("nan")),
        loss_noise=t["train/loss_noise"],
        eval_gap=e.get("eval/gap", float("nan")),
        decode_frames_per_s=generated.frames_per_second,
        run_dir=str(run_dir),
    )


def markdown_table(rows: list[PatternRow]) -> str:
    header = (
        "| pattern | delays | extra decode steps | train loss | eval loss | train entropy | eval entropy "
        "| loss noise | eval gap | decode frames/s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r.pattern} | {','.join(map(str, r.delays))} | {r.extra_steps} | {r.train_loss:.3f} | "
        f"{r.eval_loss:.3f} | {r.train_entropy:.3f} | {r.eval_entropy:.3f} | {r.loss_noise:.4f} | "
        f"{r.eval_gap:.3f} | {r.decode_frames_per_s:.0f} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def write_comparison(rows: list[PatternRow], out: Path) -> Path:
    """comparison.md (for people) and comparison.json (for scripts) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    path = out / "comparison.md"
    path.write_text(
        "# Delay-pattern comparison\n\n"
        "Same data, seed, steps and batches for every row; losses and entropies in nats over real "
        "codes, at the last logging window (train) and the final evaluation (eval). Loss noise is "
        "the std of the loss around its moving average; eval gap = eval loss - loss on a fixed "
        "train subset.\n\n" + markdown_table(rows) + "\n"
    )
    return path


def parse_patterns(patterns: list[str], num_codebooks: int) -> list[DelayPattern]:
    """Validate every pattern before any training starts, so a typo does not cost a finished run."""
    return [DelayPattern.parse(p, num_codebooks=num_codebooks) for p in patterns]


def run_name(pattern: DelayPattern) -> str:
    return pattern.name if pattern.name != "custom" else "custom-" + "-".join(map(str, pattern.delays))


@dataclass
class DemoResult:
    rows: list[PatternRow]
    table: Path  # comparison.md
    runs: Path


def demo(
    out: Path,
    patterns: list[str],
    melodies: int = 80,
    steps: int = 400,
    sets: list[str] | None = None,
    progress: bool = True,
) -> DemoResult:
    """The main job on the embedded default: melodies -> codes -> one tiny model per pattern -> table.

    The prepared data under ``out/data`` is reused by later calls; the runs are trained afresh.
    """
    # checked before anything is prepared or trained, so a typo costs nothing
    parsed = parse_patterns(patterns, SpectralConfig.levels)
    data = out / "data"
    # a small codebook so a few hundred CPU steps show real learning; 1024 is the codec default
    prepare(
        "melodies",
        "spectral-rvq",
        data,
        limit=melodies,
        max_seconds=8.0,
        eval_fraction=0.1,
        codec_options={"codebook_size": 256},
        progress=progress,
    )
    overrides = {
        "data.path": str(data),
        "steps": steps,
        "data.crop_frames": 86,
        "eval.every": steps,
        "demos.every": max(1, steps // 2),
    }
    config = load_config("tiny-cpu", overrides=overrides, sets=sets)
    eval_data = CodesDataset(data, "eval")
    prompts = [eval_data.text(i) for i in range(min(2, len(eval_data)))]
    runs = out / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # the demo's own runs; the prepared data is kept and reused
    rows = []
    for pattern in parsed:
        print(f"\n== training {pattern} for {config.steps} steps ==", file=sys.stderr)
        rows.append(run_pattern(config, pattern, runs / run_name(pattern), prompts, 4.0, progress))
    return DemoResult(rows, write_comparison(rows, out), runs)
