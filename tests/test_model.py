import pytest
import torch

from diamusic.metrics import split_logits
from diamusic.model import (
    MODEL_PRESETS,
    ModelError,
    build_model,
    count_parameters,
    load_pretrained,
    pattern_of,
    vocab_of,
)
from diamusic.patterns import DelayPattern
from diamusic.tokens import AudioVocab, build_decoder_batch, encode_text

DAC = AudioVocab(codebook_size=1024, num_codebooks=9)
SMALL = AudioVocab(codebook_size=32, num_codebooks=9)
DIA = DelayPattern.parse("dia")
MUSICGEN = DelayPattern.parse("musicgen")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_presets_build_with_expected_sizes():
    assert set(MODEL_PRESETS) == {"tiny", "small", "research-log", "dia-1.6b"}
    tiny = count_parameters(build_model("tiny", DIA, DAC))
    small = count_parameters(build_model("small", DIA, DAC))
    assert 1_000_000 <= tiny <= 5_000_000
    assert 40_000_000 <= small <= 60_000_000
    with torch.device("meta"):  # no memory: only the shapes matter here
        big = build_model("dia-1.6b", DIA, DAC)
    # transformers' DiaConfig() defaults are Dia-1.6B's published shape
    assert count_parameters(big) == 1_611_160_576
    assert count_parameters(build_model("tiny", DIA, SMALL)) < tiny  # vocab comes from the codec
    with torch.device("meta"):  # the research log's ablation model, on stereo DAC codes
        log = build_model("research-log", DelayPattern.parse("musicgen", 9, 2), AudioVocab(1024, 9, 2))
    enc, dec = log.config.encoder_config, log.config.decoder_config
    assert (enc.num_hidden_layers, enc.hidden_size, enc.num_attention_heads, enc.head_dim, enc.intermediate_size) == (
        4, 512, 8, 64, 2048)  # fmt: skip
    assert (dec.num_hidden_layers, dec.hidden_size, dec.num_attention_heads, dec.num_key_value_heads) == (6, 1024, 8, 2)
    assert (dec.head_dim, dec.intermediate_size, dec.cross_num_attention_heads, dec.num_channels) == (64, 4096, 8, 18)


def test_unknown_preset_and_pattern_mismatch_are_clear():
    with pytest.raises(ModelError, match="unknown model preset 'huge'"):
        build_model("huge", DIA, DAC)
    with pytest.raises(ModelError, match="4 delays but the codec has 9 codebooks"):
        build_model("tiny", DelayPattern.parse("0,1,2,3"), DAC)


def test_config_carries_pattern_vocab_and_special_ids():
    model = build_model("tiny", MUSICGEN, SMALL)
    dec = model.config.decoder_config
    assert model.config.delay_pattern == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert pattern_of(model) == MUSICGEN
    assert (dec.vocab_size, dec.num_channels) == (36, 9)
    assert (dec.eos_token_id, dec.pad_token_id, dec.bos_token_id) == (32, 33, 34)
    assert vocab_of(model) == SMALL


def test_build_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("tiny", DIA, SMALL, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_model("tiny", DIA, SMALL, seed=7)
    c = build_model("tiny", DIA, SMALL, seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    weight = "model.decoder.embeddings.embed.weight"
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


def test_load_pretrained_switches_pattern_with_a_note(tmp_path):
    build_model("tiny", DIA, SMALL, seed=3).save_pretrained(tmp_path)
    model, notes = load_pretrained(str(tmp_path), MUSICGEN, SMALL)
    assert pattern_of(model) == MUSICGEN
    assert len(notes) == 1
    assert "from dia [0,8,9,10,11,12,13,14,15] to musicgen [0,1,2,3,4,5,6,7,8]" in notes[0]
    same, no_notes = load_pretrained(str(tmp_path), DIA, SMALL)
    assert no_notes == [] and pattern_of(same) == DIA
    reference = build_model("tiny", DIA, SMALL, seed=3).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_load_pretrained_rejects_a_different_codec(tmp_path):
    build_model("tiny", DIA, SMALL).save_pretrained(tmp_path)
    eight = AudioVocab(codebook_size=32, num_codebooks=8)
    with pytest.raises(ModelError, match="has 9 codebooks x vocab 36.*8 codebooks x 32 codes"):
        load_pretrained(str(tmp_path), DelayPattern.parse("0,1,2,3,4,5,6,7"), eight)
    with pytest.raises(ModelError, match="codebook size 32.*9 codebooks x 1024 codes"):
        load_pretrained(str(tmp_path), DIA, DAC)


def test_forward_on_training_batch_and_logit_layout():
    model = build_model("tiny", MUSICGEN, SMALL).eval()
    g = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, 32, (n, 9), generator=g) for n in (5, 8)]
    decoder_input_ids, labels = build_decoder_batch(codes, MUSICGEN, SMALL)
    input_ids, attention_mask = encode_text(["a reel", None])
    steps = 8 + 1 + MUSICGEN.max_delay
    assert decoder_input_ids.shape == (2, steps, 9) and labels.shape == (2, 9, steps)
    captured = {}
    hook = model.logits_dense.register_forward_hook(lambda mod, args, out: captured.update(head=out))
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    hook.remove()
    assert out.logits.shape == (2 * 9, steps, 36)
    logits = split_logits(out.logits, 9)
    assert logits.shape == (2, 9, steps, 36)
    # the head emits (B, S, C*V); codebook c is the c-th slice of V, and the flat rows are batch-major
    direct = captured["head"].view(2, steps, 9, 36).permute(0, 2, 1, 3)
    assert torch.equal(logits, direct)


def test_input_embeddings_are_named_for_fsdp_and_adapters(tmp_path):
    import copy

    model = build_model("tiny", MUSICGEN, SMALL)
    decoder_codes = model.model.decoder.embeddings.embed
    assert model.get_input_embeddings() is decoder_codes
    assert model.model.decoder.get_input_embeddings() is decoder_codes
    assert model.model.encoder.get_input_embeddings() is model.model.encoder.embedding
    twin = copy.deepcopy(model)  # bound to the copy, not to the model it was copied from
    assert twin.get_input_embeddings() is twin.model.decoder.embeddings.embed
    model.save_pretrained(tmp_path / "m")
    loaded, _ = load_pretrained(str(tmp_path / "m"), MUSICGEN, SMALL)
    assert loaded.get_input_embeddings() is loaded.model.decoder.embeddings.embed


STEREO = AudioVocab(codebook_size=32, num_codebooks=9, audio_channels=2)


@pytest.mark.parametrize("name", ["dia", "middle-out"])
def test_a_mono_checkpoint_warm_starts_stereo_and_same_sides_give_its_logits(tmp_path, name):
    """A tiny random "pretrained" mono model saved to disk and loaded through the real loading code:
    for a stereo input whose sides are the same, each side's teacher-forced logits are the mono
    model's on the mono input (to float rounding: the decoder sums 18 halved embeddings, not 9)."""
    mono_pattern = DelayPattern.parse(name)
    stereo_pattern = DelayPattern.parse(name, num_codebooks=9, audio_channels=2)
    build_model("tiny", mono_pattern, SMALL, seed=5).save_pretrained(tmp_path)
    mono, _ = load_pretrained(str(tmp_path), mono_pattern, SMALL)
    stereo, notes = load_pretrained(str(tmp_path), stereo_pattern, STEREO)
    assert vocab_of(stereo) == STEREO and pattern_of(stereo) == stereo_pattern
    assert any("warm start for stereo" in n for n in notes)
    table = mono.model.decoder.embeddings.embed.weight
    assert torch.equal(stereo.model.decoder.embeddings.embed.weight, torch.cat([table, table]) / 2)
    head = mono.logits_dense.weight
    assert torch.equal(stereo.logits_dense.weight, torch.cat([head, head]))

    g = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, 32, (n, 9), generator=g) for n in (12, 16)]
    mono_in, _ = build_decoder_batch(codes, mono_pattern, SMALL)
    stereo_in, _ = build_decoder_batch([torch.cat([c, c], dim=1) for c in codes], stereo_pattern, STEREO)
    input_ids, attention_mask = encode_text(["a reel", "an air"])
    with torch.no_grad():
        text = {"input_ids": input_ids, "attention_mask": attention_mask}
        ours = split_logits(mono.eval()(**text, decoder_input_ids=mono_in).logits, 9)
        both = split_logits(stereo.eval()(**text, decoder_input_ids=stereo_in).logits, 18)
    for side in (both[:, :9], both[:, 9:]):
        torch.testing.assert_close(side, ours, rtol=0, atol=1e-5)

    # saved and loaded again, a stereo model stays stereo
    stereo.save_pretrained(tmp_path / "stereo")
    again, notes = load_pretrained(str(tmp_path / "stereo"), stereo_pattern, STEREO)
    assert vocab_of(again) == STEREO and notes == []


def test_a_warm_start_from_a_checkpoint_neither_mono_nor_stereo_is_refused(tmp_path):
    eight = AudioVocab(codebook_size=32, num_codebooks=8)
    build_model("tiny", DelayPattern.parse("0,1,2,3,4,5,6,7"), eight).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"has 8 codebooks x vocab 36.*9 codebooks \(or its stereo doubling\)"):
        load_pretrained(str(tmp_path), DelayPattern.parse("dia", audio_channels=2, num_codebooks=9), STEREO)
