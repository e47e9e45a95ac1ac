"""The training loop: conditional fine-tuning of Dia with CFG dropout, on any delay pattern.

Read `train` top to bottom: `setup` builds everything a run needs (run directory, data, model,
optimizer, tracker, resumed state); each optimizer step is one `train_step` (micro-batches whose
loss is normalised by the valid targets of the whole accumulated batch, across processes too);
then log, evaluate, checkpoint and demo when due. Runs single-process or under `accelerate launch`
/ `torchrun` (DDP; FSDP through an accelerate config) unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diamusic.config import DataConfig, TrainConfig, pattern_of_config, to_dict
from diamusic.data import DataError
from diamusic.data.dataset import BatchPlan, CodesDataset, StepBatches, fixed_batches
from diamusic.errors import DiamusicError, first_line
from diamusic.flops import peak_tflops, training_flops
from diamusic.metrics import LossNoise, TokenStats, token_stats
from diamusic.model import add_lora, build_model, count_parameters, load_pretrained
from diamusic.patterns import DelayPattern
from diamusic.runs import (
    CHECKPOINTS,
    CheckpointError,
    check_run_dir,
    checkpoint_bytes,
    checkpoint_dir,
    checkpoints_of,
    default_device,
    fsync_path,
    load_run,
    newest_intact_checkpoint,
    record_dataset_switch,
    write_manifest,
    write_run_files,
)
from diamusic.tokens import IGNORE_INDEX
from diamusic.tracking import Tracker


class TrainingDiverged(DiamusicError):
    """A non-finite loss, gradient norm or weight: training stops before it can reach a checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_train: dict[str, float]
    last_eval: dict[str, float]
    main_process: bool = True


def due(step: int, every: int) -> bool:
    """Whether a task done every ``every`` optimizer steps (0 = never) falls on ``step``."""
    return every > 0 and step % every == 0


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio; a multiplier for LambdaLR."""
    o = config.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, config.steps - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # norms, biases and embeddings are not weights to shrink
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --- one optimizer step -------------------------------------------------------------------------


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


def forward_stats(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], codebook_size: int, weights: torch.Tensor | None
) -> tuple[torch.Tensor, TokenStats]:
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
        use_cache=False,
    )
    return token_stats(out.logits, batch["labels"], codebook_size, weights)  # (B*C, T, V), split by token_stats


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
    eval_batches: list[dict[str, torch.Tensor]]
    train_probe: list[dict[str, torch.Tensor]]  # a fixed train subset, for the train/eval gap
    tracker: Tracker
    codebook_size: int
    weights: torch.Tensor | None
    sharded: bool  # FSDP: no process holds the whole model
    demos: Demos | None
    model_config: Any  # the DiaConfig, for counting FLOPs
    peak_tflops: float | None  # bf16 peak of all processes' GPUs, when known: MFU is logged
    step: int = 0
    skipped_steps: int = 0  # non-finite steps whose update was skipped
    noise: LossNoise = field(default_factory=LossNoise)
    window: Window = field(default_factory=Window)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def setup(config: TrainConfig, run_dir: Path, resume: bool, force: bool) -> Trainer:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    use_gpu = default_device() == "cuda"
    bf16 = config.precision == "bf16" or (config.precision == "auto" and use_gpu)
    # our schedule counts optimizer steps; accelerate would otherwise step it once per process
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no", cpu=not use_gpu, step_scheduler_with_optimizer=False
    )
    set_seed(config.seed)

    if not config.data.path:
        raise DataError("no dataset: the config's data.path is empty")
    train_data = CodesDataset(config.data.path, "train")
    eval_data = CodesDataset(config.data.path, "eval")
    pattern = pattern_of_config(config)
    previous = check_run_dir(run_dir, config, train_data.fingerprint, train_data.card["codec"], resume, force)
    if previous is not None and not checkpoints_of(run_dir):
        if accelerator.is_main_process:
            print(
                f"note: {run_dir} has no checkpoint yet (it stopped before its first): starting it over",
                file=sys.stderr,
            )
        resume = False
    plan = batch_plan(config, accelerator.process_index, accelerator.num_processes)

    def fixed(data: CodesDataset) -> list[dict[str, torch.Tensor]]:
        # batches of the global batch size, so the evaluated clips do not depend on the process count
        size, d = config.batch_size * accelerator.num_processes, config.data
        return fixed_batches(data, size, config.eval.batches, pattern, d.crop_frames, config.seed, d.eos_in_loss)

    model, notes = build(config, pattern, train_data)
    model_config = model.config
    check_demo_length(config, model, pattern, train_data.card["codec"]["frame_rate"])
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    if accelerator.is_main_process:
        if not resume:
            write_run_files(run_dir, config, train_data, pattern, notes, {"total": total, "trainable": trainable})
        for unfinished in (run_dir / CHECKPOINTS).glob("*.tmp"):  # a write cut short by a kill
            shutil.rmtree(unfinished, ignore_errors=True)
    accelerator.wait_for_everyone()
    o = config.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), fused=use_gpu or None
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, config))
    if config.compile:
        # in place, so parameter names (and so checkpoints) are those of the uncompiled model
        model.compile()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    peak = peak_tflops(torch.cuda.get_device_name()) if use_gpu and bf16 else None
    weights = config.codebook_weights
    tracking = config.tracking
    trainer = Trainer(
        config=config,
        run_dir=run_dir,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=StepBatches(train_data, plan, pattern, 0, config.steps, config.data.eos_in_loss),
        eval_batches=fixed(eval_data),
        train_probe=fixed(train_data),
        tracker=Tracker(
            run_dir,
            tracking.backends,
            to_dict(config),
            tracking.project,
            tracking.group,
            tracking.run_name,
            accelerator.is_main_process,
            tracking.tags,
        ),
        codebook_size=train_data.vocab.codebook_size,
        weights=torch.tensor(weights, dtype=torch.float32, device=accelerator.device) if weights else None,
        sharded=accelerator.distributed_type == DistributedType.FSDP,
        demos=None,
        model_config=model_config,
        peak_tflops=peak * accelerator.num_processes if peak else None,
    )
    if resume:
        restore(trainer)
        trainer.batches.start = trainer.step
        switched = record_dataset_switch(run_dir, train_data, trainer.step) if trainer.main else None
        if switched:
            print(f"note: {switched}", file=sys.stderr)
    else:
        trainer.tracker.truncate_after(0)  # rows of an attempt that stopped before its first checkpoint
    trainer.demos = Demos.for_run(trainer, eval_data)
    if trainer.main:
        size = f"{total / 1e6:.2f}M params" + (f" ({trainable / 1e6:.2f}M trainable)" if trainable < total else "")
        print(
            f"run {run_dir}: {size}, pattern {pattern}, {len(train_data)} train / {len(eval_data)} eval clips, "
            f"{accelerator.num_processes} process(es), {'bf16' if bf16 else 'fp32'} on {accelerator.device}",
            file=sys.stderr,
        )
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return trainer


def batch_plan(config: TrainConfig, rank: int = 0, world_size: int = 1) -> BatchPlan:
    """Which clips, crops and caption drops process ``rank`` trains on at every step."""
    return BatchPlan(
        seed=config.seed,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        crop_frames=config.data.crop_frames,
        cfg_dropout=config.cfg_dropout,
        eos_crop_share=config.data.eos_crop_share,
        rank=rank,
        world_size=world_size,
    )


def check_demo_length(config: TrainConfig, model: torch.nn.Module, pattern: DelayPattern, frame_rate: float) -> None:
    """A demo longer than the model can generate is refused before the run starts, not at its first demo."""
    from diamusic.generate import longest_cap

    d = config.demos
    frames, most = d.seconds * frame_rate, longest_cap(model, pattern)
    if (d.every > 0 or d.prompts) and frames > most:
        raise DiamusicError(f"demos.seconds {d.seconds:g} is {frames:.0f} frames; the model generates at most {most}")


def build(config: TrainConfig, pattern: DelayPattern, data: CodesDataset) -> tuple[torch.nn.Module, list[str]]:
    """The model of a new run (scratch or pretrained, frozen parts, adapters), with notes to log."""
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
    if config.model.lora_rank > 0:
        model = add_lora(model, config.model.lora_rank, config.model.lora_alpha)
        notes.append(f"LoRA rank {config.model.lora_rank} on attention projections")
    if config.model.gradient_checkpointing:
        # renamed after transformers 5.0; non-reentrant, so adapters get gradients through checkpointed layers
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    return model, notes


# --- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(t: Trainer) -> Path:
    """Model, optimizer, scheduler, RNG of every process and the loop's own state, in one directory
    that appears whole or not at all, with a manifest of checksums; keeps the newest
    ``checkpoints.keep``. Non-finite weights are never written; a failed write removes what it
    wrote and raises CheckpointError, leaving the earlier checkpoints as they were."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    acc = t.accelerator
    final = checkpoint_dir(t.run_dir, t.step)
    tmp = final.with_name(final.name + ".tmp")
    if not weights_finite(t):
        raise TrainingDiverged(f"step {t.step}: the weights hold NaN or inf, so no checkpoint was written")
    if acc.is_main_process:
        check_free_space(t, final)
    try:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        # FSDP saves shards; generation wants whole weights, gathered here by every process together
        full = acc.get_state_dict(t.model) if t.sharded else None
        if acc.is_main_process:
            if full is not None:  # the same file, with the same keys, that save_state writes without FSDP
                save_file(full, tmp / "model.safetensors", metadata={"format": "pt"})
            # config.json beside model.safetensors makes the checkpoint loadable with from_pretrained
            acc.unwrap_model(t.model).config.save_pretrained(tmp)
            state = {
                "step": t.step,
                "skipped_steps": t.skipped_steps,
                "loss_noise": t.noise.state_dict(),
                "window": t.window.state_dict(),
            }
            (tmp / "train_state.json").write_text(json.dumps(state))
            write_manifest(tmp)
            if final.exists():  # a damaged checkpoint of this step, passed over by the resume
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_path(final.parent)
    except (OSError, RuntimeError, SafetensorError) as exc:
        if acc.is_main_process:
            reason = write_failure(exc, tmp.parent)  # before the partial write is removed and frees space
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint to {final}: {reason}") from exc
        raise
    if acc.is_main_process:
        keep = t.config.checkpoints.keep
        # every checkpoint older than the newest ``keep`` goes, never the one just written and verified
        for old in checkpoints_of(t.run_dir)[:-keep] if keep > 0 else []:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def weights_finite(t: Trainer) -> bool:
    """Whether every process's weights (its shards under FSDP) are finite; one sync, not one per tensor."""
    with torch.no_grad():
        local = [p.to_local() if hasattr(p, "to_local") else p for p in t.model.parameters()]
        bad = (~torch.stack([torch.isfinite(p).all() for p in local]).all()).float()
    return bool(t.accelerator.reduce(bad, "sum") == 0)  # accelerate reduces by sum, mean or max only


def check_free_space(t: Trainer, final: Path) -> None:
    """Refuse to start a checkpoint that cannot fit: the newest one's size, or before the first, the
    weights plus AdamW's two fp32 moments of the trainable ones."""
    done = checkpoints_of(t.run_dir)
    if done:
        needed = checkpoint_bytes(done[-1])
    else:
        params = list(t.accelerator.unwrap_model(t.model).parameters())
        needed = sum(p.numel() * (p.element_size() + (8 if p.requires_grad else 0)) for p in params)
    free = shutil.disk_usage(t.run_dir).free
    if free < needed:
        raise CheckpointError(
            f"cannot write checkpoint to {final}: no space left on device "
            f"({free / 2**20:.0f} MiB free, about {needed / 2**20:.0f} MiB needed)"
        )


def write_failure(exc: BaseException, where: Path) -> str:
    """Why a write failed, in words: serialisers report a full disk as an I/O error or a bad position."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    with contextlib.suppress(OSError):
        if shutil.disk_usage(where).free < 2**20:
            return "no space left on device"
    return first_line(exc)


def restore(t: Trainer) -> None:
    """The newest intact checkpoint (a damaged newer one is named and passed over)."""
    from accelerate.utils import broadcast_object_list
    from safetensors import SafetensorError

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    found = [newest_intact_checkpoint(t.run_dir, warn) if t.main else None]
    ckpt = broadcast_object_list(found)[0]  # one process reads the checksums, all load the same step
    if ckpt is None:
        raise CheckpointError(
            f"cannot resume: no checkpoint in {t.run_dir} is intact; remove its {CHECKPOINTS}/ to start the run over"
        )
    try:
        t.accelerator.load_state(str(ckpt))
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"cannot load checkpoint {ckpt}: {first_line(exc)}") from exc
    state = json.loads((ckpt / "train_state.json").read_text())
    t.step = state["step"]
    t.skipped_steps = state.get("skipped_steps", 0)
    t.noise.load_state_dict(state["loss_noise"])
    t.window = Window.from_state(state["window"], t.accelerator.device)
    t.tracker.truncate_after(t.step)
    if t.main:
        print(f"resumed {t.run_dir} from step {t.step}", file=sys.stderr)


# --- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(t: Trainer, batches: list[dict[str, torch.Tensor]]) -> TokenStats | None:
    if not batches:
        return None
    acc = t.accelerator
    t.model.eval()
    total = None
    for full in batches:
        # each process takes its rows of every batch; the sums are reduced below
        batch = {k: v.tensor_split(acc.num_processes)[acc.process_index] for k, v in full.items()}
        # a process left without rows still runs a forward (on a row it then ignores): under FSDP
        # every process must take part in each layer's parameter gathering
        idle = batch["labels"].shape[0] == 0
        if idle:
            batch = {k: v[:1] for k, v in full.items()}
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        with acc.autocast():
            _, stats = forward_stats(t.model, batch, t.codebook_size, None)
        if not idle:
            total = stats if total is None else total + stats
    t.model.train()
    if total is None:  # more processes than rows
        total = TokenStats.zeros(batches[0]["labels"].shape[1], acc.device)
    return total.all_reduce()


def log_eval(t: Trainer) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for prefix, batches in (("eval/", t.eval_batches), ("train_subset/", t.train_probe)):
        stats = evaluate(t, batches)
        if stats is not None:
            metrics.update(stats.summary(prefix))
    if "eval/loss" in metrics and "train_subset/loss" in metrics:
        metrics["eval/gap"] = metrics["eval/loss"] - metrics["train_subset/loss"]
    t.tracker.log(metrics, t.step)
    return metrics


# --- demos --------------------------------------------------------------------------------------


@dataclass
class Demos:
    """Fixed prompts and seed, audio under RUN/demos/step_XXXXXX, so checkpoints compare by ear.

    Every process holds the callback (so all agree on the demo steps); only the main one generates.
    Under FSDP no process holds the whole model, so the demo loads the gathered weights of the
    checkpoint the loop writes at that step.
    """

    trainer: Trainer
    prompts: list[str]
    codec: Any

    @classmethod
    def for_run(cls, t: Trainer, eval_data: CodesDataset) -> Demos | None:
        d = t.config.demos
        if d.every <= 0 and not d.prompts:
            return None
        prompts = list(d.prompts) or [eval_data.text(i) for i in range(min(len(eval_data), 4))]
        if not prompts:
            return None
        from diamusic.codecs import load_codec

        codec = load_codec(t.run_dir / "codec") if t.main else None
        return cls(t, prompts[: d.num_prompts], codec)

    def due(self, step: int) -> bool:
        return step == self.trainer.config.steps or due(step, self.trainer.config.demos.every)

    def __call__(self, step: int) -> None:
        from diamusic.generate import write_demos

        t = self.trainer
        if not t.main:
            return
        acc = t.accelerator
        model = load_run(t.run_dir, step, str(acc.device)).model if t.sharded else acc.unwrap_model(t.model)
        write_demos(model, t.run_dir, step, self.prompts, t.config.demos.seconds, self.codec, t.tracker)


# --- the loop -----------------------------------------------------------------------------------


def train_step(t: Trainer, micro_batches: list[dict[str, torch.Tensor]]) -> StepOutput:
    acc = t.accelerator
    # every micro-batch of every process is normalised by the same global valid-target count
    counts = torch.tensor(
        [
            sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro_batches),
            sum(len(b["ends"]) for b in micro_batches),
            sum(int(b["ends"].sum()) for b in micro_batches),
            sum(step_flops(t.model_config, b) for b in micro_batches),
        ],
        device=acc.device,
    )
    valid, samples, eos_samples, flops = acc.reduce(counts, "sum").tolist()
    stats = None
    for m, batch in enumerate(micro_batches):
        batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
        last = m == len(micro_batches) - 1
        with acc.no_sync(t.model) if not last else contextlib.nullcontext(), acc.autocast():
            loss_sum, micro_stats = forward_stats(t.model, batch, t.codebook_size, t.weights)
            # DDP averages gradients over processes; scale back to a sum over the global batch
            acc.backward(loss_sum * acc.num_processes / max(valid, 1))
        stats = micro_stats if stats is None else stats + micro_stats
    grad_norm = float(acc.clip_grad_norm_(t.model.parameters(), t.config.optim.grad_clip))
    stats = stats.all_reduce()
    # every process sees the same reduced loss and global norm, so all skip or step together
    finite = math.isfinite(grad_norm) and bool(torch.isfinite(stats.loss_sum.sum()))
    if finite:
        t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return StepOutput(stats, grad_norm, samples, eos_samples, finite, flops)


def step_flops(model_config: Any, batch: dict[str, torch.Tensor]) -> int:
    """Model FLOPs of a training forward and backward on one micro-batch, at its padded shapes."""
    samples, text_tokens = batch["input_ids"].shape
    return training_flops(model_config, samples, text_tokens, batch["decoder_input_ids"].shape[1])


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) a run. ``stop_after`` ends the process early as if killed after that step."""
    t = setup(config, Path(run_dir), resume, force)
    bar = _progress_bar(t) if progress and t.main else None
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    interrupted = False
    t.model.train()
    try:
        for micro_batches in data_loader(t.batches, config.data, t.accelerator.device):
            out = train_step(t, micro_batches)
            t.step += 1
            if out.finite:
                t.noise.update(out.loss)
                t.window.add(out)
            else:
                skipped(t, out)
            end = t.step == config.steps
            if (due(t.step, config.logging.every) or end) and t.window.stats is not None:
                last_train = {
                    **t.window.summary(t.peak_tflops),
                    "train/loss_noise": t.noise.value,
                    "train/lr": t.scheduler.get_last_lr()[0],
                    "train/grad_norm": out.grad_norm,
                }
                if torch.cuda.is_available():
                    last_train["perf/max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                t.tracker.log(last_train, t.step)
                t.window = Window()
            if bar:
                bar(last_train)
            if due(t.step, config.eval.every) or end:
                last_eval = log_eval(t)
            demo_now = t.demos is not None and t.demos.due(t.step)
            if due(t.step, config.checkpoints.every) or end or (demo_now and t.sharded):
                save_checkpoint(t)
            if demo_now:
                t.demos(t.step)
            if stop_after is not None and t.step >= stop_after:
                break
    except KeyboardInterrupt:
        interrupted = True
        if t.main:
            print(f"\ninterrupted: saving a checkpoint at step {t.step}", file=sys.stderr)
        save_checkpoint(t)
    finally:
        if bar:
            bar(None)
        t.tracker.close()
    return TrainResult(t.run_dir, t.step, interrupted, last_train, last_eval, t.main)


def skipped(t: Trainer, out: StepOutput) -> None:
    """A step whose update was skipped: logged, and the end of training once more than allowed."""
    t.skipped_steps += 1
    allowed = t.config.optim.skip_nonfinite_steps
    t.tracker.log(
        {"train/loss": out.loss, "train/grad_norm": out.grad_norm, "train/skipped_steps": t.skipped_steps}, t.step
    )
    what = f"loss {out.loss:.4g}, grad norm {out.grad_norm:.4g}"
    if t.skipped_steps > allowed:
        newest = checkpoints_of(t.run_dir)
        since = f"; the newest checkpoint is {newest[-1].name}" if newest else "; no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged at step {t.step} ({what}){since} (lower optim.lr and resume, "
            "or allow skipped steps with optim.skip_nonfinite_steps)"
        )
    if t.main:
        print(
            f"\nwarning: step {t.step}: {what}; update skipped ({t.skipped_steps} of {allowed} allowed)",
            file=sys.stderr,
        )


def data_loader(batches: StepBatches, data: DataConfig, device: torch.device) -> torch.utils.data.DataLoader:
    """One item per optimizer step: its micro-batches, built by ``data.num_workers`` processes."""
    workers, pin = data.num_workers, data.pin_memory and device.type == "cuda"
    return torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0
    )


def _progress_bar(t: Trainer) -> Callable[[dict[str, float] | None], None]:
    """One tick per optimizer step showing the last logged loss; called with None to close."""
    from tqdm import tqdm

    bar = tqdm(total=t.config.steps, initial=t.step, unit="step", file=sys.stderr, dynamic_ncols=True)

    def tick(last: dict[str, float] | None) -> None:
        if last is None:
            bar.close()
            return
        bar.update(1)
        if last:
            bar.set_postfix(loss=f"{last['train/loss']:.3f}", ent=f"{last['train/entropy']:.2f}")

    return tick
