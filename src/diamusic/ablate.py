"""Delay-pattern comparisons: the same config trained once per pattern, then one table.

Every run differs only in its delay pattern (same data, seed, steps and batch plan), so the table's
differences are the pattern's. Generation speed is measured on the same prompts and length cap.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from diamusic.config import TrainConfig
from diamusic.patterns import DelayPattern


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
    from diamusic.generate import SamplingConfig, generate_files, load_run
    from diamusic.train import train

    spec = pattern.name if pattern.name != "custom" else ",".join(map(str, pattern.delays))
    result = train(dataclasses.replace(config, delay_pattern=spec), run_dir, progress=progress)
    run = load_run(run_dir, device="cpu")
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
