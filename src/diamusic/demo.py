"""`diamusic demo`: the main job on the embedded default. The built-in melodies, rendered and encoded
with the offline codec, then the delay-pattern ablation with the tiny model, two runs at once where
the machine has two cores (or GPUs) for them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diamusic.ablate import PATTERNS, SEEDS, AblationError, AblationResult, ablate, parse_patterns
from diamusic.codecs import SpectralConfig, SpectralRVQCodec
from diamusic.config import DEFAULT_PRESET
from diamusic.data.prepare import prepare
from diamusic.launch import Local, visible_gpus
from diamusic.patterns import AUDIO_CHANNELS
from diamusic.threads import requested_threads, usable_cores

DEMO_DIR = Path("runs/demo")
DEMO_MELODIES = 80  # built-in melodies prepared
DEMO_STEPS = 300  # optimizer steps per run
# a small codebook so a few hundred CPU steps show real learning (1024 is the codec default); 3 prompts
# of 3 s each keep the pitch tracking of 9 evaluations to a few minutes on 2 cores
DEMO_PREPARE = {"max_seconds": 8.0, "eval_fraction": 0.1, "codec_options": {"codebook_size": 256}}
DEMO_PROMPTS, DEMO_SECONDS = 3, 3.0  # generations per evaluated run, and their length cap
DEMO_CONTINUATION = 1.0  # seconds of each eval clip the runs also continue
DEMO_PARALLEL = 2  # runs at once, at most (`demo_parallel`)


@dataclass(frozen=True)
class DemoPlan:
    """The demo's steps as data: `demo` runs them, and a front end can show them as its own commands."""

    prepare: dict[str, Any]  # the arguments of `diamusic.data.prepare.prepare`
    ablate: dict[str, Any]  # the arguments of `ablate`
    report: Path  # the ablation directory the listening report is written for
    parallel: int = 1  # runs at once (`diamusic.launch.Local`)


def demo_plan(
    out: Path = DEMO_DIR,
    patterns: str | Sequence[str] = PATTERNS,
    melodies: int = DEMO_MELODIES,
    steps: int = DEMO_STEPS,
    seeds: int = SEEDS,
    sets: list[str] | None = None,
    prompts: int = DEMO_PROMPTS,
    seconds: float = DEMO_SECONDS,
    channels: str = "mono",
    parallel: int | None = None,
) -> DemoPlan:
    """What `demo` does with these settings; a bad pattern is refused here, before anything is prepared."""
    if channels not in AUDIO_CHANNELS:
        raise AblationError(f"channels must be {' or '.join(AUDIO_CHANNELS)}, got {channels!r}")
    parse_patterns(patterns, SpectralConfig.levels, AUDIO_CHANNELS[channels])
    data, ablation = out / "data", out / "ablation"
    return DemoPlan(
        prepare={"source": "melodies", "codec": SpectralRVQCodec.name, "out": data, "limit": melodies,
                 **DEMO_PREPARE, **({"channels": channels} if channels != "mono" else {})},  # fmt: skip
        ablate={
            "data": data,
            "out": ablation,
            "patterns": patterns if isinstance(patterns, str) else ",".join(patterns),  # as `ablate --patterns`
            "seeds": seeds,
            "config": DEFAULT_PRESET,
            "overrides": {"steps": steps, **_demo_overrides(steps)},
            "sets": list(sets or []),
            "prompts": prompts,
            "seconds": seconds,
            "continuation": DEMO_CONTINUATION,
        },
        report=ablation,
        parallel=parallel or demo_parallel(),
    )


def demo(plan: DemoPlan | None = None, progress: bool = True) -> AblationResult:
    """The main job on the embedded default (`demo_plan`'s defaults unless given another plan): the
    built-in melodies with the offline codec, then the ablation with the tiny model. The prepared
    data is reused."""
    plan = plan or demo_plan()
    prepared = prepare(**plan.prepare, progress=progress)
    print(prepared.describe(Path(plan.prepare["out"])), file=sys.stderr)
    launcher = Local(parallel=plan.parallel) if plan.parallel > 1 else None
    return ablate(**plan.ablate, progress=progress, launcher=launcher)


def demo_parallel() -> int:
    """Two runs at once where there are two cores (or GPUs) for them: on 2 cores, two runs of one thread
    each finish the demo's ablation sooner than one run of two threads (benchmarks/RESULTS.md section 17)."""
    gpus = visible_gpus()
    return max(1, min(DEMO_PARALLEL, len(gpus) if gpus else requested_threads() or usable_cores()))


def _demo_overrides(steps: int) -> dict[str, Any]:
    # evaluations cost no randomness, so three points on the eval curve change nothing else
    return {"data.crop_frames": 86, "eval.every": max(1, steps // 3), "samples.every": max(1, steps // 2)}
