"""Prepared datasets and the collate that turns codec frames into Dia's delayed decoder layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diamusic.model import AudioVocab
from diamusic.patterns import DelayPattern

IGNORE_INDEX = -100


def build_decoder_batch(
    codes: Sequence[torch.Tensor], pattern: DelayPattern, vocab: AudioVocab, eos_in_loss: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (T_i, C) per sample -> decoder inputs (B, S, C) and labels (B, C, S).

    Each sample is ``[BOS, frames..., EOS]`` then PAD, delayed by the pattern, so channel c's EOS
    lands ``delays[c]`` steps after channel 0's, exactly where generation expects it. Inputs are
    steps 0..S-1 and labels steps 1..S; BOS and PAD targets are ignored, so every real code and one
    EOS per channel count. S = max(T_i) + 1 + max_delay.
    """
    longest = max(c.shape[0] for c in codes)
    frames = torch.full((len(codes), longest + 2, pattern.num_codebooks), vocab.pad, dtype=torch.long)
    frames[:, 0] = vocab.bos
    for i, c in enumerate(codes):
        frames[i, 1 : 1 + c.shape[0]] = c
        frames[i, 1 + c.shape[0]] = vocab.eos
    steps = pattern.apply(frames, bos=vocab.bos, pad=vocab.pad)
    inputs, targets = steps[:, :-1], steps[:, 1:]
    ignored = (targets == vocab.pad) | (targets == vocab.bos)
    if not eos_in_loss:
        ignored |= targets == vocab.eos
    labels = targets.masked_fill(ignored, IGNORE_INDEX)
    return inputs.contiguous(), labels.transpose(1, 2).contiguous()
