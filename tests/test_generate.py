import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import diamusic.generate as decoding
from diamusic.generate import (
    DecodeOptions,
    GenerationError,
    SamplingConfig,
    generate_codes,
    guide,
    longest_cap,
    nucleus,
    prompt_codes,
    sample_logits,
)
from diamusic.metrics import token_stats
from diamusic.model import build_model, load_pretrained, vocab_of
from diamusic.patterns import PRESETS, DelayPattern
from diamusic.tokens import IGNORE_INDEX, AudioVocab, build_decoder_batch, encode_text

VOCAB = AudioVocab(codebook_size=32, num_codebooks=9)
GREEDY = {"cfg_scale": 1.0, "temperature": 0.0}
DIAMUSIC = str(Path(sys.executable).parent / "diamusic")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(pattern: str, seed: int = 0, vocab: AudioVocab = VOCAB):
    return build_model("tiny", DelayPattern.parse(pattern), vocab, seed=seed)


def edit_logits(model, edit: Callable[[int, torch.Tensor], None]):
    """Hook the LM head: edit(step, logits (rows, C, V)) may change the logits of decode step `step`."""
    calls = {"step": 0}

    def hook(module, args, out):
        calls["step"] += 1
        logits = out.view(out.shape[0], VOCAB.num_codebooks, VOCAB.vocab_size)
        edit(calls["step"], logits)
        return out

    return model.logits_dense.register_forward_hook(hook)


def lively(pattern: str, seed: int, vocab: AudioVocab = VOCAB):
    """A tiny model whose weight matrices are scaled up 4x. An untrained one repeats a code with an EOS
    margin that barely moves, so an EOS boost ends every sample at step 1 or never; this one varies."""
    model = tiny(pattern, seed=seed, vocab=vocab)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim == 2:
                weight.mul_(4.0)
    return model


def boost_eos(model, boost: float):
    """Add a constant to EOS on every row and codebook: stateless, so our loop and transformers' see the same logits."""

    vocab = vocab_of(model)

    def hook(module, args, out):
        out.view(*out.shape[:-1], vocab.num_codebooks, vocab.vocab_size)[..., vocab.eos] += boost  # any length

    return model.logits_dense.register_forward_hook(hook)


def eos_frames(delayed: torch.Tensor, vocab: AudioVocab = VOCAB) -> list[int]:
    """Frames per sample of a (B, steps, C) delayed sequence: codebook 0's EOS at step e means e - 1 frames."""
    return [int((row[:, 0] == vocab.eos).nonzero()[0]) - 1 for row in delayed]


def hf_generate(
    model,
    texts: list[str],
    pattern: DelayPattern,
    max_frames: int,
    guidance_scale: float | None = None,
    top_k: int | None = None,
    vocab: AudioVocab = VOCAB,
) -> torch.Tensor:
    """transformers' greedy Dia generation set up like DiaProcessor's generation mode (no audio prompt)."""
    input_ids, attention_mask = encode_text(texts)
    batch = len(texts)
    # the processor's "delay mask": codebook c is BOS for steps 0..d_c and free (PAD) after
    first = torch.full((batch, 1, pattern.num_codebooks), vocab.bos, dtype=torch.long)
    delay_mask = pattern.apply(first, bos=vocab.bos, pad=vocab.pad)  # (B, 1 + max_delay, C)
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=delay_mask,
        decoder_attention_mask=torch.ones(batch, delay_mask.shape[1], dtype=torch.long),
        do_sample=False,
        # Dia's CFG processor takes its filter's k from top_k even when greedy (transformers warns that
        # greedy ignores top_k; its Dia generation does not)
        guidance_scale=guidance_scale,
        top_k=top_k,
        # transformers counts the delay tail and codebook 0's EOS step: frames = N - max_delay - 1
        max_new_tokens=pattern.decode_steps(max_frames),
    )


# --- (1) parity with transformers -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["dia", "musicgen"])
def test_greedy_matches_transformers_generate(name, tmp_path):
    """Both return the full delayed step sequence (B, 1 + steps, C), BOS step first, with the delay
    mask applied: we compare it token for token, which also pins the BOS/EOS/PAD layout."""
    pattern = DelayPattern.parse(name)
    lively(name, seed=1).save_pretrained(tmp_path)
    model, _ = load_pretrained(str(tmp_path), pattern, VOCAB)
    texts = ["a jig in D major, 6/8", "slow air"]  # different lengths: the text mask matters
    hook = boost_eos(model, 1.5)  # the first sample ends on its own EOS, the second runs to the cap
    ours = generate_codes(model, texts, pattern, VOCAB, SamplingConfig(max_frames=10, **GREEDY))
    theirs = hf_generate(model, texts, pattern, max_frames=10)
    hook.remove()
    assert ours.delayed.shape == theirs.shape
    assert torch.equal(ours.delayed, theirs)
    # the lengths as transformers' own output has them (at the cap codebook 0 is forced to EOS)
    frames = eos_frames(theirs)
    assert frames[0] < frames[1] == 10
    assert ours.frames == frames and [len(c) for c in ours.codes] == frames
    assert ours.stopped_on_eos == [True, False]


@pytest.mark.parametrize(
    ("top_k", "codebook_size", "boost"), [(2, 32, 3.0), (3, 32, 3.0), (4, 32, 3.0), (5, 32, 3.0), (45, 64, 1.0)]
)
@pytest.mark.parametrize("name", ["dia", "musicgen"])
def test_greedy_cfg_filter_matches_transformers_when_special_ids_take_top_k_slots(name, top_k, codebook_size, boost):
    """Dia and transformers take the CFG filter's top-k over the whole vocabulary and only then mask the
    special ids, so an EOS ranked in it uses up a slot; greedy decoding exposes any other order.
    (Dia's default k of 45 needs more than 45 ids, so that case runs on 64 codes.)"""
    pattern = DelayPattern.parse(name)
    vocab = AudioVocab(codebook_size=codebook_size, num_codebooks=9)
    model = lively(name, seed=1, vocab=vocab)
    texts = ["a jig in D major, 6/8", "slow air"]
    hook = boost_eos(model, boost)  # EOS often in the top-k on every codebook, and it ends codebook 0 at times
    sampling = SamplingConfig(max_frames=20, cfg_scale=3.0, cfg_filter_top_k=top_k, temperature=0.0)
    ours = generate_codes(model, texts, pattern, vocab, sampling)
    # (transformers' unconditional rows are zero bytes under the text's mask, ours zero bytes with one
    # position attended: all-zero rows encode the same state everywhere and cross-attention has no RoPE)
    theirs = hf_generate(model, texts, pattern, 20, guidance_scale=3.0, top_k=top_k, vocab=vocab)
    hook.remove()
    assert ours.delayed.shape == theirs.shape
    assert torch.equal(ours.delayed, theirs)
    frames = eos_frames(theirs, vocab)
    assert ours.frames == frames
    assert frames[0] != frames[1] and min(frames) < 20 and any(ours.stopped_on_eos)


@pytest.mark.parametrize("cfg", [None, 3.0], ids=["greedy", "cfg"])
@pytest.mark.parametrize("name", ["dia", "musicgen"])
def test_a_prompt_continues_as_transformers_generate_continues_the_processors_layout(name, cfg):
    """An audio prompt's codes as DiaProcessor(audio=...) lays them out (BOS, then the frames under the
    pattern, PAD where a codebook runs past them) and continued by transformers' generate."""
    pattern = DelayPattern.parse(name)
    model = lively(name, seed=2)
    texts = ["a jig in D major, 6/8", "slow air"]
    prompt = torch.randint(0, VOCAB.codebook_size, (2, 5, 9), generator=torch.Generator().manual_seed(0))
    hook = boost_eos(model, 1.5)  # samples stop at different steps
    sampling = SamplingConfig(max_frames=12, cfg_scale=cfg or 1.0, cfg_filter_top_k=5, temperature=0.0)
    ours = generate_codes(model, texts, pattern, VOCAB, sampling, prompt=prompt.numpy())
    input_ids, attention_mask = encode_text(texts)
    # DiaProcessor.__call__'s steps after encoding the audio: BOS + codes, PAD to the delay's length, delayed
    from transformers import DiaProcessor

    steps = 1 + 5 + pattern.max_delay
    prefill = torch.full((2, steps, 9), VOCAB.pad, dtype=torch.int)
    prefill[:, : 1 + 5] = torch.cat([torch.full((2, 1, 9), VOCAB.bos), prompt], 1)
    index = DiaProcessor.build_indices(bsz=2, seq_len=steps, num_channels=9, delay_pattern=pattern.delays, revert=False)
    layout = DiaProcessor.apply_audio_delay(prefill, VOCAB.pad, VOCAB.bos, index).long()
    theirs = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=layout,
        decoder_attention_mask=torch.ones(layout.shape[:2], dtype=torch.long),
        do_sample=False,
        guidance_scale=cfg,
        top_k=5 if cfg else None,
        max_new_tokens=pattern.decode_steps(12),
    )
    hook.remove()
    assert ours.delayed.shape == theirs.shape and torch.equal(ours.delayed, theirs)
    assert [f + 5 for f in ours.frames] == eos_frames(theirs) and ours.frames[0] != ours.frames[1]
    frames = pattern.revert(theirs[:, 1:])  # the continuation is what follows the prompt's 5 frames
    for b, codes in enumerate(ours.codes):
        assert torch.equal(torch.as_tensor(codes), frames[b, 5 : 5 + len(codes)])


@pytest.mark.parametrize("name", ["dia", "musicgen", "reverse", "middle-out"])
def test_a_prompt_of_a_generations_first_frames_continues_it_exactly(name):
    """Greedy decoding prompted with the first 5 frames of its own unprompted clip returns that clip's
    other frames: the prompt's frames sit where the decode loop would have put them, on any pattern."""
    pattern = DelayPattern.parse(name)
    model = lively(name, seed=3)
    whole = generate_codes(model, ["a reel in A"], pattern, VOCAB, SamplingConfig(max_frames=14, **GREEDY))
    assert whole.frames[0] > 5
    prompted = generate_codes(
        model, ["a reel in A"], pattern, VOCAB, SamplingConfig(max_frames=9, **GREEDY), prompt=whole.codes[0][:5]
    )
    np.testing.assert_array_equal(prompted.codes[0], whole.codes[0][5:])
    assert prompted.stopped_on_eos == whole.stopped_on_eos


def test_a_prompt_that_cannot_be_continued_is_one_line():
    model, pattern = tiny("musicgen"), DelayPattern.parse("musicgen")
    sampling = SamplingConfig(max_frames=4, **GREEDY)
    cases = {
        "a prompt must be codes of shape \\(frames, 9\\)": np.zeros((5, 8), dtype=np.int64),
        "codes must be in \\[0, 32\\)": np.full((5, 9), VOCAB.pad),
        "leaves nothing to generate": np.zeros((longest_cap(model, pattern), 9), dtype=np.int64),
        "after a prompt of 200 frames needs": np.zeros((200, 9), dtype=np.int64),
    }
    for message, prompt in cases.items():
        big = SamplingConfig(max_frames=longest_cap(model, pattern) - 100, **GREEDY) if "200" in message else sampling
        with pytest.raises(GenerationError, match=message):
            generate_codes(model, ["a jig"], pattern, VOCAB, big, prompt=prompt)


# --- (2) memorisation -----------------------------------------------------------------------------

CLIP_FRAMES = (18, 20, 22)
CAPTIONS = ["a lively jig in D major", "a slow air in E minor", "a march in G major, 2/4"]


def memorise(pattern: DelayPattern, vocab: AudioVocab, clips: list[torch.Tensor], margin: float) -> torch.nn.Module:
    """A tiny model trained on CAPTIONS -> clips until every target (EOS included) is its top
    prediction and the mean loss is below ``margin``, so the step just taken cannot undo one."""
    model = build_model("tiny", pattern, vocab, seed=0)
    decoder_input_ids, labels = build_decoder_batch(clips, pattern, vocab)
    input_ids, attention_mask = encode_text(CAPTIONS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(300):
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        loss_sum, stats = token_stats(out.logits, labels, vocab.codebook_size)
        loss = loss_sum / stats.count.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if stats.correct.sum() == stats.count.sum() and loss.item() < margin:
            break
    return model


@pytest.mark.integration  # training to convergence
@pytest.mark.parametrize("name", list(PRESETS))
def test_memorised_clips_come_back_exactly(name):
    pattern = DelayPattern.parse(name)
    g = torch.Generator().manual_seed(0)
    clips = [torch.randint(0, VOCAB.codebook_size, (n, 9), generator=g) for n in CLIP_FRAMES]
    model = memorise(pattern, VOCAB, clips, margin=0.05)
    result = generate_codes(model, CAPTIONS, pattern, VOCAB, SamplingConfig(max_frames=40, **GREEDY))
    assert result.stopped_on_eos == [True, True, True]
    assert result.frames == list(CLIP_FRAMES)
    for got, clip in zip(result.codes, clips, strict=True):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, clip.numpy())
    # the generated step sequence is exactly the training layout (inputs + the last step)
    steps, _ = build_decoder_batch(list(map(torch.from_numpy, result.codes)), pattern, VOCAB)
    assert torch.equal(result.delayed[:, :-1], steps)
    # ...and transformers' generate agrees on a model that really stops (EOS staggering included), for
    # the patterns it can run: it takes codebook 0 as the reference, reverse and middle-out delay it
    if pattern.reference == 0:
        assert torch.equal(hf_generate(model, CAPTIONS, pattern, max_frames=40), result.delayed)


STEREO = AudioVocab(VOCAB.codebook_size, 9, audio_channels=2)


@pytest.mark.integration  # training to convergence
@pytest.mark.parametrize("name", ["dia", "reverse", "middle-out"])
def test_memorised_stereo_clips_come_back_exactly_and_stop_on_eos(name):
    """18 streams, the pattern repeated per side, sides that differ: a tiny model that learned three
    clips gives them back, both sides, and stops on the reference codebook's EOS (not at the cap)."""
    pattern = DelayPattern.parse(name, num_codebooks=9, audio_channels=2)
    g = torch.Generator().manual_seed(1)
    clips = [torch.randint(0, STEREO.codebook_size, (n, 18), generator=g) for n in CLIP_FRAMES]
    model = memorise(pattern, STEREO, clips, margin=0.02)  # 18 streams: more targets near the margin
    result = generate_codes(model, CAPTIONS, pattern, STEREO, SamplingConfig(max_frames=40, **GREEDY))
    assert result.stopped_on_eos == [True, True, True] and result.frames == list(CLIP_FRAMES)
    for got, clip in zip(result.codes, clips, strict=True):
        np.testing.assert_array_equal(got, clip.numpy())


# --- (3) EOS staggering and the length cap --------------------------------------------------------


@pytest.mark.parametrize("name", ["dia", "compressed", "reverse", "middle-out"])
def test_eos_on_the_reference_codebook_staggers_the_others(name):
    pattern = DelayPattern.parse(name)
    model = tiny(name)
    eos_at = 7

    def force_eos(step, logits):
        logits[:, :, VOCAB.eos] = -1e4  # never before...
        if step == eos_at:
            # ...then at step 7 every codebook ranks EOS first: only the reference (the undelayed
            # codebook: 0 for dia, 8 for reverse, 4 for middle-out) may take it
            logits[:, :, VOCAB.eos] = 1e4

    hook = edit_logits(model, force_eos)
    result = generate_codes(model, ["x", "yy"], pattern, VOCAB, SamplingConfig(max_frames=30, temperature=1.0))
    hook.remove()
    assert result.frames == [eos_at - 1] * 2 and result.stopped_on_eos == [True, True]
    assert result.decode_steps == eos_at + pattern.max_delay
    seq = result.delayed
    for c, d in enumerate(pattern.delays):
        column = seq[:, :, c]
        assert (column[:, : d + 1] == VOCAB.bos).all()  # BOS while s <= d_c
        assert (column[:, eos_at + d] == VOCAB.eos).all()
        assert (column[:, eos_at + d + 1 :] == VOCAB.pad).all()
        assert (column[:, d + 1 : eos_at + d] < VOCAB.codebook_size).all()
    # the same layout build_decoder_batch trains on: every valid label is reproduced
    inputs, labels = build_decoder_batch(list(map(torch.from_numpy, result.codes)), pattern, VOCAB)
    assert torch.equal(seq[:, :-1], inputs)
    valid = labels != IGNORE_INDEX
    assert torch.equal(seq[:, 1:].transpose(1, 2)[valid], labels[valid])
    assert [c.shape for c in result.codes] == [(eos_at - 1, 9)] * 2


def test_length_cap_forces_eos_and_completes_the_tail():
    pattern = DelayPattern.parse("musicgen")
    model = tiny("musicgen")
    hook = edit_logits(model, lambda step, logits: logits[:, 0, VOCAB.eos].fill_(-1e4))
    result = generate_codes(model, ["never ends"], pattern, VOCAB, SamplingConfig(max_frames=5, **GREEDY))
    hook.remove()
    assert result.frames == [5] and result.stopped_on_eos == [False]
    assert result.decode_steps == pattern.decode_steps(5)
    eos_steps = [int((result.delayed[0, :, c] == VOCAB.eos).nonzero()) for c in range(9)]
    assert eos_steps == [6 + d for d in pattern.delays]


def test_samples_end_independently_in_a_batch():
    pattern = DelayPattern.parse("dia")
    model = tiny("dia")

    def first_sample_stops_at_4(step, logits):
        logits[:, 0, VOCAB.eos] = -1e4
        if step == 4:
            logits[0, 0, VOCAB.eos] = 1e4

    hook = edit_logits(model, first_sample_stops_at_4)
    result = generate_codes(model, ["a", "b"], pattern, VOCAB, SamplingConfig(max_frames=9, **GREEDY))
    hook.remove()
    assert result.frames == [3, 9] and result.stopped_on_eos == [True, False]
    assert [c.shape[0] for c in result.codes] == [3, 9]


# --- (4) only real codes reach the codec ----------------------------------------------------------


@pytest.mark.parametrize("top_k", [45, None])
def test_sampled_tokens_are_real_codes_even_when_specials_are_likely(top_k):
    pattern = DelayPattern.parse("dia")
    model = tiny("dia", seed=2)

    def push_specials(step, logits):
        logits[:, :, VOCAB.pad :] += 20.0  # PAD, BOS and the spare id look best everywhere
        logits[:, 1:, VOCAB.eos] += 20.0  # and EOS on the codebooks that must never choose it

    hook = edit_logits(model, push_specials)
    sampling = SamplingConfig(max_frames=12, cfg_scale=3.0, cfg_filter_top_k=top_k, temperature=1.3, seed=4)
    result = generate_codes(model, ["a", "b", "c"], pattern, VOCAB, sampling)
    hook.remove()
    for codes, frames in zip(result.codes, result.frames, strict=True):
        assert codes.shape == (frames, 9)
        assert codes.min() >= 0 and codes.max() < VOCAB.codebook_size
    # specials appear only where the delay rules put them
    seq = result.delayed
    for c, d in enumerate(pattern.delays):
        assert (seq[:, : d + 1, c] == VOCAB.bos).all()
        assert not (seq[:, d + 1 :, c] == VOCAB.bos).any()
        assert ((seq[:, :, c] == VOCAB.eos).sum(dim=1) == 1).all()


def test_cfg_uses_the_training_unconditional_input_and_is_skipped_at_scale_1():
    pattern = DelayPattern.parse("musicgen")
    model = tiny("musicgen")
    seen = []
    hook = model.get_encoder().register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    generate_codes(model, ["a tune", "b"], pattern, VOCAB, SamplingConfig(max_frames=2, cfg_scale=3.0))
    generate_codes(model, ["a tune", "b"], pattern, VOCAB, SamplingConfig(max_frames=2, cfg_scale=1.0))
    hook.remove()
    expected_ids, expected_mask = encode_text(["a tune", "b", None, None])
    assert torch.equal(seen[0]["input_ids"], expected_ids) and torch.equal(seen[0]["attention_mask"], expected_mask)
    assert seen[1]["input_ids"].shape[0] == 2


def test_guidance_formula_and_dia_filter():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, 36, generator=g), torch.randn(2, 3, 36, generator=g)
    cond[0, :, VOCAB.pad] += 10.0  # PAD leads sample 0's guided logits
    allowed = torch.zeros(3, 36, dtype=torch.bool)
    allowed[:, :32] = True
    guided = cond + 3.0 * (cond - uncond)
    plain = guide(cond, uncond, 3.0, None, allowed)
    torch.testing.assert_close(plain[..., :32], guided[..., :32])
    assert torch.isinf(plain[..., 32:]).all()
    filtered = guide(cond, uncond, 3.0, 5, allowed)
    kept = torch.isfinite(filtered)
    # the candidates are the guided top 5 over the whole vocabulary, and only then are the special ids
    # dropped: PAD uses up one of sample 0's slots (Dia's and transformers' order)
    top5 = torch.zeros_like(kept).scatter(-1, guided.topk(5, dim=-1).indices, True)
    assert torch.equal(kept, top5 & allowed)
    assert kept.sum(-1).tolist() == [[4, 4, 4], [5, 5, 5]]
    assert torch.equal(filtered[kept], cond[kept])  # the values come from the conditional logits
    # every slot taken by a special id: code 0 is left, the id Dia's greedy argmax over all -inf returns
    crowded = cond.clone()
    crowded[..., 32:] += 10.0
    only = torch.isfinite(guide(crowded, uncond, 3.0, 2, allowed))
    assert only[..., 0].all() and only.sum().item() == 6


# --- (5) seeds ------------------------------------------------------------------------------------


def test_same_seed_same_codes_and_different_seeds_differ():
    pattern = DelayPattern.parse("compressed")
    model = tiny("compressed")

    def run(seed: int) -> list[np.ndarray]:
        sampling = SamplingConfig(max_frames=10, temperature=1.0, top_p=0.95, seed=seed)
        return generate_codes(model, ["a", "b"], pattern, VOCAB, sampling).codes

    first, again, other = run(5), run(5), run(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# --- (6) temperature and top-p ---------------------------------------------------------------------


def test_temperature_below_one_sharpens_the_sampled_distribution():
    logits = torch.linspace(0.0, 3.0, 8)
    g = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0):
        draws = sample_logits(logits.expand(40_000, 8), temperature, None, g)
        freq = torch.bincount(draws, minlength=8).float() / draws.numel()
        expected = torch.softmax(logits / temperature, -1)
        assert (freq - expected).abs().max() < 0.01
    assert (torch.softmax(logits / 0.5, -1) - torch.softmax(logits, -1)).abs().max() > 0.1
    assert torch.equal(sample_logits(logits.expand(3, 8), 0.0, None, g), torch.full((3,), 7))
    in_nucleus = sample_logits(logits.expand(5000, 8), 1.0, 0.5, g)
    # sorted probabilities 0.36, 0.235, 0.153...: the first two are the smallest set covering 0.5
    assert set(in_nucleus.tolist()) == {6, 7}


def dia_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """nari-labs Dia's nucleus (dia/model.py, _sample_next_token), on probabilities."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    remove = torch.roll(sorted_probs.cumsum(dim=-1) > top_p, shifts=1, dims=-1)
    remove[..., 0] = False
    return probs.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), 0.0)


def test_top_p_keeps_a_token_whose_predecessors_cover_exactly_top_p():
    # powers of two: every partial sum is exact, so the mass above 0.125 is exactly 0.75
    probs = torch.tensor([0.0625, 0.25, 0.125, 0.5, 0.0625])
    assert torch.equal(nucleus(probs, 0.75), torch.tensor([0.0, 0.25, 0.125, 0.5, 0.0]))
    assert torch.equal(nucleus(probs, 0.75), dia_top_p(probs, 0.75))
    assert torch.equal(nucleus(probs, 0.5), torch.tensor([0.0, 0.25, 0.0, 0.5, 0.0]))
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(64, 36, generator=g), dim=-1)
    for top_p in (0.3, 0.9, 0.99):
        assert torch.equal(nucleus(probs, top_p), dia_top_p(probs, top_p))


def test_temperature_is_honoured_inside_generate():
    """Fixed logits for every step: the sampled codes follow softmax(logits / T), not softmax(logits)."""
    pattern = DelayPattern.parse("parallel")
    model = tiny("parallel")
    fixed = torch.zeros(VOCAB.vocab_size)
    fixed[:4] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    fixed[4 : VOCAB.codebook_size] = -30.0

    def set_fixed(step, logits):
        logits[:] = fixed
        logits[:, 0, VOCAB.eos] = -1e4

    def entropy_of_codes(temperature: float) -> tuple[float, torch.Tensor]:
        hook = edit_logits(model, set_fixed)
        sampling = SamplingConfig(max_frames=60, cfg_scale=1.0, temperature=temperature, seed=1)
        result = generate_codes(model, ["a"] * 4, pattern, VOCAB, sampling)
        hook.remove()
        codes = torch.from_numpy(np.concatenate(result.codes))
        freq = torch.bincount(codes.flatten(), minlength=4)[:4].float() / codes.numel()
        return float(-(freq * freq.clamp_min(1e-12).log()).sum()), freq

    cold, cold_freq = entropy_of_codes(0.5)
    warm, warm_freq = entropy_of_codes(1.0)
    assert cold < warm - 0.2
    assert (cold_freq - torch.softmax(fixed[:4] / 0.5, -1)).abs().max() < 0.03
    assert (warm_freq - torch.softmax(fixed[:4], -1)).abs().max() < 0.03


def test_sampling_config_validation():
    with pytest.raises(GenerationError, match="temperature"):
        SamplingConfig(max_frames=4, temperature=-0.1)
    with pytest.raises(GenerationError, match="top_p"):
        SamplingConfig(max_frames=4, top_p=0.0)
    assert not SamplingConfig(max_frames=4, cfg_scale=1.0).uses_cfg
    assert SamplingConfig(max_frames=4).uses_cfg
    assert not SamplingConfig(max_frames=4, cfg_scale=0.0).uses_cfg  # Dia's formula: s=0 is cond only
    with pytest.raises(GenerationError, match="at least one text"):
        generate_codes(tiny("dia"), [], DelayPattern.parse("dia"), VOCAB, SamplingConfig(max_frames=4))
    with pytest.raises(GenerationError, match="pattern_of"):
        generate_codes(tiny("dia"), ["a"], DelayPattern.parse("musicgen"), VOCAB, SamplingConfig(max_frames=4))


def test_generates_through_a_lora_wrapper():
    """Training with LoRA hands a PeftModel to the samples hook: same codes as the bare model at init."""
    peft = pytest.importorskip("peft")
    pattern = DelayPattern.parse("dia")
    model = tiny("dia")
    sampling = SamplingConfig(max_frames=6, **GREEDY)
    bare = generate_codes(model, ["a"], pattern, VOCAB, sampling)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapped = generate_codes(lora, ["a"], pattern, VOCAB, sampling)
    assert torch.equal(bare.delayed, wrapped.delayed)  # LoRA's B starts at zero


# --- run directories, samples at checkpoints and the CLI ----------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DIAMUSIC, *args], capture_output=True, text=True, timeout=300)


def test_samples_are_written_at_checkpoints_during_training(tiny_run):
    from diamusic.codecs import load_codec

    codec = load_codec(tiny_run / "codec")
    for step in (5, 10):
        folder = tiny_run / "samples" / f"step_{step:06d}"
        wavs = sorted(folder.glob("sample_*.wav"))
        assert len(wavs) == 2  # samples.num_prompts in tiny-cpu.yaml
        for wav in wavs:
            audio, rate = sf.read(wav)
            assert rate == codec.sample_rate and len(audio) > 0 and np.isfinite(audio).all()
            sidecar = json.loads(wav.with_suffix(".json").read_text())
            assert sidecar["step"] == step and sidecar["pattern"] == list(range(9))
            codes = np.load(wav.with_suffix(".npy"))
            assert codes.shape == (sidecar["frames"], 9) and codes.max() < 32
    assert list((tiny_run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.integration
def test_generate_cli_writes_playable_wavs_deterministically(tiny_run, tmp_path):
    args = ["generate", "--run", str(tiny_run), "--text", "a jig in D major", "--text", "a slow air", "--num", "2"]
    args += ["--seconds", "0.5", "--temperature", "0.8", "--seed", "3"]
    import contextlib
    import io

    from diamusic.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # this process, then a fresh one: the same files
        assert main([*args, "--out", str(tmp_path / "a")]) == 0
    shown = printed.getvalue()
    assert "frames/s" in shown and "real time" in shown and "8 of them added by pattern" in shown
    from diamusic.codecs import load_codec

    codec = load_codec(tiny_run / "codec")
    wavs = sorted((tmp_path / "a").glob("gen_*.wav"))
    assert len(wavs) == 4
    for wav in wavs:
        audio, rate = sf.read(wav)
        assert rate == codec.sample_rate and len(audio) > 0
        assert np.isfinite(audio).all()
        sidecar = json.loads(wav.with_suffix(".json").read_text())
        assert sidecar["checkpoint"] == "step_000010" and sidecar["pattern"] == list(range(9))
        assert sidecar["temperature"] == 0.8 and sidecar["cfg_scale"] == 3.0 and sidecar["seed"] == 3
        assert sidecar["frames"] <= 43
    # the length written, in seconds with the frames in brackets
    frames = sum(json.loads(w.with_suffix(".json").read_text())["frames"] for w in wavs)
    assert f": {frames / codec.frame_rate:.1f} s ({frames} frames) of audio, " in shown
    assert cli(*args, "--out", str(tmp_path / "b")).returncode == 0
    made = sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix in (".npy", ".wav"))
    assert [n for n in made if (tmp_path / "a" / n).read_bytes() != (tmp_path / "b" / n).read_bytes()] == []
    # a second call into "a" is refused with the files untouched: test_generate_cli_refuses_a_used_output_directory...


def test_generate_cli_continues_an_audio_prompt_and_keeps_it_on_request(tiny_run, tmp_path, capsys):
    from diamusic.cli import main
    from diamusic.codecs import load_codec

    codec = load_codec(tiny_run / "codec")
    t = np.arange(int(1.5 * codec.sample_rate)) / codec.sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "prompt.wav", np.stack([wave, wave], 1), codec.sample_rate, subtype="FLOAT")
    args = ["generate", "--run", str(tiny_run), "--text", "a jig", "--seconds", "0.3", "--temperature", "0"]
    args += ["--prompt-audio", str(tmp_path / "prompt.wav"), "--prompt-seconds", "0.5"]  # a stereo file: mixed down
    assert main([*args, "--out", str(tmp_path / "cont")]) == 0
    assert main([*args, "--keep-prompt", "--out", str(tmp_path / "kept")]) == 0
    prompt = codec.encode(wave[: int(0.5 * codec.sample_rate)], codec.sample_rate)
    continuation, kept = (np.load(tmp_path / d / "gen_00.npy") for d in ("cont", "kept"))
    np.testing.assert_array_equal(kept[: len(prompt)], prompt)  # the prompt's frames, unchanged
    np.testing.assert_array_equal(kept[len(prompt) :], continuation)
    sidecar = json.loads((tmp_path / "kept" / "gen_00.json").read_text())
    assert sidecar["prompt_frames"] == len(prompt) and sidecar["keep_prompt"] and sidecar["frames"] == len(kept)
    assert sidecar["prompt_audio"] == str(tmp_path / "prompt.wav")
    assert 0 < len(continuation) <= round(0.3 * codec.frame_rate) + 1
    # a stereo run takes a mono or stereo prompt, as `prepare` takes its inputs; more sides are refused
    sf.write(tmp_path / "quad.wav", np.stack([wave] * 4, 1), codec.sample_rate)
    with pytest.raises(GenerationError, match="quad.wav: 4 audio channels: a stereo dataset takes mono or stereo"):
        prompt_codes(tmp_path / "quad.wav", codec, 2)
    assert prompt_codes(tmp_path / "prompt.wav", codec, 2, 0.5).shape == (len(prompt), 18)


def test_generate_cli_writes_a_grid_of_settings_and_samples_take_several_temperatures(tiny_run, tmp_path, capsys):
    from diamusic.cli import main
    from diamusic.generate import write_samples
    from diamusic.runs import load_run, samples_dir

    args = ["generate", "--run", str(tiny_run), "--text", "a jig", "--seconds", "0.3", "--seed", "1"]
    assert main([*args, "--temperature", "0", "1", "--cfg-scale", "1", "3.5", "--out", str(tmp_path / "grid")]) == 0
    stems = ["gen_t0_cfg1", "gen_t0_cfg3.5", "gen_t1_cfg1", "gen_t1_cfg3.5"]
    assert sorted(p.stem for p in (tmp_path / "grid").glob("*.wav")) == [f"{s}_00" for s in stems]
    for stem in stems:
        sidecar = json.loads((tmp_path / "grid" / f"{stem}_00.json").read_text())
        assert f"gen_t{sidecar['temperature']:g}_cfg{sidecar['cfg_scale']:g}" == stem
    assert main([*args, "--temperature", "0", "--cfg-scale", "3.5", "--out", str(tmp_path / "one")]) == 0
    one, cell = (np.load(tmp_path / d) for d in ("one/gen_00.npy", "grid/gen_t0_cfg3.5_00.npy"))
    np.testing.assert_array_equal(one, cell)  # a grid cell is the single run with its settings
    capsys.readouterr()
    assert main([*args, "--temperature", "1", "1", "--out", str(tmp_path / "twice")]) == 2
    assert "listed twice" in capsys.readouterr().err and not (tmp_path / "twice").exists()

    run = load_run(tiny_run, device="cpu")
    paths = write_samples(run.model, tmp_path, 3, ["a jig"], 0.2, run.codec, temperatures=[0.0, 0.7])
    assert [p.name for p in paths] == ["sample_t0_00.wav", "sample_t0.7_00.wav"]
    assert json.loads((samples_dir(tmp_path, 3) / "sample_t0.7_00.json").read_text())["temperature"] == 0.7


def test_generate_cli_picks_checkpoints_and_names_bad_input(tiny_run, tmp_path, capsys):
    from diamusic.cli import main

    def generate(*args: str) -> tuple[int, list[str]]:
        code = main(["generate", "--run", *args, "--text", "x", "--seconds", "0.2"])
        return code, capsys.readouterr().err.strip().splitlines()

    assert generate(str(tiny_run), "--checkpoint", "5", "--out", str(tmp_path / "g"))[0] == 0
    assert json.loads((tmp_path / "g" / "gen_00.json").read_text())["checkpoint"] == "step_000005"
    bad = {
        "no checkpoint at step 7 (have: 5, 10)": generate(str(tiny_run), "--checkpoint", "7", "--out", str(tmp_path)),
        "is not a run directory": generate(str(tmp_path), "--out", str(tmp_path / "i")),
        "temperature must be >= 0": generate(str(tiny_run), "--temperature", "-1", "--out", str(tmp_path / "j")),
    }
    for fragment, (code, lines) in bad.items():
        assert code == 2 and len(lines) == 1 and fragment in lines[0], lines


def test_generate_cli_refuses_a_used_output_directory_before_loading_the_model(tiny_run, tmp_path, monkeypatch, capsys):
    from diamusic import cli

    (tmp_path / "gen_00.wav").write_bytes(b"earlier")
    def loaded(*args, **kwargs):
        pytest.fail("the model loaded before the refusal")

    monkeypatch.setattr(cli, "load_run", functools.wraps(cli.load_run)(loaded))  # the CLI reads its defaults
    assert cli.main(["generate", "--run", str(tiny_run), "--text", "x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # with the flag that is the way out
    assert "already holds gen_* files" in err and err.strip().endswith("or overwrite them (--overwrite)")
    assert (tmp_path / "gen_00.wav").read_bytes() == b"earlier"


def test_a_lora_run_checkpoints_its_adapters_and_generates_from_them_on_its_base(melody_dataset, tmp_path):
    """A LoRA checkpoint holds the adapters only (the base is the run's pretrained model, checked by
    its fingerprint); loading merges them into that base, and a changed base is refused."""
    from safetensors.torch import load_file

    from diamusic.checkpoints import CheckpointError
    from diamusic.config import load_config
    from diamusic.data.dataset import CodesDataset
    from diamusic.model import build_model, weights_fingerprint
    from diamusic.runs import load_run
    from diamusic.train import train

    vocab = CodesDataset(melody_dataset).vocab
    base = build_model("tiny", DelayPattern.parse("musicgen"), vocab, seed=5)
    base.save_pretrained(tmp_path / "base")
    overrides = {"data.path": str(melody_dataset), "steps": 3, "batch_size": 2, "data.crop_frames": 16,
                 "eval.every": 3, "eval.clips": 2, "model.lora_rank": 4, "optim.warmup_steps": 1,
                 "model.init": "pretrained", "model.pretrained": str(tmp_path / "base")}  # fmt: skip
    train(load_config("tiny-cpu", overrides=overrides), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert 0 < info["parameters"]["trainable"] < 0.2 * info["parameters"]["total"]  # LoRA trains only the adapters
    assert info["base_fingerprint"] == weights_fingerprint(base)
    run = load_run(tmp_path / "run", device="cpu")
    saved = load_file(run.checkpoint / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # the adapters, not the frozen base
    sizes = [(folder / "model.safetensors").stat().st_size for folder in (run.checkpoint, tmp_path / "base")]
    assert sizes[0] < 0.2 * sizes[1]
    # the loaded model is the base with the trained adapters merged into its plain weights
    merged = dict(run.model.named_parameters())
    name = "model.decoder.layers.0.self_attention.q_proj.weight"
    assert name in merged and not torch.equal(merged[name], dict(base.named_parameters())[name])
    sampling = SamplingConfig(max_frames=4, **GREEDY)
    assert generate_codes(run.model, ["x"], run.pattern, run.vocab, sampling).frames[0] <= 4
    # another base under the same path: the adapters are refused, not merged into the wrong weights
    build_model("tiny", DelayPattern.parse("musicgen"), vocab, seed=6).save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match="other base weights"):
        load_run(tmp_path / "run", device="cpu")


@pytest.mark.integration
def test_static_cache_and_compiled_step_give_the_same_tokens(monkeypatch):
    from torch._dynamo.utils import counters, get_static_address_type

    # one pattern: the compiled decoder step never sees it (delays are applied around the step), and
    # the static cache with every pattern is the default every other decoding test runs; compiled with
    # CFG only (its default, and the larger batch): a compilation costs ~15 s here
    model, pattern = tiny("dia"), DelayPattern.parse("dia")
    texts = ["a slow waltz in D minor", "a jig"]
    caches = []
    original = decoding.new_cache

    def recorded(*args):
        caches.append(original(*args))
        return caches[-1]

    monkeypatch.setattr(decoding, "new_cache", recorded)
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    runs = {}
    for label, options in {
        "dynamic": DecodeOptions(static_cache=False),
        "static": DecodeOptions(static_cache=True),
        "compiled": DecodeOptions(static_cache=True, compile=True),
    }.items():
        for cfg in (1.0, 3.0) if label != "compiled" else (3.0,):
            sampling = SamplingConfig(max_frames=24, cfg_scale=cfg, temperature=0.0)
            runs[label, cfg] = generate_codes(model, texts, pattern, VOCAB, sampling, options)
    for label, cfg in runs:
        reference, result = runs["dynamic", cfg], runs[label, cfg]
        assert max(reference.frames) > 0
        assert result.frames == reference.frames and result.decode_steps == reference.decode_steps, label
        assert torch.equal(result.delayed, reference.delayed), (label, cfg)
    # One graph for the whole decoding: the first step runs uncompiled and allocates the caches, so
    # their tensors carry the fixed-address mark CUDA graphs need to replay over them
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    for cache in caches[-1:]:  # the compiled run's
        for layer in [*cache.self_attention_cache.layers, *cache.cross_attention_cache.layers]:
            assert get_static_address_type(layer.keys) and get_static_address_type(layer.values)
