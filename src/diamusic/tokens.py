"""The token rules, in one place: the audio vocabulary, text bytes, and the decoder layout that
training builds and generation follows.

A decoder sample is ``[BOS, frame 1 .. frame T, EOS]`` then PAD, delayed by the pattern, so
codebook c's EOS lands ``delays[c]`` decode steps after the reference codebook's (the pattern's first
with delay 0). Training predicts every real code and one EOS per codebook; BOS and PAD are never
targets. Generation samples real codes (and EOS on the reference codebook only) and forces everything
else: BOS before a codebook starts, its EOS ``delays[c]`` steps after the reference's, PAD after that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diamusic.patterns import DelayPattern, layout_name

MAX_TEXT_BYTES = 1024  # Dia's encoder has 1024 positions
TEXT_VOCAB = 256  # the encoder reads UTF-8 bytes
IGNORE_INDEX = -100  # a label that is not a target


@dataclass(frozen=True)
class AudioVocab:
    """Decoder vocabulary: real codes 0..codebook_size-1, then EOS, PAD, BOS (Dia: 1024/1025/1026),
    for ``num_codebooks`` codebooks per audio channel: one stream each, left's then right's in stereo."""

    codebook_size: int
    num_codebooks: int
    audio_channels: int = 1

    @classmethod
    def of_codec(cls, codec: dict[str, Any]) -> AudioVocab:
        """The vocabulary of codes a dataset card's (or run.json's) ``codec`` block describes."""
        return cls(codec["codebook_size"], codec["num_codebooks"], codec.get("audio_channels", 1))

    @property
    def num_streams(self) -> int:
        """Decoder token columns: transformers' ``num_channels``."""
        return self.num_codebooks * self.audio_channels

    @property
    def eos(self) -> int:
        return self.codebook_size

    @property
    def pad(self) -> int:
        return self.codebook_size + 1

    @property
    def bos(self) -> int:
        return self.codebook_size + 2

    @property
    def vocab_size(self) -> int:
        # Dia keeps one spare id (1028 = 1024 + 4)
        return self.codebook_size + 4


def describe_layout(vocab: AudioVocab) -> str:
    """'9 codebooks x 1024 codes, stereo': how a run's or a dataset's codes are laid out, for messages."""
    return f"{vocab.num_codebooks} codebooks x {vocab.codebook_size} codes, {layout_name(vocab.audio_channels)}"


# --- text ---------------------------------------------------------------------------------------


def text_to_bytes(text: str, max_bytes: int = MAX_TEXT_BYTES) -> list[int]:
    """Dia's byte tokenizer: UTF-8 bytes, speaker tags [S1]/[S2] as bytes 1/2, truncated to max_bytes."""
    raw = text.replace("[S1]", "\x01").replace("[S2]", "\x02").encode("utf-8")
    return list(raw[:max_bytes])


def encode_text(texts: Sequence[str | None], max_bytes: int = MAX_TEXT_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask), both (B, L) long, right-padded with byte 0.

    ``None`` is the unconditional input for classifier-free guidance: all-zero ids with only the
    first position attended. It is the same tensor whatever the batch's text length, so training
    dropout and inference agree on what "no text" looks like.
    """
    encoded = [text_to_bytes(t, max_bytes) if t is not None else [] for t in texts]
    length = max(1, max(len(e) for e in encoded))
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for i, e in enumerate(encoded):
        if e:
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, : len(e)] = 1
        else:
            mask[i, 0] = 1
    return ids, mask


# --- the decoder layout -------------------------------------------------------------------------


def build_decoder_batch(
    codes: Sequence[torch.Tensor],
    pattern: DelayPattern,
    vocab: AudioVocab,
    eos_in_loss: bool = True,
    ends: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (T_i, C) per sample -> decoder inputs (B, S, C) and labels (B, C, S).

    Inputs are decode steps 0..S-1 and labels steps 1..S; BOS and PAD targets are ignored, so every
    real code and one EOS per codebook count. A sample with ``ends[i]`` False gets no EOS: its music
    goes on after the crop. S = max(T_i) + 1 + max_delay.
    """
    longest = max(c.shape[0] for c in codes)
    frames = torch.full((len(codes), longest + 2, pattern.num_streams), vocab.pad, dtype=torch.long)
    frames[:, 0] = vocab.bos
    for i, c in enumerate(codes):
        frames[i, 1 : 1 + c.shape[0]] = torch.as_tensor(c, dtype=torch.long)
        if ends is None or ends[i]:
            frames[i, 1 + c.shape[0]] = vocab.eos
    steps = pattern.apply(frames, bos=vocab.bos, pad=vocab.pad)
    inputs, targets = steps[:, :-1], steps[:, 1:]
    ignored = (targets == vocab.pad) | (targets == vocab.bos)
    if not eos_in_loss:
        ignored |= targets == vocab.eos
    labels = targets.masked_fill(ignored, IGNORE_INDEX)
    return inputs.contiguous(), labels.transpose(1, 2).contiguous()


# --- what the decode loop samples and what it forces --------------------------------------------


def sampleable(vocab: AudioVocab, reference: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """(C, V) bool: the ids each codebook may *sample*: real codes, and EOS on the reference codebook
    (`DelayPattern.reference`) only.

    BOS, PAD, the spare id and the other codebooks' EOS are only ever forced by the delay rules
    (`force_delay_tokens`), so a codec never sees them.
    """
    allowed = torch.zeros(vocab.num_streams, vocab.vocab_size, dtype=torch.bool, device=device)
    allowed[:, : vocab.codebook_size] = True
    allowed[reference, vocab.eos] = True
    return allowed


def force_delay_tokens(
    sampled: torch.Tensor, step: int, eos_step: torch.Tensor, delays: torch.Tensor, vocab: AudioVocab
) -> torch.Tensor:
    """Decode step ``step``'s column (B, C) from the sampled ids and the delay rules.

    Codebook c is BOS while ``step <= delays[c]``; once the reference codebook (delay 0) has ended at
    decode step ``eos_step`` (-1 while it goes on), codebook c places its EOS at ``eos_step + delays[c]``
    and PAD after it: the layout `build_decoder_batch` trains on.
    """
    ended = (eos_step >= 0)[:, None]
    tail = step - eos_step[:, None] - delays[None, :]  # (B, C): 0 at codebook c's EOS step
    column = torch.where(ended & (tail == 0), vocab.eos, sampled)
    column = torch.where(ended & (tail > 0), vocab.pad, column)
    return torch.where(step <= delays[None, :], vocab.bos, column)
