"""Model FLOPs of Dia from its config, and the bf16 peak of known GPUs: what MFU is measured with.

Counting follows PaLM's appendix B (and nanoGPT): 2 FLOPs per multiply-add of every matmul with a
weight, plus attention's two matmuls (scores, weighted values) over the full query x key grid
(causal masking is not subtracted); a training step is 3 forwards (the backward is two; with LoRA
or a frozen encoder fewer are done, so their MFU reads high). Embedding lookups, norms, softmax and
the loss are left out. The shapes are the ones computed, padding included: with crops of one
length, only the captions' padding to the batch's longest counts.
"""

from __future__ import annotations

from typing import Any

# dense bf16 tensor-core peaks (no sparsity) from NVIDIA's data sheets, TFLOP/s; matched in order
# against torch.cuda.get_device_name(), so the more specific names come first
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name, or None for one we do not know (and for CPUs)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def forward_flops(config: Any, batch: int, text_tokens: int, decoder_steps: int) -> int:
    """FLOPs of one forward of a DiaConfig on ``batch`` samples of ``text_tokens`` bytes (padded
    length) and ``decoder_steps`` decoder positions."""
    enc, dec = config.encoder_config, config.decoder_config
    L, S = text_tokens, decoder_steps

    d, q, kv = enc.hidden_size, enc.num_attention_heads * enc.head_dim, enc.num_key_value_heads * enc.head_dim
    encoder_weights = d * q + 2 * d * kv + q * d + 3 * d * enc.intermediate_size  # gated MLP: in x2, out
    encoder = enc.num_hidden_layers * (2 * L * encoder_weights + 4 * L * L * q)

    D, hd = dec.hidden_size, dec.head_dim
    q, kv = dec.num_attention_heads * hd, dec.num_key_value_heads * hd
    cq, ckv = dec.cross_num_attention_heads * dec.cross_head_dim, dec.cross_num_key_value_heads * dec.cross_head_dim
    per_frame = D * q + 2 * D * kv + q * D + D * cq + cq * D + 3 * D * dec.intermediate_size
    per_text = 2 * dec.cross_hidden_size * ckv  # cross-attention keys and values: once per text byte
    attention = 4 * S * S * q + 4 * S * L * cq
    decoder = dec.num_hidden_layers * (2 * S * per_frame + 2 * L * per_text + attention)
    head = 2 * S * D * dec.num_channels * dec.vocab_size  # one vocabulary per codebook (`num_channels`)
    return batch * (encoder + decoder + head)


def training_flops(config: Any, batch: int, text_tokens: int, decoder_steps: int) -> int:
    """FLOPs of one forward and backward."""
    return 3 * forward_flops(config, batch, text_tokens, decoder_steps)
