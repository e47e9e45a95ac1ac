"""The delay-pattern ablation: one run per pattern x seed on identical settings, each evaluated the
same way, then a table of means with confidence intervals and paired differences.

Within a seed every pattern sees the same crops, batches, CFG drops and initial weights (they are
functions of the seed alone), so a difference between two runs of one seed is the pattern's; a
new seed changes both the initialisation and the data order. ``DIR/ablation.json`` fixes the runs
and their settings: a re-run skips finished runs, resumes interrupted ones, and refuses other
settings unless forced. The demo is this ablation on the built-in melodies with the offline codec.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diamusic.checkpoints import checkpoints_of, step_name, step_of
from diamusic.codecs import SpectralConfig, SpectralRVQCodec
from diamusic.config import DEFAULT_PRESET, TrainConfig, from_dict, load_config, to_dict
from diamusic.data.dataset import CodesDataset
from diamusic.data.prepare import prepare
from diamusic.errors import DiamusicError
from diamusic.eval import evaluate_run
from diamusic.patterns import DelayPattern
from diamusic.runs import RUN_FILE
from diamusic.stats import Estimate, mean_ci, paired_difference, winner
from diamusic.train import train

PLAN_FILE = "ablation.json"
REFERENCE = "dia"  # differences are reported against Dia's own pattern unless told otherwise
PATTERNS = ("dia", "musicgen", "compressed")  # the patterns compared unless told otherwise
SEEDS = 3  # seeds per pattern: the fewest whose 95% t-interval is usable (t = 4.3; with 2 seeds t = 12.7)
# each run is evaluated as `evaluate_run` evaluates a checkpoint unless told otherwise
_EVALUATION = inspect.signature(evaluate_run).parameters


class AblationError(DiamusicError):
    """An ablation that cannot run as asked."""


# (metric key, label, lower is better); per-codebook eval losses are added for the codec's codebooks
METRICS: list[tuple[str, str, bool]] = [
    ("train/loss", "final train loss", True),
    ("eval/loss", "eval loss", True),
    ("eval/interior/loss", "eval loss, interior frames", True),
    ("eval/edge/loss", "eval loss, edge frames", True),
    ("train/entropy", "output entropy (train)", True),
    ("eval/entropy", "output entropy (eval)", True),
    ("train/loss_noise", "loss noise", True),
    ("eval/gap", "eval gap (eval - train subset)", True),
    ("gen/in_key_ratio", "in-key ratio", False),
    ("gen/in_tune_ratio", "in-tune ratio", False),
    ("gen/pitch_stability", "pitch stability (semitones)", True),
    ("gen/voiced_ratio", "voiced ratio", False),
    ("gen/note_rate", "note rate (/s)", False),
    ("gen/chroma_cosine", "chroma similarity to reference", False),
    ("gen/melody_agreement", "melody agreement with reference", False),
    ("gen/frechet_features", "Fréchet distance (chroma+MFCC)", True),
    ("gen/usage_js", "code usage divergence (JS)", True),
    ("gen/decode_steps", "decode steps", True),
    ("gen/frames_per_s", "decode frames/s", False),
]


def run_name(pattern: DelayPattern) -> str:
    return pattern.name if pattern.name != "custom" else "custom-" + "-".join(map(str, pattern.delays))


def parse_patterns(patterns: str | Sequence[str], num_codebooks: int) -> list[DelayPattern]:
    """Validate every pattern before any training starts, so a typo does not cost a finished run.

    A string is a comma-separated list of preset names and delays, the delays of a custom pattern
    taken ``num_codebooks`` at a time: ``dia,musicgen,0,2,4,6,8,10,12,14,16``.
    """
    if isinstance(patterns, str):
        patterns = _group(patterns, num_codebooks)
    parsed = [DelayPattern.parse(p, num_codebooks=num_codebooks) for p in patterns]
    names = [run_name(p) for p in parsed]
    if len(set(names)) != len(names):
        raise AblationError(f"patterns {', '.join(patterns)} name the same pattern twice")
    return parsed


def _group(text: str, num_codebooks: int) -> list[str]:
    groups: list[str] = []
    delays: list[str] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token.lstrip("+-").isdigit():
            delays.append(token)
            if len(delays) == num_codebooks:
                groups.append(",".join(delays))
                delays = []
        elif delays:
            raise AblationError(f"patterns {text!r}: {len(delays)} delays before {token!r}, need {num_codebooks}")
        else:
            groups.append(token)
    if delays:
        raise AblationError(f"patterns {text!r}: the last custom pattern has {len(delays)} of {num_codebooks} delays")
    return groups


# --- the plan and its runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What an ablation directory holds, fixed at its first call (``ablation.json``)."""

    data: str
    patterns: list[list[int]]
    seeds: list[int]
    config: dict[str, Any]  # the resolved TrainConfig, pattern and seed set per run
    prompts: int
    seconds: float
    reference: str

    @property
    def delay_patterns(self) -> list[DelayPattern]:
        return [DelayPattern.parse(d) for d in self.patterns]

    @property
    def edge(self) -> int:
        """Interior frames are those every pattern compared sees in full."""
        return max(p.max_delay for p in self.delay_patterns)

    def run_dir(self, out: Path, pattern: DelayPattern, seed: int) -> Path:
        return out / "runs" / run_name(pattern) / f"seed{seed}"


def fix_plan(out: Path, plan: Plan, force: bool) -> Plan:
    """Write the plan, or check it against the one already there (``force``: replace it)."""
    path = out / PLAN_FILE
    if path.exists() and not force:
        old = json.loads(path.read_text())
        new = dataclasses.asdict(plan)
        changed = [k for k in new if old.get(k) != new[k]]
        if changed:
            raise AblationError(
                f"{out} holds an ablation with other settings ({', '.join(changed)}): use another directory, "
                "or force it to start over with these"
            )
        return plan
    if force and (out / "runs").exists():
        shutil.rmtree(out / "runs")  # runs of the old settings would mix into the new table
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(plan), indent=2))
    return plan


def run_one(plan: Plan, out: Path, pattern: DelayPattern, seed: int, progress: bool) -> dict[str, Any]:
    """Train (skip if finished, resume if interrupted) and evaluate one run; its eval.json is kept."""
    run_dir = plan.run_dir(out, pattern, seed)
    config = from_dict({**plan.config, "delay_pattern": ",".join(map(str, pattern.delays)), "seed": seed})
    config = dataclasses.replace(
        config,
        tracking=dataclasses.replace(
            config.tracking,
            group=config.tracking.group or out.name,
            run_name=f"{run_name(pattern)}-seed{seed}",
            tags=[*config.tracking.tags, f"pattern:{run_name(pattern)}", f"seed:{seed}"],
        ),
    )
    done = [step_of(p) for p in checkpoints_of(run_dir)]
    if config.steps not in done:
        # a run killed before its first checkpoint is started over by the resume itself
        print(f"\n== {'resuming' if done else 'training'} {pattern} seed {seed} ==", file=sys.stderr)
        train(config, run_dir, resume=(run_dir / RUN_FILE).exists(), progress=progress)
    eval_file = run_dir / "eval.json"
    if eval_file.exists():
        result = json.loads(eval_file.read_text())
        if result.get("checkpoint") == step_name(config.steps):
            return result
    audio = run_dir / "generated"
    return evaluate_run(run_dir, config.steps, plan.prompts, plan.seconds, plan.edge, out=eval_file, audio_dir=audio)


# --- the summary --------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    lower_is_better: bool
    per_pattern: dict[str, Estimate]
    versus_reference: dict[str, Estimate]  # pattern - reference, paired by seed
    winner: str | None


def summarise(results: dict[str, dict[int, dict[str, Any]]], reference: str) -> list[Row]:
    """results[pattern][seed] = eval dict -> one row per metric present in every run."""
    names = list(results)
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in results.values())))
    codebooks = sorted({k for r in results[names[0]].values() for k in r if k.startswith("eval/loss/cb")})
    metrics = METRICS + [(k, f"eval loss, codebook {k.removeprefix('eval/loss/cb')}", True) for k in codebooks]
    rows = []
    for key, label, lower in metrics:
        values = {n: [float(results[n][s].get(key, math.nan)) for s in seeds] for n in names}
        if all(math.isnan(v) for vs in values.values() for v in vs):
            continue
        per_pattern = {n: mean_ci(values[n]) for n in names}
        versus = {n: paired_difference(values[n], values[reference]) for n in names if n != reference}
        rows.append(Row(key, label, lower, per_pattern, versus, _clear_winner(values, per_pattern, lower)))
    return rows


def _clear_winner(values: dict[str, list[float]], means: dict[str, Estimate], lower: bool) -> str | None:
    """The best pattern by mean, if its paired interval against every other pattern excludes zero."""

    def badness(name: str) -> float:
        mean = means[name].mean
        return math.inf if math.isnan(mean) else (mean if lower else -mean)

    best = min(means, key=badness)
    for other in means:
        if other != best and winner(paired_difference(values[best], values[other]), best, other, lower) != best:
            return None
    return best


def markdown(rows: list[Row], names: list[str], reference: str, seeds: int) -> str:
    others = [n for n in names if n != reference]
    head = ["metric", *names, *(f"{n} - {reference}" for n in others), "winner"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 2) + "---|"]
    for row in rows:
        cells = [row.per_pattern[n].format() for n in names]
        diffs = [row.versus_reference[n].format() + (" *" if row.versus_reference[n].excludes_zero() else "")
                 for n in others]  # fmt: skip
        arrow = "↓" if row.lower_is_better else "↑"
        lines.append(f"| {row.label} {arrow} | " + " | ".join([*cells, *diffs, row.winner or "no clear winner"]) + " |")
    note = (
        f"Means ± 95% t-interval over {seeds} seed(s); differences paired by seed (* = the interval excludes 0); "
        "a winner only where its paired interval against every other pattern excludes 0. ↓/↑: lower/higher is better."
    )
    return note + "\n\n" + "\n".join(lines)


def write_summary(out: Path, rows: list[Row], names: list[str], plan: Plan) -> Path:
    patterns = {run_name(p): p.to_list() for p in plan.delay_patterns}
    as_json = {
        "patterns": patterns,
        "seeds": plan.seeds,
        "reference": plan.reference,
        "edge_frames": plan.edge,
        "metrics": [
            {
                "key": r.key,
                "label": r.label,
                "lower_is_better": r.lower_is_better,
                "per_pattern": {n: dataclasses.asdict(e) for n, e in r.per_pattern.items()},
                "versus_reference": {n: dataclasses.asdict(e) for n, e in r.versus_reference.items()},
                "winner": r.winner,
            }
            for r in rows
        ],
    }
    (out / "summary.json").write_text(json.dumps(as_json, indent=2, allow_nan=True))
    table = markdown(rows, names, plan.reference, len(plan.seeds))
    grid = "\n".join(f"- {n}: delays {','.join(map(str, d))}" for n, d in patterns.items())
    (out / "summary.md").write_text(f"# Delay-pattern ablation\n\n{grid}\n\n{table}\n")
    return out / "summary.md"


# --- the command --------------------------------------------------------------------------------


@dataclass
class AblationResult:
    out: Path
    summary: Path
    rows: list[Row]
    names: list[str]
    results: dict[str, dict[int, dict[str, Any]]]


def ablate(
    data: str | Path,
    out: str | Path,
    patterns: str | Sequence[str] = PATTERNS,
    seeds: int = SEEDS,
    config: str = DEFAULT_PRESET,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    prompts: int = _EVALUATION["prompts"].default,
    seconds: float = _EVALUATION["seconds"].default,
    reference: str = REFERENCE,
    force: bool = False,
    progress: bool = True,
) -> AblationResult:
    out = Path(out)
    if seeds < 1:
        raise AblationError(f"seeds must be >= 1, got {seeds}")
    base: TrainConfig = load_config(config, {**(overrides or {}), "data.path": str(data)}, sets)
    vocab = CodesDataset(data).vocab
    parsed = parse_patterns(patterns, vocab.num_codebooks)
    names = [run_name(p) for p in parsed]
    if reference not in names:
        raise AblationError(f"the reference pattern {reference!r} is not among the patterns ({', '.join(names)})")
    first_seed = base.seed
    plan = Plan(
        data=str(Path(data).resolve()),
        patterns=[p.to_list() for p in parsed],
        seeds=list(range(first_seed, first_seed + seeds)),
        config={k: v for k, v in to_dict(base).items() if k not in ("delay_pattern", "seed")},
        prompts=prompts,
        seconds=seconds,
        reference=reference,
    )
    fix_plan(out, plan, force)
    results: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in names}
    for seed in plan.seeds:  # seed-major: an interrupted ablation already has whole seeds to compare
        for pattern in parsed:
            results[run_name(pattern)][seed] = run_one(plan, out, pattern, seed, progress)
    rows = summarise(results, reference)
    return AblationResult(out, write_summary(out, rows, names, plan), rows, names, results)


DEMO_DIR = Path("runs/demo")
DEMO_MELODIES = 80  # built-in melodies prepared
DEMO_STEPS = 300  # optimizer steps per run
# a small codebook so a few hundred CPU steps show real learning (1024 is the codec default); 3 prompts
# of 3 s each keep the pitch tracking of 9 evaluations to a few minutes on 2 cores
DEMO_PREPARE = {"max_seconds": 8.0, "eval_fraction": 0.1, "codec_options": {"codebook_size": 256}}
DEMO_EVAL = {"prompts": 3, "seconds": 3.0}


@dataclass(frozen=True)
class DemoPlan:
    """The demo's steps as data: `demo` runs them, and a front end can show them as its own commands."""

    prepare: dict[str, Any]  # the arguments of `diamusic.data.prepare.prepare`
    ablate: dict[str, Any]  # the arguments of `ablate`
    report: Path  # the ablation directory the listening report is written for


def demo_plan(
    out: Path = DEMO_DIR,
    patterns: Sequence[str] = PATTERNS,
    melodies: int = DEMO_MELODIES,
    steps: int = DEMO_STEPS,
    seeds: int = SEEDS,
    sets: list[str] | None = None,
) -> DemoPlan:
    """What `demo` does with these settings; a bad pattern is refused here, before anything is prepared."""
    parse_patterns(patterns, SpectralConfig.levels)
    data, ablation = out / "data", out / "ablation"
    return DemoPlan(
        prepare={"source": "melodies", "codec": SpectralRVQCodec.name, "out": data, "limit": melodies, **DEMO_PREPARE},
        ablate={
            "data": data,
            "out": ablation,
            "patterns": list(patterns),
            "seeds": seeds,
            "config": DEFAULT_PRESET,
            "overrides": {"steps": steps, **_demo_overrides(steps)},
            "sets": list(sets or []),
            **DEMO_EVAL,
        },
        report=ablation,
    )


def demo(
    out: Path = DEMO_DIR,
    patterns: Sequence[str] = PATTERNS,
    melodies: int = DEMO_MELODIES,
    steps: int = DEMO_STEPS,
    seeds: int = SEEDS,
    sets: list[str] | None = None,
    progress: bool = True,
) -> AblationResult:
    """The main job on the embedded default: the built-in melodies with the offline codec, then the
    ablation of ``patterns`` with the tiny model. The prepared data under ``out/data`` is reused."""
    plan = demo_plan(out, patterns, melodies, steps, seeds, sets)
    prepare(**plan.prepare, progress=progress)
    return ablate(**plan.ablate, progress=progress)


def _demo_overrides(steps: int) -> dict[str, Any]:
    # evaluations cost no randomness, so three points on the eval curve change nothing else
    return {"data.crop_frames": 86, "eval.every": max(1, steps // 3), "samples.every": max(1, steps // 2)}
