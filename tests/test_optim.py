"""The optimizer of a run: AdamW, or torchao's AdamW with 8-bit moments (optim.name adamw8bit)."""

import sys

import pytest
import torch

from diamusic.config import ConfigError, load_config
from diamusic.optim import build_optimizer


def model_and_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.LayerNorm(256), torch.nn.Linear(256, 64))
    x = torch.randn(16, 256)
    return model, lambda: model(x).pow(2).mean()


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """What the optimizer holds per weight, its 8-bit codes and their scales counted as stored."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if hasattr(value, "codes"):  # torchao's 8-bit moment: codes and a scale per block
                total += value.codes.numel() * value.codes.element_size() + value.scale.numel() * 4
            elif torch.is_tensor(value) and value.numel() > 1:
                total += value.numel() * value.element_size()
    return total


def test_adamw8bit_holds_its_moments_in_8_bits_and_follows_adamw(eager_torchao):
    """A quarter of AdamW's state bytes for the large weights, and the first steps land within a few percent
    of AdamW's (the 8-bit moments round; the direction of each update stays)."""
    moved = {}
    for name in ("adamw", "adamw8bit"):
        model, loss = model_and_loss()
        start = [p.detach().clone() for p in model.parameters()]
        config = load_config("tiny-cpu", overrides={"optim.name": name, "optim.warmup_steps": 0})
        optimizer, _ = build_optimizer(config, model)
        for _ in range(3):
            loss().backward()
            optimizer.step()
            optimizer.zero_grad()
        moved[name] = (torch.cat([(p.detach() - s).flatten() for p, s in zip(model.parameters(), start, strict=True)]),
                       optimizer)
    (full, adamw), (eight, adamw8bit) = moved["adamw"], moved["adamw8bit"]
    assert type(adamw8bit).__name__ == "AdamW8bit"
    assert state_bytes(adamw8bit) < 0.3 * state_bytes(adamw)
    assert torch.linalg.vector_norm(eight - full) < 0.05 * torch.linalg.vector_norm(full)


def test_adamw8bit_without_torchao_is_one_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.optim", None)  # what `import` meets where torchao is not installed
    model, _ = model_and_loss()
    with pytest.raises(ConfigError, match="optim.name adamw8bit needs the torchao package: pip install torchao"):
        build_optimizer(load_config("tiny-cpu", overrides={"optim.name": "adamw8bit"}), model)


def test_an_unknown_optimizer_is_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match="optim.name 'adamw8bt' \\(did you mean 'adamw8bit'\\?\\) must be one of"):
        load_config("tiny-cpu", overrides={"optim.name": "adamw8bt"})
