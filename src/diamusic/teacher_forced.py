"""Teacher-forced evaluation: the one computation behind training's ``eval/`` metrics and `diamusic eval`.

Both score the same fixed clips (`eval_clips`: chosen by the dataset alone, the same for every
seed, pattern and process count) with `teacher_forced`, so ``eval/loss`` in a run's
metrics.jsonl and in an ablation summary are the same number for the same checkpoint.

Edge frames: a delayed codebook sees BOS in another codebook's context near a crop's start, and
PAD in place of lower codebooks' later frames near its end; how many frames that touches grows
with the pattern's delays. So the loss is also reported on the interior frames only, those at
least ``edge`` frames from both ends of their crop, where every pattern compared sees real frames
in every codebook: a like-for-like comparison (`interior_edge`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch

from diamusic.config import TrainConfig
from diamusic.data.dataset import CodesDataset, make_batch
from diamusic.metrics import TokenStats, token_stats
from diamusic.patterns import DelayPattern
from diamusic.tokens import IGNORE_INDEX, AudioVocab

Batch = dict[str, torch.Tensor]


EVAL_ORDER_KEY = 7  # the fixed clips come from the dataset alone: every seed and pattern scores the same ones


def eval_clips(data: CodesDataset, count: int) -> list[int]:
    """At most ``count`` clips of a split, in an order fixed by the dataset alone, so runs of every
    seed, pattern and process count are scored on the same clips."""
    order = np.random.default_rng(EVAL_ORDER_KEY).permutation(len(data))
    return sorted(int(i) for i in order[:count])


def fixed_eval_batches(
    config: TrainConfig, train: CodesDataset, eval: CodesDataset, pattern: DelayPattern, world: int = 1
) -> dict[str, list[Batch]]:
    """``{"eval/": ..., "train_subset/": ...}``: at most ``eval.clips`` clips of the eval split and
    as many of the train split (for the train/eval gap; ``eval.clips`` of them where the eval split
    is empty, so there is still a loss on fixed clips to follow), cropped from their start, captions kept,
    in batches of ``batch_size`` rows per process (``world`` processes split each batch)."""
    d, size = config.data, config.batch_size * world
    eval_picks = eval_clips(eval, config.eval.clips)
    # as many train clips as eval ones, for the gap; all eval.clips of them when the eval split is empty
    train_picks = eval_clips(train, len(eval_picks) if len(eval) else config.eval.clips)

    def batches(data: CodesDataset, clips: list[int]) -> list[Batch]:
        picks = [[(0, i, False) for i in clips[b : b + size]] for b in range(0, len(clips), size)]
        return [make_batch(data, p, pattern, d.crop_frames, None, d.eos_in_loss) for p in picks]

    return {"eval/": batches(eval, eval_picks), "train_subset/": batches(train, train_picks)}


def interior_edge(patterns: Sequence[DelayPattern]) -> int:
    """The smallest edge at which every interior target of every pattern has a real frame of every
    codebook in its context: the largest max delay + 1.

    The target at decode step s is predicted from the inputs of steps up to s - 1, where codebook c
    holds frame s - 1 - delays[c]: for the most delayed codebook to hold frame 0 there, the reference
    codebook's (delay 0) target frame s must be at least max delay + 1 (at max delay it sees only BOS).
    """
    return max(p.max_delay for p in patterns) + 1


def interior(labels: torch.Tensor, pattern: DelayPattern, vocab: AudioVocab, edge: int) -> torch.Tensor:
    """(B, C, S) bool: targets of frames at least ``edge`` frames from both ends of their crop.

    Label position s of codebook c is frame ``s - delays[c]``; a crop's length is the count of the
    reference codebook's real-code targets (its EOS target, if any, is frame T and so an edge target).
    """
    steps = torch.arange(labels.shape[-1], device=labels.device)
    delays = torch.tensor(pattern.delays, device=labels.device)
    frame = steps[None, None, :] - delays[None, :, None]  # (1, C, S)
    reference = labels[:, pattern.reference]
    length = ((reference != IGNORE_INDEX) & (reference != vocab.eos)).sum(-1)  # (B,)
    inside = (frame >= edge) & (frame < length[:, None, None] - edge)
    return inside & (labels != IGNORE_INDEX)


@torch.no_grad()
def teacher_forced(
    model: torch.nn.Module,
    batches: list[Batch],
    pattern: DelayPattern,
    vocab: AudioVocab,
    edge: int | None = None,
    rank: int = 0,
    world: int = 1,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, TokenStats]:
    """Stats over all targets (key ``""``) and, with ``edge``, over the interior and edge ones
    (``"interior/"``, ``"edge/"``), summed over the ``world`` processes. Empty without batches.

    Process ``rank`` scores its rows of every batch. One left without rows still runs a forward on
    a row it then ignores: under FSDP every process must take part in each layer's gathering.
    """
    if not batches:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = {name: TokenStats.zeros(pattern.num_streams, device) for name in _part_names(edge)}
    for full in batches:
        batch = {k: v.tensor_split(world)[rank] for k, v in full.items()}
        idle = batch["labels"].shape[0] == 0
        if idle:
            batch = {k: v[:1] for k, v in full.items()}
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=batch["decoder_input_ids"],
                use_cache=False,
            ).logits
        if idle:
            continue
        labels = batch["labels"]
        inside = interior(labels, pattern, vocab, edge) if edge is not None else None
        for name in parts:
            keep = {"": None, "interior/": inside, "edge/": None if inside is None else ~inside}[name]
            masked = labels if keep is None else labels.masked_fill(~keep, IGNORE_INDEX)
            parts[name] = parts[name] + token_stats(logits, masked, vocab.codebook_size)[1]
    model.train(was_training)
    return {name: stats.all_reduce() for name, stats in parts.items()}


def _part_names(edge: int | None) -> tuple[str, ...]:
    return ("",) if edge is None else ("", "interior/", "edge/")
