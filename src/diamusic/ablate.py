"""The delay-pattern ablation: one run per pattern x seed on identical settings, each evaluated the
same way, then a table of means with confidence intervals and paired differences.

Within a seed every pattern sees the same crops, batches, CFG drops and initial weights (they are
functions of the seed alone), so a difference between two runs of one seed is the pattern's; a
new seed changes both the initialisation and the data order. ``DIR/ablation.json`` fixes the runs
and their settings: a re-run skips finished runs, resumes interrupted ones, and refuses other
settings unless forced.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from diamusic.checkpoints import checkpoints_of, step_name, step_of
from diamusic.config import DEFAULT_PRESET, TrainConfig, from_dict, load_config, to_dict
from diamusic.data import read_card
from diamusic.data.dataset import CodesDataset
from diamusic.errors import DiamusicError
from diamusic.eval import FRECHET_MIN_CLIPS, evaluate_run
from diamusic.locks import DirectoryLock
from diamusic.patterns import DelayPattern
from diamusic.progress import duration, length, stage
from diamusic.runs import EVAL_FILE, RUN_FILE, final_step
from diamusic.stats import Estimate, effect_size, holm, mean_ci, paired_difference, paired_p
from diamusic.teacher_forced import interior_edge
from diamusic.train import Stopped, train

PLAN_FILE = "ablation.json"
REFERENCE = "dia"  # differences are reported against Dia's own pattern unless told otherwise
PATTERNS = ("dia", "musicgen", "compressed")  # the patterns compared unless told otherwise
SEEDS = 3  # seeds per pattern: the fewest whose 95% t-interval is usable (t = 4.3; with 2 seeds t = 12.7)
# each run is evaluated as `evaluate_run` evaluates a checkpoint unless told otherwise
_EVALUATION = inspect.signature(evaluate_run).parameters


class AblationError(DiamusicError):
    """An ablation that cannot run as asked."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    lower_is_better: bool
    primary: bool = False  # a claim the ablation exists to test: Holm-corrected, may name a winner
    wall_clock: bool = False  # timed on a machine shared with other work: reported, never compared
    bounds: tuple[float, float] = (0.0, math.inf)  # the values it can take: plots clip intervals to them


SHARE = (0.0, 1.0)  # ratios, similarities and agreements


METRICS: list[Metric] = [
    # the research log's claims
    Metric("train/loss", "final train loss", True, primary=True),
    Metric("eval/loss", "eval loss", True, primary=True),
    Metric("eval/interior/loss", "eval loss, interior frames", True, primary=True),
    Metric("train/entropy", "output entropy (train)", True, primary=True),
    # everything else is exploratory (per-codebook eval losses are added for the codec's codebooks)
    Metric("eval/edge/loss", "eval loss, edge frames", True),
    Metric("eval/entropy", "output entropy (eval)", True),
    Metric("train/loss_noise", "loss noise", True),
    Metric("eval/gap", "eval gap (eval - train subset)", True, bounds=(-math.inf, math.inf)),
    Metric("gen/in_key_ratio", "in-key ratio", False, bounds=SHARE),
    Metric("gen/in_tune_ratio", "in-tune ratio", False, bounds=SHARE),
    Metric("gen/pitch_stability", "pitch stability (semitones)", True),
    Metric("gen/voiced_ratio", "voiced ratio", False, bounds=SHARE),
    Metric("gen/note_rate", "note rate (/s)", False),
    Metric("gen/chroma_cosine", "chroma similarity to reference", False, bounds=SHARE),
    Metric("gen/melody_agreement", "melody agreement with reference", False, bounds=SHARE),
    Metric("gen/clipping_ratio", "clipping ratio", True, bounds=SHARE),
    Metric("gen/silence_ratio", "silence ratio", True, bounds=SHARE),
    Metric("gen/dynamic_range_db", "dynamic range (dB, peak/RMS)", False),
    Metric("gen/beat_stability", "beat stability (spread of beat intervals)", True),
    Metric("gen/key_consistency", "key consistency", False, bounds=SHARE),
    Metric("cont/chroma_cosine", "continuation: chroma similarity to the true one", False, bounds=SHARE),
    Metric("cont/key_agreement", "continuation: key agreement (MIREX)", False, bounds=SHARE),
    Metric("cont/tempo_agreement", "continuation: tempo within 8%", False, bounds=SHARE),
    Metric("cont/melody_agreement", "continuation: melody agreement", False, bounds=SHARE),
    Metric("gen/clap_score", "CLAP score (caption-audio cosine)", False, bounds=(-1.0, 1.0)),
    Metric("gen/fad_clap", "FAD (CLAP embeddings)", True),
    Metric("gen/frechet_features", "Fréchet distance (chroma+MFCC)", True),
    Metric("gen/usage_js", "code usage divergence (JS)", True, bounds=SHARE),
    Metric("gen/decode_steps", "decode steps", True),
    Metric("gen/frames_per_s", "decode frames/s", False, wall_clock=True),
    Metric("model/max_delay", "max delay (frames)", True),
    Metric("model/parameters", "parameters", True),
]


def bounds_of(key: str) -> tuple[float, float]:
    """The values a metric can take; a per-codebook loss is a loss (>= 0), a key unknown here is unbounded."""
    known = {m.key: m.bounds for m in METRICS}
    return known.get(key, (0.0, math.inf) if key.startswith("eval/loss/") else (-math.inf, math.inf))


ALPHA = 0.05  # the family-wise error rate of the primary comparisons (and the intervals' 95%)


def run_name(pattern: DelayPattern) -> str:
    sides = pattern.sides
    delays = sides[0] if all(side == sides[0] for side in sides) else pattern.delays
    return pattern.name if pattern.name != "custom" else "custom-" + "-".join(map(str, delays))


def parse_patterns(patterns: str | Sequence[str], num_codebooks: int, audio_channels: int = 1) -> list[DelayPattern]:
    """Validate every pattern before any training starts, so a typo does not cost a finished run.

    A string is a comma-separated list of preset names and delays, the delays of a custom pattern
    taken ``num_codebooks`` at a time: ``dia,musicgen,0,2,4,6,8,10,12,14,16`` (for stereo, each
    repeated per side).
    """
    if isinstance(patterns, str):
        patterns = _group(patterns, num_codebooks)
    parsed = [DelayPattern.parse(p, num_codebooks=num_codebooks, audio_channels=audio_channels) for p in patterns]
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
    audio_channels: int = 1  # the data's; each pattern's delays cover every side
    continuation: float = 0.0  # seconds of each eval clip the runs continue (0: no continuation rows)

    @property
    def delay_patterns(self) -> list[DelayPattern]:
        return [DelayPattern.parse(d, audio_channels=self.audio_channels) for d in self.patterns]

    @property
    def edge(self) -> int:
        """Interior frames are those every pattern compared sees in full."""
        return interior_edge(self.delay_patterns)

    def run_dir(self, out: Path, pattern: DelayPattern, seed: int) -> Path:
        return out / "runs" / run_name(pattern) / f"seed{seed}"


def plan_config(config: TrainConfig) -> dict[str, Any]:
    """The settings every run of an ablation shares: the config without its pattern and seed."""
    return {k: v for k, v in to_dict(config).items() if k not in ("delay_pattern", "seed")}


def fix_plan(out: Path, plan: Plan, force: bool) -> Plan:
    """Write the plan, or check it against the one already there (``force``: replace it)."""
    path = out / PLAN_FILE
    if path.exists() and not force:
        old = json.loads(path.read_text())
        new = dataclasses.asdict(plan)
        # a setting newer than the ablation directory reads as its default there
        defaults = {f.name: f.default for f in dataclasses.fields(Plan) if f.default is not dataclasses.MISSING}
        old["config"] = plan_config(from_dict(old.get("config", {})))
        changed = [k for k in new if old.get(k, defaults.get(k)) != new[k]]
        if changed:
            raise AblationError(
                f"{out} holds an ablation with other settings ({', '.join(changed)}): use another directory, "
                "or force it to start over with these",
                "force",
            )
        return plan
    if force and (out / "runs").exists():
        shutil.rmtree(out / "runs")  # runs of the old settings would mix into the new table
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(plan), indent=2))
    return plan


def run_config(plan: Plan, out: Path, pattern: DelayPattern, seed: int) -> TrainConfig:
    """One run's settings: the plan's, with its pattern, seed and tracking names."""
    config = from_dict({**plan.config, "delay_pattern": ",".join(map(str, pattern.delays)), "seed": seed})
    return dataclasses.replace(
        config,
        tracking=dataclasses.replace(
            config.tracking,
            group=config.tracking.group or out.name,
            run_name=f"{run_name(pattern)}-seed{seed}",
            tags=[*config.tracking.tags, f"pattern:{run_name(pattern)}", f"seed:{seed}"],
        ),
    )


def finished(plan: Plan, out: Path, pattern: DelayPattern, seed: int) -> dict[str, Any] | None:
    """A run's evaluation if it is done: its eval.json scores its final checkpoint at the plan's edge."""
    run_dir = plan.run_dir(out, pattern, seed)
    eval_file = run_dir / EVAL_FILE
    if not eval_file.exists():
        return None
    result = json.loads(eval_file.read_text())
    final = final_step(run_dir, int(plan.config["steps"]))
    if result.get("checkpoint") == step_name(final) and result.get("edge_frames") == plan.edge:
        return result
    return None


def run_one(
    plan: Plan, out: Path, pattern: DelayPattern, seed: int, progress: bool, evaluate: bool = True, place: str = ""
) -> dict[str, Any] | None:
    """Train (skip if finished, resume if interrupted) and evaluate one run; its eval.json is kept.
    ``evaluate`` False: train only (the other processes of a run trained on several GPUs); ``place``: where
    the run stands in the ablation ("run 3/9: "), for its header."""
    run_dir = plan.run_dir(out, pattern, seed)
    config = run_config(plan, out, pattern, seed)
    done = [step_of(p) for p in checkpoints_of(run_dir)]
    if final_step(run_dir, config.steps) not in done:
        # a run killed before its first checkpoint is started over by the resume itself
        print(f"\n== {place}{'resuming' if done else 'training'} {pattern} seed {seed} ==", file=sys.stderr)
        result = train(config, run_dir, resume=(run_dir / RUN_FILE).exists(), progress=progress)
        if result.interrupted:  # its checkpoint is saved: the next call resumes this run
            raise Stopped(
                f"interrupted: {run_dir} stopped at step {result.step} of {config.steps}; run the same "
                "command again to resume the ablation",
                result.signum,
            )
    if not evaluate:
        return None
    if (result := finished(plan, out, pattern, seed)) is not None:
        return result
    rate = read_card(config.data.path)["codec"]["frame_rate"]
    asked = length(round(plan.seconds * rate), rate)
    generating = f", generating {plan.prompts} clip(s) of up to {asked}" if plan.prompts else ""
    with stage(f"evaluating {run_name(pattern)} seed {seed}{generating}"):
        return evaluate_run(
            run_dir, final_step(run_dir, config.steps), plan.prompts, plan.seconds, plan.edge, out=run_dir / EVAL_FILE,
            audio_dir=run_dir / "generated", continuation=plan.continuation,
        )  # fmt: skip


def load_plan(out: Path) -> Plan:
    """The plan an ablation directory holds (settings newer than it read as their defaults)."""
    path = out / PLAN_FILE
    if not path.exists():
        raise AblationError(f"{out} holds no ablation (no {PLAN_FILE})")
    try:
        fields = {f.name for f in dataclasses.fields(Plan)}
        return Plan(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields})
    except (json.JSONDecodeError, TypeError) as exc:
        raise AblationError(f"{path} is not an ablation plan ({exc})") from exc


def runs_of(plan: Plan) -> list[tuple[DelayPattern, int]]:
    """Every run, seed-major: an ablation stopped half-way already has whole seeds to compare."""
    return [(pattern, seed) for seed in plan.seeds for pattern in plan.delay_patterns]


class RunClock:
    """Where an ablation stands: each finished run in one line with its losses and time, and the time left
    estimated from the runs this call trained (a run finished before it costs nothing now)."""

    def __init__(self, plan: Plan, out: Path, runs: list[tuple[DelayPattern, int]], at_once: int = 1) -> None:
        self.plan, self.out, self.at_once = plan, out, at_once
        self.total, self.done = len(runs), sum(finished(plan, out, p, s) is not None for p, s in runs)
        self.spent: list[float] = []  # seconds of each run this call trained and evaluated
        self.started = time.monotonic()

    def place(self) -> str:
        return f"run {self.done + 1}/{self.total}: "

    def finish(self, pattern: DelayPattern, seed: int, seconds: float) -> str:
        """The line for a run that just ended (or failed: no evaluation to show)."""
        self.done += 1
        self.spent.append(seconds)
        result = finished(self.plan, self.out, pattern, seed) or {}
        losses = ", ".join(f"{label} {result[k]:.3f}" for k, label in (("train/loss", "train loss"),
                           ("eval/loss", "eval loss")) if k in result)  # fmt: skip
        left = self.total - self.done
        eta = f"; about {duration(sum(self.spent) / len(self.spent) * left / self.at_once)} left" if left else ""
        return f"== run {self.done}/{self.total} done: {run_name(pattern)} seed {seed}, {losses or 'no evaluation'}, " \
               f"{duration(seconds)}{eta} =="


class Launcher(Protocol):
    """Where an ablation's runs execute (`diamusic.launch`: several at once on this machine, or SLURM jobs)."""

    def launch(self, plan: Plan, out: Path, runs: list[tuple[DelayPattern, int]], progress: bool) -> bool:
        """Train and evaluate ``runs`` (each with `run_one`); True once all are finished, False when they go on
        elsewhere (queued jobs)."""
        ...


# --- the summary --------------------------------------------------------------------------------
#
# Rows come in kinds, so that the table never names a winner a careful reader would not accept:
#   primary      the research log's claims; every pair of patterns is tested (paired t-test over
#                seeds) and the p-values are Holm-adjusted over all primary comparisons together
#   exploratory  every other measured metric, adjusted over its own family; never a winner
#   exact        the same in every seed (decode steps when nothing stopped on EOS, the max delay,
#                parameter counts): arithmetic, not evidence, so no interval, test or winner
#   wall-clock   timing on a machine shared with other work: reported with its load, not compared
#   no signal    0 for every generated clip of every run: nothing to compare


@dataclass
class Comparison:
    a: str
    b: str
    difference: Estimate  # a - b, paired by seed
    p: float  # two-sided paired t-test; nan where there is no test (one seed, or a zero-width interval)
    p_adjusted: float  # Holm over the row's family (primary or exploratory)
    effect: float  # the difference in units of the seed-to-seed spread

    def flipped(self) -> Comparison:
        d = Estimate(-self.difference.mean, -self.difference.high, -self.difference.low, self.difference.n)
        return Comparison(self.b, self.a, d, self.p, self.p_adjusted, -self.effect)

    def significant(self) -> bool:
        return self.p_adjusted < ALPHA  # False for nan: no test, no claim


@dataclass
class Row:
    key: str
    label: str
    lower_is_better: bool
    kind: str  # primary | exploratory | exact | wall-clock | no signal
    per_pattern: dict[str, Estimate]
    per_seed: dict[str, list[float]]
    comparisons: list[Comparison]  # every pair of patterns, for the primary and exploratory kinds
    winner: str | None = None
    note: str = ""

    def versus(self, name: str, other: str) -> Comparison | None:
        return oriented(self.comparisons, name, other)


def oriented(comparisons: list[Comparison], name: str, other: str) -> Comparison | None:
    """The comparison of ``name`` with ``other`` as name - other, if there is one."""
    for c in comparisons:
        if (c.a, c.b) == (name, other):
            return c
        if (c.b, c.a) == (name, other):
            return c.flipped()
    return None


def summarise(
    results: dict[str, dict[int, dict[str, Any]]],
    reference: str,
    metrics: list[Metric] | None = None,
    audio_channels: int = 1,
) -> list[Row]:
    """results[pattern][seed] = eval dict -> one row per metric measured in some run. The per-stream
    losses are labelled by codebook, and in stereo by side too."""
    names = list(results)
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in results.values())))
    runs = [results[n][s] for n in names for s in seeds]
    if metrics is None:
        streams = sorted({k for r in runs for k in r if k.startswith("eval/loss/cb")}, key=lambda k: int(k[12:]))
        per_side = max(len(streams) // audio_channels, 1)
        sides = [""] if audio_channels == 1 else ["left ", "right "]
        metrics = METRICS + [
            Metric(k, f"eval loss, {sides[int(k[12:]) // per_side]}codebook {int(k[12:]) % per_side}", True)
            for k in streams
        ]
    rows = []
    for metric in metrics:
        values = {n: [float(results[n][s].get(metric.key, math.nan)) for s in seeds] for n in names}
        if not all(math.isnan(v) for vs in values.values() for v in vs):
            rows.append(_row(metric, values, runs))
    for kind in ("primary", "exploratory"):
        family = [c for r in rows if r.kind == kind for c in r.comparisons]
        for c, p in zip(family, holm([c.p for c in family]), strict=True):
            c.p_adjusted = p
    for row in rows:
        if row.kind == "primary":
            row.winner = _clear_winner(row)
    return rows


def _row(metric: Metric, values: dict[str, list[float]], runs: list[dict[str, Any]]) -> Row:
    per_pattern = {n: mean_ci(v) for n, v in values.items()}
    row = Row(metric.key, metric.label, metric.lower_is_better, "", per_pattern, values, [])
    measured = [v for vs in values.values() for v in vs if not math.isnan(v)]
    seeds = len(next(iter(values.values())))
    if metric.wall_clock:
        row.kind, row.note = "wall-clock", f"wall-clock time{_load(runs)}: not a pattern comparison (see benchmarks/)"
    elif metric.key.startswith("gen/") and all(v == 0 for v in measured):
        ceiling = [r[_reference_key(metric.key)] for r in runs if _reference_key(metric.key) in r]
        on_references = f"; the reference clips score {np.nanmean(ceiling):.2f}" if ceiling else ""
        row.kind, row.note = "no signal", f"0 for every generated clip of every run{on_references}"
    elif seeds >= 2 and all(max(vs) == min(vs) for vs in values.values()):
        row.kind, row.note = "exact", _why_exact(metric.key, runs)
    else:
        row.kind = "primary" if metric.primary else "exploratory"
        names = list(values)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                va, vb = values[a], values[b]
                p = paired_p(va, vb)
                row.comparisons.append(Comparison(a, b, paired_difference(va, vb), p, math.nan, effect_size(va, vb)))
        row.note = "; ".join(_why_untested(c, values) for c in row.comparisons if math.isnan(c.p) and seeds >= 2)
    return row


def _load(runs: list[dict[str, Any]]) -> str:
    loads = [r["machine/load_average"] for r in runs if "machine/load_average" in r]
    if not loads:
        return ""
    cores = max(r.get("machine/cores", 0) for r in runs)
    low, high = f"{min(loads):.1f}", f"{max(loads):.1f}"
    spread = low if low == high else f"{low} to {high}"
    return f" under a load average of {spread} on {cores} cores"


def _why_untested(c: Comparison, values: dict[str, list[float]]) -> str:
    pairs = sum(not (math.isnan(x) or math.isnan(y)) for x, y in zip(values[c.a], values[c.b], strict=True))
    if pairs < 2:
        return f"{c.a} - {c.b}: measured in {pairs} seed(s) of both, not tested"
    return f"{c.a} - {c.b}: the same difference in every seed (zero-width interval), not tested"


def _reference_key(key: str) -> str:
    return key.replace("gen/", "gen/reference_", 1)


def _why_exact(key: str, runs: list[dict[str, Any]]) -> str:
    if key == "gen/decode_steps" and all(r.get("gen/stopped_on_eos", 1) == 0 for r in runs):
        return "no generation stopped on EOS: each decodes its frames + max delay + 1"
    return {"model/max_delay": "set by the pattern", "model/parameters": "set by the architecture"}.get(
        key, "the same in every seed"
    )


def _clear_winner(row: Row) -> str | None:
    """The best pattern by mean, if it beats every other pattern with a Holm-adjusted p < ALPHA."""

    def badness(name: str) -> float:
        mean = row.per_pattern[name].mean
        return math.inf if math.isnan(mean) else (mean if row.lower_is_better else -mean)

    best = min(row.per_pattern, key=badness)
    for other in row.per_pattern:
        c = row.versus(best, other) if other != best else None
        if c is not None and not (c.significant() and (c.difference.mean < 0) == row.lower_is_better):
            return None
    return best


def summary_json(rows: list[Row], plan: Plan, results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """What summary.json holds: every number of the tables, and the notes that qualify them."""
    return {
        "patterns": {run_name(p): p.to_list() for p in plan.delay_patterns},
        "seeds": plan.seeds,
        "reference": plan.reference,
        "edge_frames": plan.edge,
        "alpha": ALPHA,
        "notes": _notes(results, plan),
        "metrics": [
            {
                "key": r.key,
                "label": r.label,
                "lower_is_better": r.lower_is_better,
                "kind": r.kind,
                "per_pattern": {n: dataclasses.asdict(e) for n, e in r.per_pattern.items()},
                "per_seed": r.per_seed,
                "comparisons": [dataclasses.asdict(c) for c in r.comparisons],
                "winner": r.winner,
                "note": r.note,
            }
            for r in rows
        ],
    }


def _notes(results: dict[str, dict[int, dict[str, Any]]], plan: Plan) -> list[str]:
    runs = [r for by_seed in results.values() for r in by_seed.values()]
    notes = []
    counts = {(r.get("eval/clips"), r.get("eval/targets"), r.get("eval/interior/targets")) for r in runs}
    if len(counts) == 1:
        clips, targets, inner = counts.pop()
        notes.append(
            f"Every run is scored on the same {clips} eval clips (chosen by the dataset, not the seed): "
            f"{targets} targets, {inner} of them interior (at least {plan.edge} frames from both ends of a crop)."
        )
        if inner == 0:
            notes.append(f"No interior frames: eval crops must be longer than twice the edge ({plan.edge} frames).")
    else:
        notes.append(f"Runs were scored on different eval sets (clips, targets, interior): {sorted(counts, key=str)}.")
    early = [
        f"{name} seed {seed} at step {r['early_stop']['step']} ({r['early_stop']['reason']})"
        for name, by_seed in results.items()
        for seed, r in by_seed.items()
        if "early_stop" in r
    ]
    if early:
        notes.append(f"Stopped early (early_stop), scored at that step: {'; '.join(early)}.")
    threads = sorted({r["machine/threads"] for r in runs if "machine/threads" in r})
    if len(threads) > 1:
        notes.append(
            f"Runs used different numbers of CPU threads ({', '.join(map(str, threads))}): on CPU their numbers "
            "differ in the last digits for that reason alone."
        )
    unvoiced = sum(r.get("gen/unvoiced_clips", 0) for r in runs)
    if unvoiced:
        generated = sum(r.get("gen/clips", 0) for r in runs)
        notes.append(
            f"No voiced frames in {unvoiced} of {generated} generations: no pitch to score, so their in-key ratio, "
            "in-tune ratio and pitch stability are left out of the means (their voiced ratio counts as 0)."
        )
    clips = {r.get("gen/clips") for r in runs if "gen/clips" in r}
    if clips and max(clips) < FRECHET_MIN_CLIPS:
        notes.append(
            f"Fréchet distance not computed: {max(clips)} generated clips per run, at least {FRECHET_MIN_CLIPS} needed."
        )
    return notes


# --- the tables (summary.md and the report's page render the same cells) -----------------------


TEXT_COLUMNS = ("metric", "winner", "note", "why")  # left-aligned; the numbers are right-aligned


@dataclass
class Section:
    title: str
    intro: str
    head: list[str]
    rows: list[list[str]]

    def without_empty_notes(self) -> Section:
        if "note" not in self.head or any(cells[self.head.index("note")] for cells in self.rows):
            return self
        keep = [i for i, h in enumerate(self.head) if h != "note"]
        return Section(self.title, self.intro, [self.head[i] for i in keep], [[r[i] for i in keep] for r in self.rows])


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p {p:.3f}"


def _exact(e: dict[str, float]) -> str:
    v = e["mean"]
    return "-" if math.isnan(v) else str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def sections(summary: dict[str, Any]) -> list[Section]:
    """The summary's tables: primary, exploratory, exact, and rows reported but not compared."""
    names, ref = list(summary["patterns"]), summary["reference"]
    others = [n for n in names if n != ref]
    seeds = len(summary["seeds"])
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for m in summary["metrics"]:
        by_kind.setdefault(m["kind"], []).append(m)

    def label(m: dict[str, Any]) -> str:
        return f"{m['label']} {'↓' if m['lower_is_better'] else '↑'}"

    def compared(m: dict[str, Any], primary: bool) -> list[str]:
        cells = [label(m), *(Estimate(**m["per_pattern"][n]).format() for n in names)]
        comparisons = [_comparison(c) for c in m["comparisons"]]
        for n in others:
            c = oriented(comparisons, n, ref)
            if c is None:
                cells.append("-")
                continue
            stats = [f"d {c.effect:+.1f}"] if primary and not math.isnan(c.effect) else []
            stats += [_p(c.p_adjusted)] if not math.isnan(c.p_adjusted) else []
            star = " *" if primary and c.significant() else ""
            cells.append(c.difference.format() + (f" ({', '.join(stats)})" if stats else "") + star)
        if primary:
            cells.append(m["winner"] or "no clear winner")
        return [*cells, m["note"]]

    diffs = [f"{n} - {ref}" for n in others]
    primary = by_kind.get("primary", [])
    exploratory = by_kind.get("exploratory", [])
    tests = sum(len(m["comparisons"]) for m in primary)
    leads = sum(len(m["comparisons"]) for m in exploratory)
    out = [
        Section(
            "Primary",
            f"The claims the ablation tests. Means ± 95% t-interval over {seeds} seed(s); differences paired by seed, "
            f"with d = the difference over the seed-to-seed spread and p Holm-adjusted over all {tests} primary "
            f"comparisons (every pair of patterns on every primary metric). * and a winner only where p < "
            f"{summary['alpha']} (a winner against every other pattern).",
            ["metric", *names, *diffs, "winner", "note"],
            [compared(m, True) for m in primary],
        ),
        Section(
            "Exploratory",
            f"Every other measured metric: p Holm-adjusted over these {leads} "
            "comparisons. Leads for the next experiment, never a winner.",
            ["metric", *names, *diffs, "note"],
            [compared(m, False) for m in exploratory],
        ),
        Section(
            "Exact",
            "The same in every seed: no interval, no test, no winner.",
            ["metric", *names, "why"],
            [[m["label"], *(_exact(m["per_pattern"][n]) for n in names), m["note"]] for m in by_kind.get("exact", [])],
        ),
        Section(
            "Not compared",
            "Reported, not compared.",
            ["metric", *names, "why"],
            [
                [m["label"], *(Estimate(**m["per_pattern"][n]).format() for n in names), m["note"]]
                for kind in ("wall-clock", "no signal")
                for m in by_kind.get(kind, [])
            ],
        ),
    ]
    return [s.without_empty_notes() for s in out if s.rows]


def _comparison(c: dict[str, Any]) -> Comparison:
    return Comparison(**{**c, "difference": Estimate(**c["difference"])})


def markdown(summary: dict[str, Any]) -> str:
    parts = []
    for s in sections(summary):
        align = ["---" if h in TEXT_COLUMNS else "---:" for h in s.head]
        lines = ["| " + " | ".join(s.head) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in s.rows]
        parts.append(f"## {s.title}\n\n{s.intro}\n\n" + "\n".join(lines))
    notes = "\n".join(f"- {n}" for n in summary["notes"])
    return "\n\n".join(parts) + (f"\n\n{notes}" if notes else "")


def write_summary(out: Path, rows: list[Row], plan: Plan, results: dict[str, dict[int, dict[str, Any]]]) -> Path:
    summary = summary_json(rows, plan, results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
    grid = "\n".join(f"- {n}: delays {','.join(map(str, d))}" for n, d in summary["patterns"].items())
    (out / "summary.md").write_text(f"# Delay-pattern ablation\n\n{grid}\n\n{markdown(summary)}\n")
    return out / "summary.md"


# --- the command --------------------------------------------------------------------------------


@dataclass
class AblationResult:
    out: Path
    summary: Path | None  # None while runs go on elsewhere (queued jobs): `collect` writes it
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
    continuation: float = _EVALUATION["continuation"].default,
    launcher: Launcher | None = None,
) -> AblationResult:
    """Every pattern x seed trained and evaluated on identical settings, then the table. The runs go one
    after another in this process, or where ``launcher`` starts them (`diamusic.launch`)."""
    out = Path(out)
    if seeds < 1:
        raise AblationError(f"seeds must be >= 1, got {seeds}")
    base: TrainConfig = load_config(config, {**(overrides or {}), "data.path": str(data)}, sets)
    vocab = CodesDataset(data).vocab
    parsed = parse_patterns(patterns, vocab.num_codebooks, vocab.audio_channels)
    names = [run_name(p) for p in parsed]
    if reference not in names:
        raise AblationError(f"the reference pattern {reference!r} is not among the patterns ({', '.join(names)})")
    first_seed = base.seed
    plan = Plan(
        data=str(Path(data).resolve()),
        patterns=[p.to_list() for p in parsed],
        seeds=list(range(first_seed, first_seed + seeds)),
        config=plan_config(base),
        prompts=prompts,
        seconds=seconds,
        reference=reference,
        audio_channels=vocab.audio_channels,
        continuation=continuation,
    )
    with DirectoryLock(out):  # one ablation per directory, for as long as it trains, submits and writes
        fix_plan(out, plan, force)
        if launcher is None:
            clock = RunClock(plan, out, runs_of(plan))
            for pattern, seed in runs_of(plan):
                if finished(plan, out, pattern, seed) is not None:
                    continue
                started = time.monotonic()
                run_one(plan, out, pattern, seed, progress, place=clock.place())
                print(clock.finish(pattern, seed, time.monotonic() - started), file=sys.stderr)
        elif not launcher.launch(plan, out, runs_of(plan), progress):
            return AblationResult(out, None, [], names, {})
        return _summarise(plan, out)


def collect(out: str | Path) -> AblationResult:
    """The table of an ablation whose runs are all finished (their evaluations on disk)."""
    out = Path(out)
    plan = load_plan(out)
    missing = [f"{run_name(p)} seed {s}" for p, s in runs_of(plan) if finished(plan, out, p, s) is None]
    if missing:
        raise AblationError(f"{len(missing)} of {len(runs_of(plan))} runs are not finished ({', '.join(missing)})")
    with DirectoryLock(out, ".lock-summary"):  # the last two jobs to finish may both collect
        return _summarise(plan, out)


def _summarise(plan: Plan, out: Path) -> AblationResult:
    results: dict[str, dict[int, dict[str, Any]]] = {run_name(p): {} for p in plan.delay_patterns}
    for pattern, seed in runs_of(plan):
        result = finished(plan, out, pattern, seed)
        if result is None:
            raise AblationError(f"{run_name(pattern)} seed {seed} has no evaluation of its final checkpoint")
        results[run_name(pattern)][seed] = result
    rows = summarise(results, plan.reference, audio_channels=plan.audio_channels)
    return AblationResult(out, write_summary(out, rows, plan, results), rows, list(results), results)
