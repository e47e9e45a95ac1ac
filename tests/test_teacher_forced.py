"""Teacher-forced evaluation: interior and edge targets, and the parts they split a loss into."""

import pytest
import torch

from diamusic.config import load_config
from diamusic.data.dataset import CodesDataset
from diamusic.patterns import DelayPattern
from diamusic.teacher_forced import fixed_eval_batches, interior, interior_edge, teacher_forced
from diamusic.tokens import IGNORE_INDEX, AudioVocab, build_decoder_batch

VOCAB = AudioVocab(codebook_size=32, num_codebooks=9)


def test_interior_targets_are_the_frames_away_from_both_crop_ends():
    pattern = DelayPattern.parse("dia")
    codes = [torch.randint(0, 32, (40, 9)), torch.randint(0, 32, (25, 9))]
    _, labels = build_decoder_batch(codes, pattern, VOCAB, ends=[True, False])
    inside = interior(labels, pattern, VOCAB, edge=5)
    # per codebook: frames 5..34 of the 40-frame crop and 5..19 of the 25-frame one
    assert inside[0].sum(-1).tolist() == [30] * 9 and inside[1].sum(-1).tolist() == [15] * 9
    assert not (labels[inside] == VOCAB.eos).any()  # EOS is a target at the end: always edge
    assert not inside[labels == IGNORE_INDEX].any()
    assert interior(labels, pattern, VOCAB, edge=0).sum() == (labels[:, :, :] != IGNORE_INDEX).sum() - 9


def _context_is_whole(inputs: torch.Tensor, labels: torch.Tensor, inside: torch.Tensor) -> bool:
    """Whether every target marked inside has, among the inputs it is predicted from (decode steps
    0..s), a real code of every codebook and no PAD or EOS."""
    real = inputs < VOCAB.codebook_size  # (B, S, C)
    seen_real = real.cummax(dim=1).values.all(-1)  # (B, S): every codebook has had a real code by step s
    clean = ~((inputs == VOCAB.pad) | (inputs == VOCAB.eos)).any(-1).cummax(dim=1).values  # (B, S)
    whole = (seen_real & clean)[:, None, :].expand_as(inside)  # the same context for every codebook's target
    return bool(whole[inside].all())


@pytest.mark.parametrize("name", ["dia", "musicgen", "compressed", "parallel"])
def test_interior_targets_at_the_default_edge_have_every_codebook_in_context(name):
    pattern = DelayPattern.parse(name)
    codes = [torch.randint(0, 32, (40, 9)), torch.randint(0, 32, (29, 9))]
    inputs, labels = build_decoder_batch(codes, pattern, VOCAB, ends=[True, False])
    edge = interior_edge([pattern])
    assert edge == pattern.max_delay + 1
    inside = interior(labels, pattern, VOCAB, edge)
    assert inside.any() and _context_is_whole(inputs, labels, inside)
    if pattern.max_delay > 0:  # one frame less and codebook 0's first interior frame sees only BOS in the last codebook
        assert not _context_is_whole(inputs, labels, interior(labels, pattern, VOCAB, edge - 1))


def test_every_seed_and_process_count_scores_the_same_clips(melody_dataset):
    train, held = CodesDataset(melody_dataset, "train"), CodesDataset(melody_dataset, "eval")
    pattern = DelayPattern.parse("dia")

    def rows(seed: int, world: int) -> dict[str, torch.Tensor]:
        # 3 of the 5 eval clips: a choice that could depend on the seed (all 5 would hide it)
        config = load_config("tiny-cpu", overrides={"seed": seed, "batch_size": 2, "eval.clips": 3,
                                                    "data.crop_frames": 32})  # fmt: skip
        sets = fixed_eval_batches(config, train, held, pattern, world)
        assert all(len(b["labels"]) <= 2 * world for batches in sets.values() for b in batches)
        return {k: torch.cat([b["labels"] for b in batches]) for k, batches in sets.items()}

    one, other = rows(0, 1), rows(3, 2)
    assert len(held) > 3 and len(one["eval/"]) == 3 and len(one["train_subset/"]) == 3
    for key in one:
        assert torch.equal(one[key], other[key]), key


def test_edge_and_interior_split_the_targets(tiny_run):
    from diamusic.runs import load_run

    run = load_run(tiny_run, device="cpu")
    config = load_config("tiny-cpu", overrides={"batch_size": 4, "eval.clips": 4, "data.crop_frames": 32})
    data = run.info["dataset"]
    batches = fixed_eval_batches(config, CodesDataset(data, "train"), CodesDataset(data, "eval"), run.pattern)["eval/"]
    parts = teacher_forced(run.model, batches, run.pattern, run.vocab, edge=8)
    whole, inner, edge = parts[""], parts["interior/"], parts["edge/"]
    torch.testing.assert_close(inner.count + edge.count, whole.count)
    # per-codebook sums of float32 losses, added in another order: equal to float32 rounding
    torch.testing.assert_close(inner.loss_sum + edge.loss_sum, whole.loss_sum, rtol=1e-6, atol=0)
    assert 0 < inner.count.sum() < whole.count.sum()
