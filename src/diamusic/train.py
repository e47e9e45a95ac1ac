"""The training loop: conditional fine-tuning of Dia with CFG dropout, on any delay pattern.

Read it top to bottom: set up the run dir, data, model and optimizer; then for each step draw
its micro-batches, normalise the loss by the valid targets of the whole accumulated batch
(across processes too), step, log, evaluate, checkpoint. Runs single-process or under
`accelerate launch` / `torchrun` (DDP; FSDP through an accelerate config) unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from diamusic import __version__
from diamusic.config import TrainConfig, to_dict
from diamusic.data import (
    IGNORE_INDEX,
    BatchPlan,
    CodesDataset,
    DataError,
    StepBatches,
    fixed_batches,
)
from diamusic.metrics import LossNoise, TokenStats, token_stats
from diamusic.model import add_lora, build_model, count_parameters, load_pretrained
from diamusic.patterns import DelayPattern
from diamusic.tracking import Tracker

CHECKPOINTS = "checkpoints"


class RunError(ValueError):
    """A run directory or resume request that cannot be honoured; one line for the user."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_train: dict[str, float]
    last_eval: dict[str, float]
    main_process: bool = True


def code_version() -> str:
    """Package version plus the git commit (and a dirty mark) when run from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__


def checkpoints_of(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINTS
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def resolve_checkpoint(run_dir: Path, which: str | int = "latest") -> Path:
    found = checkpoints_of(run_dir)
    if not found:
        raise RunError(f"{run_dir} has no checkpoints")
    if which == "latest":
        return found[-1]
    wanted = run_dir / CHECKPOINTS / f"step_{int(which):06d}"
    if wanted not in found:
        steps = ", ".join(str(int(p.name[5:])) for p in found)
        raise RunError(f"{run_dir} has no checkpoint at step {which} (have: {steps})")
    return wanted


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


def _prepare_run_dir(run_dir: Path, config: TrainConfig, data: CodesDataset, resume: bool, force: bool) -> None:
    run_file = run_dir / "run.json"
    if not resume:
        if run_file.exists():
            raise RunError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
        return
    if not run_file.exists():
        raise RunError(f"--resume: {run_dir} holds no run (no run.json)")
    previous = json.loads(run_file.read_text())
    old = previous["config"]
    checks = [
        ("delay pattern", old["delay_pattern"], config.delay_pattern),
        (
            "model",
            f"{old['model']['preset']}/{old['model']['init']}",
            f"{config.model.preset}/{config.model.init}",
        ),
        ("dataset fingerprint", previous["dataset_fingerprint"], data.fingerprint),
    ]
    for what, was, now in checks:
        if str(was) != str(now) and not force:
            raise RunError(f"--resume: the run used {what} {was}, this command has {now} (add --force to override)")


def _write_run_files(
    run_dir: Path, config: TrainConfig, data: CodesDataset, pattern: DelayPattern, notes: list[str]
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    info = {
        "config": to_dict(config),
        "pattern": {"name": pattern.name, "delays": pattern.to_list()},
        "dataset": str(data.path.resolve()),
        "dataset_fingerprint": data.fingerprint,
        "codec": data.card["codec"],
        "code_version": code_version(),
        "notes": notes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, run_dir / "run.json")
    # generation must work from the run dir alone, so the codec travels with it
    if not (run_dir / "codec").exists():
        shutil.copytree(data.path / "codec", run_dir / "codec")


def _build(config: TrainConfig, pattern: DelayPattern, data: CodesDataset) -> tuple[torch.nn.Module, list[str]]:
    vocab = data.vocab
    if config.model.init == "pretrained":
        model, notes = load_pretrained(config.model.pretrained, pattern, vocab)
    else:
        model, notes = build_model(config.model.preset, pattern, vocab, seed=config.seed), []
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


def _forward_stats(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], codebook_size: int, weights: torch.Tensor | None
) -> tuple[torch.Tensor, TokenStats]:
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
        use_cache=False,
    )
    return token_stats(out.logits, batch["labels"], codebook_size, weights)  # (B*C, T, V), split by token_stats


@torch.no_grad()
def evaluate(model, batches, accelerator, codebook_size: int) -> TokenStats | None:
    if not batches:
        return None
    model.eval()
    total = None
    for full in batches:
        # each process takes its rows of every batch; the sums are reduced below
        batch = {k: v.tensor_split(accelerator.num_processes)[accelerator.process_index] for k, v in full.items()}
        # a process left without rows still runs a forward (on a row it then ignores): under FSDP
        # every process must take part in each layer's parameter gathering
        idle = batch["labels"].shape[0] == 0
        if idle:
            batch = {k: v[:1] for k, v in full.items()}
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            _, stats = _forward_stats(model, batch, codebook_size, None)
        if not idle:
            total = stats if total is None else total + stats
    model.train()
    if total is None:  # more processes than rows
        total = TokenStats.zeros(batches[0]["labels"].shape[1], accelerator.device)
    return total.all_reduce()


def _save_checkpoint(
    accelerator, model, run_dir: Path, step: int, state: dict[str, Any], keep: int, sharded: bool
) -> Path:
    from safetensors.torch import save_file

    final = run_dir / CHECKPOINTS / f"step_{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # weights (safetensors), optimizer, scheduler, RNG of every process
    # FSDP saves shards; generation wants whole weights, gathered here by every process together
    full = accelerator.get_state_dict(model) if sharded else None
    if accelerator.is_main_process:
        if full is not None:  # the same file, with the same keys, that save_state writes without FSDP
            save_file(full, tmp / "model.safetensors", metadata={"format": "pt"})
        # config.json beside model.safetensors makes the checkpoint loadable with from_pretrained
        accelerator.unwrap_model(model).config.save_pretrained(tmp)
        (tmp / "train_state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)  # a checkpoint dir either exists whole or not at all
        for old in checkpoints_of(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) a run. ``stop_after`` ends the process early as if killed after that step."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    run_dir = Path(run_dir)
    use_gpu = torch.cuda.is_available()
    bf16 = config.precision == "bf16" or (config.precision == "auto" and use_gpu)
    # our schedule counts optimizer steps; accelerate would otherwise step it once per process
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no", cpu=not use_gpu, step_scheduler_with_optimizer=False
    )
    main = accelerator.is_main_process
    set_seed(config.seed)

    # --- data -----------------------------------------------------------------------------------
    if not config.data.path:
        raise DataError("no dataset: pass --data DATASET_DIR (written by `diamusic prepare`)")
    train_data = CodesDataset(config.data.path, "train")
    eval_data = CodesDataset(config.data.path, "eval")
    vocab = train_data.vocab
    pattern = DelayPattern.parse(config.delay_pattern, num_codebooks=vocab.num_codebooks)
    _prepare_run_dir(run_dir, config, train_data, resume, force)
    plan = BatchPlan(
        seed=config.seed,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        max_frames=config.data.max_frames,
        cfg_dropout=config.cfg_dropout,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    eos = config.data.eos_in_loss
    # batches of the global batch size, so the evaluated clips do not depend on the process count
    eval_batch = config.batch_size * accelerator.num_processes
    eval_batches = fixed_batches(
        eval_data, eval_batch, config.eval_batches, pattern, config.data.max_frames, config.seed, eos
    )
    # the same clips every time, so the train/eval gap (memorisation) is read off like for like
    train_probe = fixed_batches(
        train_data, eval_batch, config.eval_batches, pattern, config.data.max_frames, config.seed, eos
    )

    # --- model and optimiser --------------------------------------------------------------------
    model, notes = _build(config, pattern, train_data)
    n_params = count_parameters(model)
    if main and not resume:
        _write_run_files(run_dir, config, train_data, pattern, notes)
    accelerator.wait_for_everyone()
    o = config.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), fused=use_gpu or None
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, config))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    weights = (
        torch.tensor(config.codebook_weights, dtype=torch.float32, device=accelerator.device)
        if config.codebook_weights
        else None
    )
    if weights is not None and weights.numel() != vocab.num_codebooks:
        raise RunError(f"codebook_weights has {weights.numel()} entries for {vocab.num_codebooks} codebooks")

    tracker = Tracker(
        run_dir,
        config.tracker,
        to_dict(config),
        config.wandb_project,
        config.wandb_group,
        config.run_name,
        main,
    )
    noise = LossNoise()
    window: TokenStats | None = None
    start = 0
    if resume:
        ckpt = resolve_checkpoint(run_dir)
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / "train_state.json").read_text())
        start = state["step"]
        noise.load_state_dict(state["loss_noise"])
        window = _stats_from_lists(state["window"], accelerator.device) if state.get("window") else None
        tracker.truncate_after(start)
        if main:
            print(f"resumed {run_dir} from step {start}", file=sys.stderr)
    if main:
        print(
            f"run {run_dir}: {n_params / 1e6:.2f}M params, pattern {pattern}, {len(train_data)} train / "
            f"{len(eval_data)} eval clips, {accelerator.num_processes} process(es), "
            f"{'bf16' if bf16 else 'fp32'} on {accelerator.device}",
            file=sys.stderr,
        )
        for note in notes:
            print(f"note: {note}", file=sys.stderr)

    loader = torch.utils.data.DataLoader(
        StepBatches(train_data, plan, pattern, start, config.steps, eos),
        batch_size=None,
        shuffle=False,
        num_workers=config.data.num_workers,
        pin_memory=use_gpu,
        persistent_workers=config.data.num_workers > 0,
    )
    sharded = accelerator.distributed_type == DistributedType.FSDP
    demo = _demo_hook(config, run_dir, eval_data, accelerator, tracker, sharded)

    # --- the loop -------------------------------------------------------------------------------
    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
    model.train()
    step = start
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    tokens, tick, window_steps = 0, time.time(), 0
    interrupted = False

    def checkpoint() -> None:
        state = {
            "step": step,
            "loss_noise": noise.state_dict(),
            "window": _stats_to_lists(window) if window is not None else None,
        }
        _save_checkpoint(accelerator, model, run_dir, step, state, config.keep_checkpoints, sharded)

    try:
        for micro_batches in loader:
            # every micro-batch of every process is normalised by the same global valid-target count
            valid = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro_batches)
            total_valid = accelerator.reduce(torch.tensor(valid, device=accelerator.device), "sum").item()
            tokens += total_valid
            step_stats = None
            for m, batch in enumerate(micro_batches):
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
                sync = m == len(micro_batches) - 1
                with (
                    accelerator.no_sync(model) if not sync else contextlib.nullcontext(),
                    accelerator.autocast(),
                ):
                    loss_sum, stats = _forward_stats(model, batch, vocab.codebook_size, weights)
                    # DDP averages gradients over processes; scale back to a sum over the global batch
                    loss = loss_sum * accelerator.num_processes / max(total_valid, 1)
                    accelerator.backward(loss)
                step_stats = stats if step_stats is None else step_stats + stats
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1

            step_stats = step_stats.all_reduce()
            step_loss = float(step_stats.loss_sum.sum() / step_stats.count.sum().clamp_min(1))
            loss_noise = noise.update(step_loss)
            window = step_stats if window is None else window + step_stats
            if step % config.log_every == 0 or step == config.steps:
                elapsed = max(time.time() - tick, 1e-9)
                last_train = {
                    **window.summary("train/"),
                    "train/loss_noise": loss_noise,
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": float(grad_norm),
                    "perf/tokens_per_s": tokens / elapsed,  # valid loss targets of all processes
                    "perf/step_s": elapsed / window_steps,
                }
                if use_gpu:
                    last_train["perf/max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                tracker.log(last_train, step)
                window, tokens, tick, window_steps = None, 0, time.time(), 0
            if bar:
                bar.update(1)
                if last_train:
                    bar.set_postfix(
                        loss=f"{last_train['train/loss']:.3f}",
                        ent=f"{last_train['train/entropy']:.2f}",
                        tok_s=f"{last_train['perf/tokens_per_s']:.0f}",
                    )
            if step % config.eval_every == 0 or step == config.steps:
                last_eval = _log_eval(model, eval_batches, train_probe, accelerator, vocab.codebook_size, tracker, step)
            demo_now = demo is not None and (
                step == config.steps or (config.demo_every > 0 and step % config.demo_every == 0)
            )
            if step % config.checkpoint_every == 0 or step == config.steps or (demo_now and sharded):
                checkpoint()
            if demo_now:
                demo(model, step)
            if stop_after is not None and step >= stop_after:
                break
    except KeyboardInterrupt:
        interrupted = True
        if main:
            print(f"\ninterrupted: saving a checkpoint at step {step}", file=sys.stderr)
        checkpoint()
    finally:
        if bar:
            bar.close()
        tracker.close()
    return TrainResult(run_dir, step, interrupted, last_train, last_eval, main)


def _stats_to_lists(stats: TokenStats) -> dict[str, list[float]]:
    return {f.name: getattr(stats, f.name).tolist() for f in dataclasses.fields(stats)}


def _stats_from_lists(values: dict[str, list[float]], device: torch.device) -> TokenStats:
    return TokenStats(**{k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in values.items()})


def _log_eval(model, eval_batches, train_probe, accelerator, codebook_size: int, tracker, step: int) -> dict:
    metrics: dict[str, float] = {}
    for prefix, batches in (("eval/", eval_batches), ("train_subset/", train_probe)):
        stats = evaluate(model, batches, accelerator, codebook_size)
        if stats is not None:
            metrics.update(stats.summary(prefix))
    if "eval/loss" in metrics and "train_subset/loss" in metrics:
        metrics["eval/gap"] = metrics["eval/loss"] - metrics["train_subset/loss"]
    tracker.log(metrics, step)
    return metrics


def _demo_hook(
    config: TrainConfig, run_dir: Path, eval_data: CodesDataset, accelerator, tracker: Tracker, sharded: bool
):
    """Fixed prompts, fixed seed, audio under RUN/demos/step_XXXXXX; None when demos are off.

    Every process gets the hook (so all agree on the demo steps); only the main one generates.
    ``sharded`` (FSDP): no process holds the whole model, so the demo loads the gathered weights
    of the checkpoint written at that step (the loop writes one there).
    """
    if config.demo_every <= 0 and not config.demo_prompts:
        return None
    prompts = list(config.demo_prompts) or [eval_data.text(i) for i in range(min(len(eval_data), 4))]
    prompts = prompts[: max(1, config.demo_num_prompts)]
    if not prompts:
        return None
    from diamusic.codecs import load_codec
    from diamusic.generate import load_run, write_demos

    codec = load_codec(run_dir / "codec") if accelerator.is_main_process else None

    def run(model: torch.nn.Module, step: int) -> None:
        if not accelerator.is_main_process:
            return
        whole = load_run(run_dir, step, str(accelerator.device)).model if sharded else accelerator.unwrap_model(model)
        write_demos(whole, run_dir, step, prompts, config.demo_seconds, codec, tracker)

    return run
