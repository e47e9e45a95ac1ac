"""The optimizer and learning-rate schedule of a run."""

from __future__ import annotations

import math
from typing import Any

import torch

from diamusic.config import ConfigError, TrainConfig
from diamusic.runs import default_device


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


def build_optimizer(
    config: TrainConfig, model: torch.nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (fused on a GPU) over the trainable parameters, or torchao's 8-bit AdamW (``optim.name``), with
    `lr_at`'s schedule."""
    o = config.optim
    groups = param_groups(model, o.weight_decay)
    if o.name == "adamw8bit":
        try:
            from torchao.optim import AdamW8bit
        except ImportError:
            raise ConfigError("optim.name adamw8bit needs the torchao package: pip install torchao") from None
        optimizer: torch.optim.Optimizer = AdamW8bit(groups, lr=o.lr, betas=(o.beta1, o.beta2))
    else:
        fused = default_device() == "cuda" or None
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), fused=fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, config))
