"""Training metrics computed from Dia's logits: masked cross-entropy, accuracy and output entropy per
codebook, and the loss-noise tracker.

transformers returns logits flattened as (B*C, T, V) with its own single mean loss; we view them as
(B, C, T, V) and keep per-codebook *sums*, so that gradient accumulation and multi-GPU runs can
normalise by the number of valid targets in the whole accumulated batch (long and short clips then
weigh per token, not per micro-batch).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from diamusic.tokens import IGNORE_INDEX

ENTROPY_CHUNK_ROWS = 8192  # logit rows (of V) turned into float32 at a time for the entropy, at least one sample


@dataclass
class TokenStats:
    """Per-codebook sums over valid targets; every field is a (C,) float64 tensor."""

    loss_sum: torch.Tensor
    count: torch.Tensor
    correct: torch.Tensor
    entropy_sum: torch.Tensor

    @classmethod
    def zeros(cls, num_codebooks: int, device: torch.device | str | None = None) -> TokenStats:
        return cls(*(torch.zeros(num_codebooks, dtype=torch.float64, device=device) for _ in range(4)))

    def _tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def __add__(self, other: TokenStats) -> TokenStats:
        return TokenStats(*(a + b.to(a.device) for a, b in zip(self._tensors(), other._tensors(), strict=True)))

    def all_reduce(self) -> TokenStats:
        """Summed over processes when torch.distributed is initialised (no-op otherwise)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        packed = torch.stack(self._tensors())  # one collective instead of four
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return TokenStats(*packed.unbind(0))

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Pooled (over all valid targets) and per-codebook loss, accuracy and entropy."""
        loss, count, correct, entropy = (t.detach().cpu() for t in self._tensors())

        def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
            return float(num / den) if den > 0 else math.nan

        out = {
            f"{prefix}loss": ratio(loss.sum(), count.sum()),
            f"{prefix}accuracy": ratio(correct.sum(), count.sum()),
            f"{prefix}entropy": ratio(entropy.sum(), count.sum()),
        }
        for c in range(count.shape[0]):
            out[f"{prefix}loss/cb{c}"] = ratio(loss[c], count[c])
            out[f"{prefix}accuracy/cb{c}"] = ratio(correct[c], count[c])
            out[f"{prefix}entropy/cb{c}"] = ratio(entropy[c], count[c])
        return out


def split_logits(logits: torch.Tensor, num_codebooks: int) -> torch.Tensor:
    """transformers' (B*C, T, V) logits -> (B, C, T, V), a view (its rows are batch-major)."""
    rows, steps, vocab = logits.shape
    return logits.view(rows // num_codebooks, num_codebooks, steps, vocab)


def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    codebook_size: int,
    codebook_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, TokenStats]:
    """Masked cross-entropy of (B, C, T, V) logits against (B, C, T) labels (IGNORE_INDEX = skip).

    Returns the codebook-weighted *sum* of cross-entropy over valid targets (divide it by the valid
    count of the whole accumulated batch before backward) and detached per-codebook TokenStats.
    The cross-entropy is over the full vocabulary so EOS is learnable; the entropy is the model's
    uncertainty about which *real* code comes next (logits renormalised over the first
    codebook_size ids), so uniform over 1024 codes reads ln 1024 = 6.93 nats.
    """
    if logits.ndim == 3:  # accept transformers' flat layout too
        logits = split_logits(logits, labels.shape[1])
    batch, codebooks, steps, vocab = logits.shape
    if labels.shape != (batch, codebooks, steps):
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    flat = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1)

    # float32 log-softmax for bf16/fp16 logits (no copy when they are float32 already);
    # ignored rows come out as exactly 0
    per_token = F.cross_entropy(flat.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="none")
    loss_per_cb = per_token.view(batch, codebooks, steps).sum(dim=(0, 2))
    weights = loss_per_cb.new_ones(codebooks) if codebook_weights is None else codebook_weights.to(loss_per_cb)
    weighted = (loss_per_cb * weights).sum()

    with torch.no_grad():
        # sums over masks, no boolean indexing: nothing here makes the host wait for the device
        valid = labels != IGNORE_INDEX
        count = valid.sum(dim=(0, 2)).double()
        # argmax over the full vocabulary: predicting EOS where EOS is due is a correct prediction
        correct = ((logits.argmax(dim=-1) == labels) & valid).sum(dim=(0, 2)).double()
        entropy = _entropy_sums(logits, valid, codebook_size)
        stats = TokenStats(loss_per_cb.detach().double(), count, correct, entropy)
    return weighted, stats


def _entropy_sums(logits: torch.Tensor, valid: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per-codebook sum of entropies over real codes at valid positions, in float32 chunks of samples.

    Chunking bounds the temporary float32 copy (Dia-1.6B: V=1028, T up to 3072 per sample).
    """
    batch, codebooks, steps, _ = logits.shape
    sums = torch.zeros(codebooks, dtype=torch.float64, device=logits.device)
    per_chunk = max(1, ENTROPY_CHUNK_ROWS // (codebooks * steps))
    for start in range(0, batch, per_chunk):
        logp = torch.log_softmax(logits[start : start + per_chunk, ..., :codebook_size].float(), dim=-1)
        # xlogy-style: p*log p with p=0 contributes 0, never nan
        ent = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)
        sums += (ent * valid[start : start + per_chunk]).sum(dim=(0, 2)).double()
    return sums


class LossNoise:
    """The research log's loss "variance": std of the loss around its exponential moving average.

    ``ema`` follows the loss with smoothing ``alpha``; the noise is the root-mean-square of
    (loss - ema) over the last ``window`` updates, so a steady downward trend is not counted as
    noise the way a plain windowed std would count it.
    """

    def __init__(self, alpha: float = 0.05, window: int = 100) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"LossNoise alpha must be in (0, 1], got {alpha}")
        if window < 2:
            raise ValueError(f"LossNoise window must be >= 2, got {window}")
        self.alpha, self.window = alpha, window
        self.ema: float | None = None
        self.residuals: deque[float] = deque(maxlen=window)

    def update(self, loss: float) -> float:
        loss = float(loss)
        self.ema = loss if self.ema is None else self.alpha * loss + (1 - self.alpha) * self.ema
        self.residuals.append(loss - self.ema)
        return self.value

    @property
    def value(self) -> float:
        if len(self.residuals) < 2:
            return 0.0
        return math.sqrt(sum(r * r for r in self.residuals) / len(self.residuals))

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "window": self.window, "ema": self.ema, "residuals": list(self.residuals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.window, self.ema = float(state["alpha"]), int(state["window"]), state["ema"]
        self.residuals = deque((float(r) for r in state["residuals"]), maxlen=self.window)
