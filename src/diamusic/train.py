"""The training loop: conditional fine-tuning of Dia with CFG dropout, on any delay pattern.

Read `train` top to bottom: `diamusic.trainer.setup` builds everything a run needs (run
directory, data, model, optimizer, tracker, resumed state); each optimizer step is one
`train_step` (micro-batches whose loss is normalised by the valid targets of the whole
accumulated batch, across processes too); then log, evaluate, checkpoint and write samples when due. Runs
single-process or under `accelerate launch` / `torchrun` (DDP; FSDP through an accelerate
config) unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diamusic.checkpoints import checkpoints_of, save_checkpoint, weights_finite
from diamusic.config import DataConfig, TrainConfig
from diamusic.data.dataset import StepBatches
from diamusic.errors import DiamusicError
from diamusic.export import write_transformers_files
from diamusic.flops import training_flops
from diamusic.metrics import TokenStats, token_stats
from diamusic.progress import bar as progress_bar
from diamusic.runs import RUN_FILE, load_run, record_early_stop
from diamusic.teacher_forced import teacher_forced
from diamusic.threads import requested_threads, usable_cores
from diamusic.tokens import IGNORE_INDEX
from diamusic.trainer import StepOutput, Trainer, Window, due, setup


class TrainingDiverged(DiamusicError):
    """A non-finite loss, gradient norm or weight: training stops before it can reach a checkpoint."""


class Stopped(KeyboardInterrupt):
    """Work stopped by a signal once its state was saved; the exit status is 128 + ``signum``."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_train: dict[str, float]
    last_eval: dict[str, float]
    main_process: bool = True
    signum: int = signal.SIGINT  # the signal that interrupted it (SIGTERM: a scheduler or `timeout`)
    early_stop: str = ""  # why it stopped before config.steps (config.early_stop), if it did


class StopSignals:
    """SIGINT and SIGTERM during training, held until the optimizer step in progress is finished and
    counted, so a checkpoint never holds an update its step number does not: SLURM, `timeout`,
    `docker stop` and pre-emption send SIGTERM, and Ctrl-C sends SIGINT. A second signal stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def agreed(self, accelerator: Any) -> int | None:
        """The signal any process received, so that every process stops after the same step."""
        if accelerator.num_processes == 1:
            return self.received
        mine = torch.tensor([self.received or 0], device=accelerator.device)
        return int(accelerator.gather(mine).max()) or None


# --- one optimizer step -------------------------------------------------------------------------


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


# --- checkpoints and evaluation -----------------------------------------------------------------


def save(t: Trainer) -> Path:
    """A checkpoint of this step (see `diamusic.checkpoints.save_checkpoint`); non-finite weights
    are never written."""
    if not weights_finite(t.accelerator, t.model):
        raise TrainingDiverged(f"step {t.step}: the weights hold NaN or inf, so no checkpoint was written")
    c = t.config.checkpoints
    adapters = t.config.model.lora_rank > 0

    def transformers_files(folder: Path) -> None:  # main process only, with run.json's current codec
        codec = json.loads((t.run_dir / RUN_FILE).read_text())["codec"]
        write_transformers_files(folder, t.model_config, t.run_dir / "codec", codec)

    return save_checkpoint(
        t.accelerator, t.model, t.run_dir, t.step, t.state_dict(), c.keep, t.sharded, adapters, transformers_files
    )


def log_eval(t: Trainer) -> dict[str, float]:
    metrics: dict[str, float] = {}
    acc = t.accelerator
    for prefix, batches in t.eval_batches.items():
        parts = teacher_forced(
            t.model, batches, t.pattern, t.vocab, None, acc.process_index, acc.num_processes, acc.autocast
        )
        for part, stats in parts.items():
            metrics.update(stats.summary(prefix + part))
    if "eval/loss" in metrics and "train_subset/loss" in metrics:
        metrics["eval/gap"] = metrics["eval/loss"] - metrics["train_subset/loss"]
    t.tracker.log(metrics, t.step)
    return metrics


def write_samples_at(t: Trainer) -> None:
    """The samples of this step (audio at checkpoints), from the main process."""
    if t.samples is None or not t.main:
        return
    acc = t.accelerator
    model = load_run(t.run_dir, t.step, str(acc.device)).model if t.sharded else acc.unwrap_model(t.model)
    t.samples.write(model, t.run_dir, t.step, t.tracker)


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
            loss_sum, micro_stats = forward_stats(t.model, batch, t.vocab.codebook_size, t.weights)
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
    interrupted, signum, saved, mid_step = False, int(signal.SIGINT), -1, False
    t.model.train()
    with StopSignals() as stop:
        try:
            if t.early_stop.reason:  # resumed after it stopped early: finished, no step more
                stopped_early(t)
            batches = () if t.early_stop.reason else data_loader(t.batches, config.data, t.accelerator.device, t.main)
            for micro_batches in batches:
                mid_step = True
                out = train_step(t, micro_batches)
                t.step += 1
                mid_step = False
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
                        "train/lr": float(t.scheduler.get_last_lr()[0]),  # a tensor under torchao
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
                    if not end:  # at the last step there is nothing left to stop early
                        end = bool(t.early_stop.update(last_eval, config.early_stop))
                samples_now = t.samples is not None and t.samples.due(t.step)
                if due(t.step, config.checkpoints.every) or end or (samples_now and t.sharded):
                    save(t)
                    saved = t.step
                if samples_now:
                    write_samples_at(t)
                if t.early_stop.reason:
                    stopped_early(t)
                    break
                if stop_after is not None and t.step >= stop_after:
                    break
                received = stop.agreed(t.accelerator)
                if received is not None:
                    signum = received
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
            stopped(t, signum, mid_step, saved)
        finally:
            if bar:
                bar(None)
            t.tracker.close()
            if t.lock is not None:
                t.lock.release()
    return TrainResult(t.run_dir, t.step, interrupted, last_train, last_eval, t.main, signum, t.early_stop.reason)


def stopped(t: Trainer, signum: int, mid_step: bool, saved: int) -> None:
    """A stop signal: checkpoint the finished step, unless the signal came inside a step (a second one),
    whose half-made update must not be saved as a step."""
    name = signal.Signals(signum).name
    if mid_step:
        if t.main:
            print(f"\n{name}: stopped inside step {t.step + 1}; nothing saved after it", file=sys.stderr)
        return
    if t.main:
        print(f"\n{name}: saving a checkpoint at step {t.step}", file=sys.stderr)
    if saved != t.step:  # the step's own checkpoint holds this state already
        save(t)


def stopped_early(t: Trainer) -> None:
    """The end of a run config.early_stop ended: said once in run.json, the metrics and stderr."""
    if not t.main:
        return
    if record_early_stop(t.run_dir, t.step, t.early_stop.reason):
        t.tracker.log({"train/early_stop_step": t.step}, t.step)
    print(f"stopped early at step {t.step} of {t.config.steps}: {t.early_stop.reason}", file=sys.stderr)


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
        since = f"the newest checkpoint is {newest[-1].name}" if newest else "no checkpoint was written yet"
        again = "lower optim.lr and resume" if newest else "lower optim.lr and start again"
        raise TrainingDiverged(
            f"training diverged at step {t.step} ({what}) and {since}: allow skipped steps with "
            f"optim.skip_nonfinite_steps, or {again}",
            "resume" if newest else None,
        )
    if t.main:
        print(
            f"\nwarning: step {t.step}: {what}; update skipped ({t.skipped_steps} of {allowed} allowed)",
            file=sys.stderr,
        )


def data_loader(
    batches: StepBatches, data: DataConfig, device: torch.device, main: bool = True
) -> torch.utils.data.DataLoader:
    """One item per optimizer step: its micro-batches, built by ``data.num_workers`` processes, at
    most one per core this process may use (more only queue for the same cores)."""
    threads = requested_threads()
    cores = threads or usable_cores()
    workers, pin = min(data.num_workers, cores), data.pin_memory and device.type == "cuda"
    if workers < data.num_workers and main:
        limit = f"--threads {threads}" if threads else "the cores here"
        print(f"note: data.num_workers {data.num_workers} capped at {workers}, {limit}", file=sys.stderr)
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_stop_signals,
    )


def _ignore_stop_signals(worker: int) -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the workers must outlive them until the
    # training process (which holds them to a step boundary, see StopSignals) shuts the loader down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _progress_bar(t: Trainer) -> Callable[[dict[str, float] | None], None]:
    """One tick per optimizer step showing the last logged loss; called with None to close."""
    bar = progress_bar(total=t.config.steps, initial=t.step, unit="step")

    def tick(last: dict[str, float] | None) -> None:
        if last is None:
            bar.close()
            return
        bar.update(1)
        if last:
            bar.set_postfix(loss=f"{last['train/loss']:.3f}", ent=f"{last['train/entropy']:.2f}")

    return tick
