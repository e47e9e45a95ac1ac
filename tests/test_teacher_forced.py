"""Teacher-forced evaluation: interior and edge targets, and the parts they split a loss into."""

import torch

from diamusic.config import load_config
from diamusic.data.dataset import CodesDataset
from diamusic.patterns import DelayPattern
from diamusic.teacher_forced import fixed_eval_batches, interior, teacher_forced
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


def test_every_seed_and_process_count_scores_the_same_clips(melody_dataset):
    train, held = CodesDataset(melody_dataset, "train"), CodesDataset(melody_dataset, "eval")
    pattern = DelayPattern.parse("dia")

    def rows(seed: int, world: int) -> dict[str, torch.Tensor]:
        config = load_config("tiny-cpu", overrides={"seed": seed, "batch_size": 2, "eval.clips": 5,
                                                    "data.crop_frames": 32})  # fmt: skip
        sets = fixed_eval_batches(config, train, held, pattern, world)
        assert all(len(b["labels"]) <= 2 * world for batches in sets.values() for b in batches)
        return {k: torch.cat([b["labels"] for b in batches]) for k, batches in sets.items()}

    one, other = rows(0, 1), rows(3, 2)
    assert len(one["eval/"]) == min(5, len(held)) and len(one["train_subset/"]) == len(one["eval/"])
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
