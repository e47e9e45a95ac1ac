"""Dia models: the audio vocabulary, text bytes, and building/loading DiaForConditionalGeneration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MAX_TEXT_BYTES = 1024  # Dia's encoder has 1024 positions


@dataclass(frozen=True)
class AudioVocab:
    """Decoder vocabulary: real codes 0..codebook_size-1, then EOS, PAD, BOS (Dia: 1024/1025/1026)."""

    codebook_size: int
    num_codebooks: int

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


def text_to_bytes(text: str, max_bytes: int = MAX_TEXT_BYTES) -> list[int]:
    """Dia's byte tokenizer: UTF-8 bytes, speaker tags [S1]/[S2] as bytes 1/2, truncated to max_bytes."""
    raw = text.replace("[S1]", "\x01").replace("[S2]", "\x02").encode("utf-8")
    return list(raw[:max_bytes])


def encode_text(
    texts: Sequence[str | None], max_bytes: int = MAX_TEXT_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
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
