"""A run's set-up: everything the training loop needs, built in named steps by `setup`.

`setup` reads top to bottom: processes (accelerate), data (splits, pattern, run directory
checks), model (new or pretrained, adapters, the run's files), optimizer, tracker, then the
resumed state. `Trainer` holds the result and what moves as training goes (step, loss noise,
logging window); `diamusic.train` runs the loop over it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diamusic.checkpoints import checkpoints_of, remove_unfinished, restore, save_adapters_only
from diamusic.config import EarlyStopConfig, SamplesConfig, TrainConfig, pattern_of_config, to_dict
from diamusic.data import DataError
from diamusic.data.dataset import BatchPlan, CodesDataset, StepBatches, verify
from diamusic.errors import DiamusicError
from diamusic.flops import peak_tflops
from diamusic.locks import DirectoryLock
from diamusic.metrics import LossNoise, TokenStats
from diamusic.model import add_lora, build_model, count_parameters, load_pretrained, weights_fingerprint
from diamusic.optim import build_optimizer
from diamusic.patterns import DelayPattern
from diamusic.progress import length
from diamusic.runs import check_run_dir, default_device, record_dataset_switch, write_run_files
from diamusic.teacher_forced import fixed_eval_batches
from diamusic.tokens import AudioVocab
from diamusic.tracking import Tracker, check_trackers


def due(step: int, every: int) -> bool:
    """Whether a task done every ``every`` optimizer steps (0 = never) falls on ``step``."""
    return every > 0 and step % every == 0


# --- what one optimizer step leaves, and the logging window ------------------------------------


@dataclass
class StepOutput:
    stats: TokenStats  # summed over micro-batches and processes
    grad_norm: float
    samples: int  # of the global batch
    eos_samples: int  # samples whose crop ends with EOS
    finite: bool  # loss and gradient norm finite; otherwise the update was skipped
    flops: int = 0  # model FLOPs of the step, all processes (diamusic.flops)

    @property
    def loss(self) -> float:
        return float(self.stats.loss_sum.sum() / self.stats.count.sum().clamp_min(1))


@dataclass
class Window:
    """The counters of one logging window, reset together; ``stats`` and the sample counts are
    saved in checkpoints so a resumed run logs the same window means."""

    stats: TokenStats | None = None
    samples: int = 0
    eos_samples: int = 0
    # speed counts only what this process ran since the window opened (not the steps before a resume)
    timed_steps: int = 0
    timed_tokens: float = 0.0
    timed_flops: float = 0.0
    started: float = field(default_factory=time.time)

    def add(self, out: StepOutput) -> None:
        self.stats = out.stats if self.stats is None else self.stats + out.stats
        self.samples += out.samples
        self.eos_samples += out.eos_samples
        self.timed_steps += 1
        self.timed_tokens += float(out.stats.count.sum())
        self.timed_flops += out.flops

    def summary(self, peak_tflops: float | None = None) -> dict[str, float]:
        """Window means; ``peak_tflops`` (of all processes together) adds the model FLOPs utilisation."""
        assert self.stats is not None, "an empty logging window"
        elapsed = max(time.time() - self.started, 1e-9)
        tflops = self.timed_flops / elapsed / 1e12
        summary = {
            **self.stats.summary("train/"),
            "train/eos_share": self.eos_samples / max(self.samples, 1),
            "perf/tokens_per_s": self.timed_tokens / elapsed,  # valid loss targets of all processes
            "perf/step_s": elapsed / max(self.timed_steps, 1),
            "perf/tflops": tflops,  # model FLOPs per second, all processes
        }
        if peak_tflops:
            summary["perf/mfu"] = tflops / peak_tflops
        return summary

    def state_dict(self) -> dict[str, Any] | None:
        if self.stats is None:
            return None
        fields = {f.name: getattr(self.stats, f.name).tolist() for f in dataclasses.fields(self.stats)}
        return {"stats": fields, "samples": self.samples, "eos_samples": self.eos_samples}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> Window:
        if not state:
            return cls()
        tensors = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in state["stats"].items()}
        return cls(TokenStats(**tensors), state["samples"], state["eos_samples"])


@dataclass
class EarlyStop:
    """Whether the evaluations so far say to stop (config.early_stop); saved in checkpoints, so a resumed
    run counts from where it was and a run that stopped stays stopped."""

    best: float = math.inf  # the lowest eval loss so far
    since_best: int = 0  # evaluations since it
    reason: str = ""  # why the run stopped; empty while it trains

    def update(self, metrics: dict[str, float], config: EarlyStopConfig) -> str:
        """Count one evaluation; the reason to stop now, or ''."""
        loss = metrics.get("eval/loss", math.nan)
        if loss < self.best - config.min_delta:
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
        gap = metrics.get("eval/gap", math.nan)
        if config.max_gap > 0 and gap > config.max_gap:
            self.reason = f"the eval gap {gap:.4f} exceeds early_stop.max_gap {config.max_gap:g}"
        elif config.patience > 0 and self.since_best >= config.patience:
            self.reason = (
                f"the eval loss has not improved on {self.best:.4f} for {self.since_best} evaluations"
                f" (early_stop.patience {config.patience})"
            )
        return self.reason

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- set-up -------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """Everything one run needs, built by `setup`; ``step``, ``noise`` and ``window`` move as it trains."""

    config: TrainConfig
    run_dir: Path
    accelerator: Any  # accelerate.Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: StepBatches  # from ``step`` on
    eval_batches: dict[str, list[dict[str, torch.Tensor]]]  # fixed clips by metric prefix: eval/, train_subset/
    tracker: Tracker
    pattern: DelayPattern
    vocab: AudioVocab
    weights: torch.Tensor | None
    sharded: bool  # FSDP: no process holds the whole model
    samples: Samples | None
    model_config: Any  # the DiaConfig: FLOPs, and the transformers files of a checkpoint
    peak_tflops: float | None  # bf16 peak of all processes' GPUs, when known: MFU is logged
    lock: DirectoryLock | None  # the run directory's, held by the main process until the run ends
    step: int = 0
    skipped_steps: int = 0  # non-finite steps whose update was skipped
    noise: LossNoise = field(default_factory=LossNoise)
    window: Window = field(default_factory=Window)
    early_stop: EarlyStop = field(default_factory=EarlyStop)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def state_dict(self) -> dict[str, Any]:
        """The loop's own state a checkpoint holds beside accelerate's."""
        return {
            "skipped_steps": self.skipped_steps,
            "loss_noise": self.noise.state_dict(),
            "window": self.window.state_dict(),
            "early_stop": self.early_stop.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.noise.load_state_dict(state["loss_noise"])
        self.window = Window.from_state(state["window"], self.accelerator.device)
        self.early_stop = EarlyStop(**state.get("early_stop", {}))  # checkpoints from before it: none


@dataclass
class RunData:
    train: CodesDataset
    eval: CodesDataset
    pattern: DelayPattern
    resume: bool  # False where a run to resume stopped before its first checkpoint


def setup(config: TrainConfig, run_dir: Path, resume: bool, force: bool) -> Trainer:
    """Every part of a run, in order: processes, data, model, optimizer, tracker, resumed state."""
    accelerator, bf16 = _setup_accelerator(config)
    # one process tree per run directory: a second `train` on it stops here, before any check or write
    lock = DirectoryLock(run_dir) if accelerator.is_main_process else None
    try:
        return _setup(config, run_dir, resume, force, accelerator, bf16, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _setup(
    config: TrainConfig, run_dir: Path, resume: bool, force: bool, accelerator: Any, bf16: bool, lock: Any
) -> Trainer:
    data = _setup_data(config, run_dir, resume, force, accelerator.is_main_process)
    model, notes, sizes = _setup_model(config, run_dir, data, accelerator)
    accelerator.wait_for_everyone()
    model_config = model.config
    optimizer, scheduler = build_optimizer(config, model)
    if config.compile:
        # in place, so parameter names (and so checkpoints) are those of the uncompiled model
        model.compile()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if config.model.lora_rank > 0 and not _sharded(accelerator):
        save_adapters_only(accelerator)
    plan = batch_plan(config, accelerator.process_index, accelerator.num_processes)
    weights = config.codebook_weights
    if weights and len(weights) == data.pattern.num_codebooks:  # given per codebook: the same on every side
        weights = weights * data.pattern.audio_channels
    t = Trainer(
        config=config,
        run_dir=run_dir,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=StepBatches(data.train, plan, data.pattern, 0, config.steps, config.data.eos_in_loss),
        eval_batches=fixed_eval_batches(config, data.train, data.eval, data.pattern, accelerator.num_processes),
        tracker=_setup_tracker(config, run_dir, accelerator.is_main_process),
        pattern=data.pattern,
        vocab=data.train.vocab,
        weights=torch.tensor(weights, dtype=torch.float32, device=accelerator.device) if weights else None,
        sharded=_sharded(accelerator),
        samples=Samples.for_run(config, run_dir, data.eval, accelerator.is_main_process),
        model_config=model_config,
        peak_tflops=_peak_tflops(accelerator, bf16),
        lock=lock,
    )
    _resume_or_start(t, data)
    if t.main:
        _announce(t, data, sizes, notes, bf16)
    return t


def _setup_accelerator(config: TrainConfig) -> tuple[Any, bool]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    use_gpu = default_device() == "cuda"
    bf16 = config.precision == "bf16" or (config.precision == "auto" and use_gpu)
    # our schedule counts optimizer steps; accelerate would otherwise step it once per process
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no", cpu=not use_gpu, step_scheduler_with_optimizer=False
    )
    set_seed(config.seed)
    return accelerator, bf16


def _setup_data(config: TrainConfig, run_dir: Path, resume: bool, force: bool, main: bool) -> RunData:
    """The splits, pattern and trackers, checked against the run directory before anything is written."""
    if not config.data.path:
        raise DataError("no dataset: the config's data.path is empty")
    check_trackers(config.tracking.backends)
    verify(config.data.path)  # every byte now: a damaged shard is found before the run folder is written
    train_data = CodesDataset(config.data.path, "train")
    eval_data = CodesDataset(config.data.path, "eval")
    if (config.early_stop.patience or config.early_stop.max_gap) and not len(eval_data):
        raise DataError(f"early_stop needs eval losses, and {config.data.path} has no eval clips")
    previous = check_run_dir(run_dir, config, train_data.fingerprint, train_data.card["codec"], resume, force)
    if previous is not None and not checkpoints_of(run_dir):
        if main:
            print(
                f"note: {run_dir} has no checkpoint yet (it stopped before its first): starting it over",
                file=sys.stderr,
            )
        resume = False
    return RunData(train_data, eval_data, pattern_of_config(config), resume)


def _setup_model(
    config: TrainConfig, run_dir: Path, data: RunData, accelerator: Any
) -> tuple[torch.nn.Module, list[str], dict[str, int]]:
    """The model, with the run's files written (a new run) and unfinished checkpoint writes removed."""
    model, notes, base = build(config, data.pattern, data.train)
    check_crop_length(config, model, data.pattern)
    check_samples_length(config, model, data.pattern, data.train.card["codec"]["frame_rate"])
    check_memory(config, model, data.pattern, accelerator.device, accelerator.num_processes)
    sizes = {"total": count_parameters(model), "trainable": count_parameters(model, trainable_only=True)}
    if accelerator.is_main_process:
        if not data.resume:
            write_run_files(run_dir, config, data.train, data.pattern, notes, sizes, base)
        remove_unfinished(run_dir)
    return model, notes, sizes


def _setup_tracker(config: TrainConfig, run_dir: Path, main: bool) -> Tracker:
    tr = config.tracking
    return Tracker(run_dir, tr.backends, to_dict(config), tr.project, tr.group, tr.run_name, main, tr.tags)


def _sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _peak_tflops(accelerator: Any, bf16: bool) -> float | None:
    """bf16 peak of all processes' GPUs together, when the GPU is known (so MFU is logged)."""
    peak = peak_tflops(torch.cuda.get_device_name()) if bf16 and torch.cuda.is_available() else None
    return peak * accelerator.num_processes if peak else None


def _resume_or_start(t: Trainer, data: RunData) -> None:
    if not data.resume:
        t.tracker.truncate_after(0)  # rows of an attempt that stopped before its first checkpoint
        return
    t.load_state_dict(restore(t.accelerator, t.run_dir, _warn))
    t.tracker.truncate_after(t.step)
    t.batches.start = t.step
    switched = record_dataset_switch(t.run_dir, data.train, t.step) if t.main else None
    if t.main:
        print(f"resumed {t.run_dir} from step {t.step}", file=sys.stderr)
        if switched:
            print(f"note: {switched}", file=sys.stderr)


def _announce(t: Trainer, data: RunData, sizes: dict[str, int], notes: list[str], bf16: bool) -> None:
    total, trainable = sizes["total"], sizes["trainable"]
    size = f"{total / 1e6:.2f}M params" + (f" ({trainable / 1e6:.2f}M trainable)" if trainable < total else "")
    acc = t.accelerator
    crop = length(t.config.data.crop_frames, data.train.card["codec"]["frame_rate"])
    print(
        f"run {t.run_dir}: {size}, pattern {data.pattern}, {len(data.train)} train / {len(data.eval)} eval clips, "
        f"crops of {crop}, {acc.num_processes} process(es), {'bf16' if bf16 else 'fp32'} on {acc.device}",
        file=sys.stderr,
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def batch_plan(config: TrainConfig, rank: int = 0, world_size: int = 1) -> BatchPlan:
    """Which clips, crops and caption drops process ``rank`` trains on at every step."""
    return BatchPlan(
        seed=config.seed,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        crop_frames=config.data.crop_frames,
        cfg_dropout=config.cfg_dropout,
        eos_crop_share=config.data.eos_crop_share,
        tag_dropout=config.data.tag_dropout,
        tag_shuffle=config.data.tag_shuffle,
        tag_limit=config.data.tag_limit,
        rank=rank,
        world_size=world_size,
    )


def check_samples_length(config: TrainConfig, model: torch.nn.Module, pattern: DelayPattern, frame_rate: float) -> None:
    """Samples longer than the model can generate are refused before the run starts, not at the first."""
    from diamusic.generate import longest_cap

    d = config.samples
    frames, most = round(d.seconds * frame_rate), longest_cap(model, pattern)
    if d.every > 0 and frames > most:
        raise DiamusicError(
            f"samples.seconds {d.seconds:g} is {frames} frames; the model generates at most {length(most, frame_rate)}"
        )


def check_memory(
    config: TrainConfig, model: torch.nn.Module, pattern: DelayPattern, device: Any, processes: int
) -> None:
    """Refuse a batch that cannot fit, from a lower bound of what one optimizer step holds, rather than
    allocate until the process is killed: the logits of a micro-batch (B x decode steps x codebooks x
    vocab, fp32 for the loss), the micro-batches of a step queued by the loader, and on a GPU the weights."""
    d, gib = config.data, 1 << 30
    steps, codebooks = d.crop_frames + pattern.max_delay + 2, pattern.num_streams
    logits = config.batch_size * steps * codebooks * model.config.decoder_config.vocab_size * 4
    queued = (1 + 2 * d.num_workers) * config.grad_accum * config.batch_size * steps * codebooks * 8 * 2
    if device.type == "cuda":
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        free, where = torch.cuda.mem_get_info(device)[0], f"free on {device}"
    else:  # the run's processes share this machine's memory
        import psutil

        weights, free = 0, psutil.virtual_memory().available // processes
        where = "available here" + (f" per process ({processes})" if processes > 1 else "")
    need = logits + queued + weights
    if need > free:
        advice = (
            "lower grad_accum or data.num_workers (the loader queues each step's micro-batches)"
            if queued > logits
            else "lower batch_size or data.crop_frames (raising grad_accum keeps the batch)"
        )
        raise DiamusicError(
            f"batch_size {config.batch_size} x grad_accum {config.grad_accum} x {steps} decode steps needs at "
            f"least {need / gib:.1f} GiB (logits {logits / gib:.1f}, queued batches {queued / gib:.1f}), "
            f"{free / gib:.1f} GiB is {where}: {advice}"
        )


def check_crop_length(config: TrainConfig, model: torch.nn.Module, pattern: DelayPattern) -> None:
    """A crop the decoder has no positions for is refused: rotary positions past the pretrained range
    do not fail, they silently train on positions the model never saw."""
    from diamusic.generate import longest_cap

    most = longest_cap(model, pattern)
    if config.data.crop_frames > most:
        positions = model.config.decoder_config.max_position_embeddings
        raise DiamusicError(
            f"data.crop_frames {config.data.crop_frames} needs {config.data.crop_frames + pattern.max_delay + 2} "
            f"decoder positions with the {pattern.name} pattern; the model has {positions}: at most {most} frames"
        )


def build(
    config: TrainConfig, pattern: DelayPattern, data: CodesDataset
) -> tuple[torch.nn.Module, list[str], str | None]:
    """The model of a new run (scratch or pretrained, frozen parts, adapters), with notes to log and,
    under LoRA, the base weights' fingerprint: the checkpoints hold only the adapters, and loading
    them onto the base the config names checks that it is the same base."""
    vocab = data.vocab
    if config.model.init == "pretrained":
        model, notes = load_pretrained(config.model.pretrained, pattern, vocab)
    else:
        model, notes = build_model(config.model.preset, pattern, vocab, seed=config.seed), []
    model.set_attn_implementation(config.model.attention)
    if config.model.freeze_encoder:
        for p in model.model.encoder.parameters():
            p.requires_grad_(False)
        notes.append("encoder frozen")
    base = None
    if config.model.lora_rank > 0:
        base = weights_fingerprint(model)
        model = add_lora(model, config.model.lora_rank, config.model.lora_alpha)
        notes.append(f"LoRA rank {config.model.lora_rank} on attention projections")
    if config.model.gradient_checkpointing:
        # renamed after transformers 5.0; non-reentrant, so adapters get gradients through checkpointed layers
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    return model, notes, base


# --- samples: audio at checkpoints ----------------------------------------------------------------


@dataclass
class Samples:
    """Fixed prompts and seed, audio under RUN/samples/step_XXXXXX, so checkpoints compare by ear.

    Every process holds it (so all agree on the sample steps); only the main one generates, and holds
    the codec. Under FSDP no process holds the whole model, so the samples come from the gathered weights
    of the checkpoint the loop writes at that step.
    """

    config: SamplesConfig
    last_step: int
    prompts: list[str]
    codec: Any

    @classmethod
    def for_run(cls, config: TrainConfig, run_dir: Path, eval_data: CodesDataset, main: bool) -> Samples | None:
        d = config.samples
        if d.every <= 0:  # off, prompts or not: a run asked for no audio gets none, not audio at its last step
            return None
        prompts = list(d.prompts) or [eval_data.text(i) for i in range(min(len(eval_data), 4))]
        if not prompts:
            return None
        from diamusic.codecs import load_codec

        codec = load_codec(run_dir / "codec") if main else None
        return cls(d, config.steps, prompts[: d.num_prompts], codec)

    def due(self, step: int) -> bool:
        return step == self.last_step or due(step, self.config.every)

    def write(self, model: torch.nn.Module, run_dir: Path, step: int, tracker: Tracker) -> None:
        from diamusic.generate import write_samples

        write_samples(
            model, run_dir, step, self.prompts, self.config.seconds, self.codec, tracker, self.config.temperatures
        )
