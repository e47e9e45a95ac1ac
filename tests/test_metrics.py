import math

import pytest
import torch

from diamusic import metrics
from diamusic.metrics import LossNoise, TokenStats, split_logits, token_stats
from diamusic.model import build_model
from diamusic.patterns import DelayPattern
from diamusic.tokens import IGNORE_INDEX, AudioVocab, build_decoder_batch, encode_text

pytestmark = pytest.mark.usefixtures("one_thread")


def random_case(seed: int = 0, batch: int = 2, codebooks: int = 3, steps: int = 4, vocab: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, codebooks, steps, vocab, generator=g, dtype=torch.float64).float()
    labels = torch.randint(0, vocab, (batch, codebooks, steps), generator=g)
    labels[0, 1, 2] = labels[1, 0, 0] = labels[1, 2, 3] = IGNORE_INDEX
    return logits, labels


def test_loss_matches_hand_computed_cross_entropy_per_codebook():
    logits, labels = random_case()
    total, stats = token_stats(logits, labels, codebook_size=4)
    expected = torch.zeros(3, dtype=torch.float64)
    counts = torch.zeros(3)
    correct = torch.zeros(3)
    for b in range(2):
        for c in range(3):
            for t in range(4):
                y = int(labels[b, c, t])
                if y == IGNORE_INDEX:
                    continue
                row = logits[b, c, t].double()
                expected[c] += math.log(row.exp().sum()) - row[y]
                counts[c] += 1
                correct[c] += int(row.argmax()) == y
    torch.testing.assert_close(stats.loss_sum, expected, rtol=1e-6, atol=1e-6)
    assert stats.count.tolist() == counts.tolist() == [7, 7, 7]
    assert stats.correct.tolist() == correct.tolist()
    torch.testing.assert_close(total.double(), expected.sum(), rtol=1e-6, atol=1e-6)
    weights = torch.tensor([1.0, 0.5, 2.0])
    weighted, _ = token_stats(logits, labels, codebook_size=4, codebook_weights=weights)
    torch.testing.assert_close(weighted.double(), (expected * weights.double()).sum(), rtol=1e-6, atol=1e-6)
    summary = stats.summary("train/")
    assert summary["train/loss"] == pytest.approx(float(expected.sum() / 21))
    assert summary["train/loss/cb2"] == pytest.approx(float(expected[2] / 7))
    assert summary["train/accuracy/cb1"] == pytest.approx(float(correct[1] / 7))
    assert {f"train/{m}/cb{c}" for m in ("loss", "accuracy", "entropy") for c in range(3)} <= set(summary)


def test_flat_transformers_layout_is_accepted():
    logits, labels = random_case()
    flat = logits.reshape(2 * 3, 4, 7)
    assert torch.equal(split_logits(flat, 3), logits)
    a, sa = token_stats(logits, labels, 4)
    b, sb = token_stats(flat, labels, 4)
    assert torch.equal(a, b) and torch.equal(sa.loss_sum, sb.loss_sum)


def test_ignored_labels_contribute_nothing():
    logits, labels = random_case()
    logits.requires_grad_(True)
    total, stats = token_stats(logits, labels, codebook_size=4)
    total.backward()
    ignored = labels == IGNORE_INDEX
    assert logits.grad[ignored].abs().sum() == 0
    assert logits.grad[~ignored].abs().sum() > 0
    scrambled = logits.detach().clone()
    scrambled[ignored] = 100.0 * torch.randn_like(scrambled[ignored])
    total2, stats2 = token_stats(scrambled, labels, codebook_size=4)
    torch.testing.assert_close(total2, total.detach())
    for f in ("loss_sum", "count", "correct", "entropy_sum"):
        torch.testing.assert_close(getattr(stats2, f), getattr(stats, f))


def test_entropy_is_over_real_codes_only(monkeypatch):
    # uniform over the real codes, anything at all on the special ids: entropy = ln(codebook_size)
    logits = torch.zeros(2, 3, 5, 36)
    logits[..., 32:] = torch.randn(2, 3, 5, 4) * 10
    labels = torch.full((2, 3, 5), 32)
    labels[0, 0, :2] = IGNORE_INDEX
    _, stats = token_stats(logits, labels, codebook_size=32)
    assert stats.summary()["entropy"] == pytest.approx(math.log(32), abs=1e-6)
    assert stats.summary()["entropy/cb0"] == pytest.approx(math.log(32), abs=1e-6)
    # random logits, tiny chunks: same as a direct float64 computation
    logits, labels = random_case(seed=3)
    monkeypatch.setattr(metrics, "ENTROPY_CHUNK_ROWS", 2)
    _, stats = token_stats(logits, labels, codebook_size=4)
    p = torch.softmax(logits[..., :4].double(), -1)
    ent = -(p * p.log()).sum(-1).masked_fill(labels == IGNORE_INDEX, 0)
    torch.testing.assert_close(stats.entropy_sum, ent.sum(dim=(0, 2)))


def test_bf16_logits_give_a_float32_loss():
    logits, labels = random_case(seed=5)
    total, stats = token_stats(logits.bfloat16(), labels, codebook_size=4)
    assert total.dtype == torch.float32 and stats.loss_sum.dtype == torch.float64
    reference, _ = token_stats(logits.bfloat16().float(), labels, codebook_size=4)
    torch.testing.assert_close(total, reference)


def test_accumulated_micro_batches_equal_one_big_batch():
    """Sum of loss sums / total valid count over micro-batches == the loss of the whole batch."""
    vocab = AudioVocab(codebook_size=16, num_codebooks=9)
    pattern = DelayPattern.parse("musicgen")
    model = build_model("tiny", pattern, vocab).eval()
    g = torch.Generator().manual_seed(1)
    clips = [torch.randint(0, 16, (n, 9), generator=g) for n in (4, 6, 13)]
    texts = ["a", "bb bb", "a much longer caption"]

    def run(idx: list[int]) -> tuple[torch.Tensor, TokenStats]:
        decoder_input_ids, labels = build_decoder_batch([clips[i] for i in idx], pattern, vocab)
        input_ids, mask = encode_text([texts[i] for i in idx])
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)
        return token_stats(out.logits, labels, vocab.codebook_size)

    (la, sa), (lb, sb) = run([0, 1]), run([2])
    big_loss, big = run([0, 1, 2])
    acc = sa + sb
    assert acc.count.tolist() == big.count.tolist()
    torch.testing.assert_close((la + lb) / acc.count.sum(), big_loss / big.count.sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc.loss_sum, big.loss_sum, rtol=1e-5, atol=1e-5)
    assert acc.summary()["loss"] == pytest.approx(big.summary()["loss"], rel=1e-5)
    # averaging per micro-batch instead would weigh the 4- and 6-frame clips like the 13-frame one
    per_micro = (la / sa.count.sum() + lb / sb.count.sum()) / 2
    assert abs(float(per_micro - big_loss / big.count.sum())) > 1e-4


def test_stats_add_and_all_reduce(tmp_path):
    import torch.distributed as dist

    logits, labels = random_case()
    _, stats = token_stats(logits, labels, codebook_size=4)
    assert stats.all_reduce() is stats  # not initialised: a no-op
    zero = TokenStats.zeros(3)
    assert torch.equal((zero + stats).loss_sum, stats.loss_sum)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        reduced = stats.all_reduce()
    finally:
        dist.destroy_process_group()
    for f in ("loss_sum", "count", "correct", "entropy_sum"):
        assert torch.equal(getattr(reduced, f), getattr(stats, f))


def test_loss_noise_tracks_spread_around_the_trend_and_resumes():
    steady = LossNoise(alpha=0.1, window=20)
    for _ in range(30):
        value = steady.update(2.0)
    assert value == 0.0
    trend, noisy = LossNoise(alpha=0.3, window=20), LossNoise(alpha=0.3, window=20)
    for i in range(60):
        t = trend.update(5.0 - 0.01 * i)
        n = noisy.update(5.0 - 0.01 * i + (0.5 if i % 2 else -0.5))
    assert 0 < t < 0.05 < 0.3 < n

    a = LossNoise(alpha=0.2, window=5)
    losses = [3.0, 2.5, 2.9, 2.2, 2.6, 2.1, 2.4, 1.9, 2.3]
    for x in losses[:4]:
        a.update(x)
    b = LossNoise()
    b.load_state_dict(a.state_dict())
    assert [a.update(x) for x in losses[4:]] == [b.update(x) for x in losses[4:]]
    with pytest.raises(ValueError):
        LossNoise(alpha=0.0)
