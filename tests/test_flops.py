import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diamusic.flops import forward_flops, peak_tflops, training_flops
from diamusic.model import build_model
from diamusic.patterns import DelayPattern
from diamusic.tokens import AudioVocab

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("preset", "batch", "text_tokens", "steps"),
    [("tiny", 2, 37, 120), ("tiny", 1, 1, 9), ("small", 3, 64, 50)],
)
def test_forward_flops_equal_torch_flop_counter(preset, batch, text_tokens, steps):
    # eager attention, so the counter sees attention's matmuls (it does not count fused SDPA kernels)
    model = build_model(preset, DelayPattern.parse("dia"), AudioVocab(1024, 9))
    model.set_attn_implementation("eager")
    ids = torch.randint(1, 255, (batch, text_tokens))
    inputs = torch.randint(0, 1024, (batch, steps, 9))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=inputs, use_cache=False)
    assert forward_flops(model.config, batch, text_tokens, steps) == counter.get_total_flops()


def test_training_flops_equal_torch_flop_counter_of_forward_and_backward():
    model = build_model("tiny", DelayPattern.parse("musicgen"), AudioVocab(64, 9))
    model.set_attn_implementation("eager")
    ids = torch.randint(1, 255, (2, 20))
    inputs = torch.randint(0, 64, (2, 30, 9))
    with FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=inputs, use_cache=False)
        out.logits.float().logsumexp(-1).sum().backward()
    assert training_flops(model.config, 2, 20, 30) == counter.get_total_flops()


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("NVIDIA L40S", 362.0),
        ("Tesla T4", None),
        ("cpu", None),
    ],
)
def test_peak_tflops_by_device_name(name, peak):
    assert peak_tflops(name) == peak
