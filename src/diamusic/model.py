"""Dia models: presets, building and loading DiaForConditionalGeneration, the pattern in its config, LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from types import MethodType
from typing import TYPE_CHECKING

import torch

from diamusic.errors import DiamusicError, did_you_mean
from diamusic.patterns import DelayPattern
from diamusic.tokens import MAX_TEXT_BYTES, TEXT_VOCAB, AudioVocab

if TYPE_CHECKING:  # transformers is imported when a model is built: the CLI starts fast without it
    from transformers import DiaConfig, DiaForConditionalGeneration


class ModelError(DiamusicError):
    """A model that cannot be used with this run; the message is one line the user can act on."""


@dataclass(frozen=True)
class ModelPreset:
    """Architecture only: the codebook count and size come from the dataset's codec."""

    encoder_layers: int
    encoder_hidden: int
    encoder_heads: int
    encoder_head_dim: int
    encoder_ffn: int
    decoder_layers: int
    decoder_hidden: int
    decoder_heads: int
    decoder_kv_heads: int  # grouped-query attention: fewer key/value heads than query heads
    decoder_head_dim: int
    decoder_ffn: int
    cross_heads: int
    cross_head_dim: int
    text_positions: int = MAX_TEXT_BYTES
    audio_positions: int = 3072  # Dia's longest clip, ~35.7 s of DAC frames


MODEL_PRESETS: dict[str, ModelPreset] = {
    # small enough for CPU training and tests; with Dia's 9 x 1028 vocabulary about half of it is the
    # embedding and the head
    "tiny": ModelPreset(
        encoder_layers=2, encoder_hidden=128, encoder_heads=4, encoder_head_dim=32, encoder_ffn=512,
        decoder_layers=4, decoder_hidden=128, decoder_heads=4, decoder_kv_heads=2, decoder_head_dim=32,
        decoder_ffn=512, cross_heads=4, cross_head_dim=32,
    ),
    # a single consumer GPU
    "small": ModelPreset(
        encoder_layers=4, encoder_hidden=384, encoder_heads=6, encoder_head_dim=64, encoder_ffn=1536,
        decoder_layers=8, decoder_hidden=512, decoder_heads=8, decoder_kv_heads=2, decoder_head_dim=64,
        decoder_ffn=1536, cross_heads=8, cross_head_dim=64,
    ),
    # the research log's ablation (2025-11-25), trained from scratch: ~0.1B weights besides the
    # embeddings and head (see benchmarks/RESULTS.md)
    "research-log": ModelPreset(
        encoder_layers=4, encoder_hidden=512, encoder_heads=8, encoder_head_dim=64, encoder_ffn=2048,
        decoder_layers=6, decoder_hidden=1024, decoder_heads=8, decoder_kv_heads=2, decoder_head_dim=64,
        decoder_ffn=4096, cross_heads=8, cross_head_dim=64,
    ),
    # Dia-1.6B's own shape (1.61B parameters with 9 x 1028): scratch runs at full size
    "dia-1.6b": ModelPreset(
        encoder_layers=12, encoder_hidden=1024, encoder_heads=16, encoder_head_dim=128, encoder_ffn=4096,
        decoder_layers=18, decoder_hidden=2048, decoder_heads=16, decoder_kv_heads=4, decoder_head_dim=128,
        decoder_ffn=8192, cross_heads=16, cross_head_dim=128,
    ),
}  # fmt: skip


def model_config(preset: str | ModelPreset, pattern: DelayPattern, vocab: AudioVocab) -> DiaConfig:
    """The DiaConfig for a preset, with the run's delay pattern and the codec's vocabulary."""
    from transformers import DiaConfig, DiaDecoderConfig, DiaEncoderConfig

    p = _preset(preset) if isinstance(preset, str) else preset
    _check_pattern_vocab(pattern, vocab)
    encoder = DiaEncoderConfig(
        num_hidden_layers=p.encoder_layers,
        hidden_size=p.encoder_hidden,
        num_attention_heads=p.encoder_heads,
        num_key_value_heads=p.encoder_heads,
        head_dim=p.encoder_head_dim,
        intermediate_size=p.encoder_ffn,
        max_position_embeddings=p.text_positions,
        vocab_size=TEXT_VOCAB,
    )
    decoder = DiaDecoderConfig(
        num_hidden_layers=p.decoder_layers,
        hidden_size=p.decoder_hidden,
        num_attention_heads=p.decoder_heads,
        num_key_value_heads=p.decoder_kv_heads,
        head_dim=p.decoder_head_dim,
        intermediate_size=p.decoder_ffn,
        cross_num_attention_heads=p.cross_heads,
        cross_head_dim=p.cross_head_dim,
        cross_num_key_value_heads=p.cross_heads,
        cross_hidden_size=p.encoder_hidden,
        max_position_embeddings=p.audio_positions,
        vocab_size=vocab.vocab_size,
        num_channels=vocab.num_streams,  # transformers' name for the decoder's token columns
        eos_token_id=vocab.eos,
        pad_token_id=vocab.pad,
        bos_token_id=vocab.bos,
    )
    # audio_channels is ours: config.json keeps it, so an 18-stream model says it is 9 x stereo
    return DiaConfig(
        encoder_config=encoder,
        decoder_config=decoder,
        delay_pattern=pattern.to_list(),
        audio_channels=vocab.audio_channels,
    )


def build_model(preset: str, pattern: DelayPattern, vocab: AudioVocab, seed: int = 0) -> DiaForConditionalGeneration:
    """A scratch-initialised Dia; the same seed gives the same weights, without touching global RNG."""
    from transformers import DiaForConditionalGeneration

    config = model_config(preset, pattern, vocab)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # fork_rng so building a model does not shift the caller's random stream (data order, dropout)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = DiaForConditionalGeneration(config)
    return name_input_embeddings(model)


def load_pretrained(
    name_or_path: str, pattern: DelayPattern, vocab: AudioVocab, dtype: torch.dtype = torch.float32
) -> tuple[DiaForConditionalGeneration, list[str]]:
    """Load a Dia checkpoint (hub id or local dir) for this run; returns (model, notes to log).

    The weights are loaded in ``dtype``, fp32 by default, whatever dtype the checkpoint was saved in:
    transformers would otherwise keep a bf16 checkpoint in bf16, and training would then update bf16
    weights where `precision: bf16` promises fp32 master weights under bf16 autocast.

    The checkpoint's codebooks (transformers' ``num_channels``) and vocabulary must match the
    dataset's codec (its embeddings and head are laid out per code). A mono checkpoint warm-starts a
    stereo run (`stereo_from_mono`). The delay pattern is only a data layout, so the run's pattern
    replaces the checkpoint's, with a note: the model then fine-tunes into the new layout.
    """
    from transformers import DiaForConditionalGeneration

    model = DiaForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype)
    dec = model.config.decoder_config
    notes = []
    if dec.num_channels == vocab.num_codebooks and vocab.audio_channels == 2:
        model = stereo_from_mono(model)
        notes.append(
            f"warm start for stereo: {name_or_path}'s {vocab.num_codebooks} codebook embeddings (halved) and "
            "output head slices copied to both sides"
        )
    if (dec.num_channels, dec.vocab_size) != (vocab.num_streams, vocab.vocab_size):
        sides = " (or its stereo doubling)" if vocab.audio_channels == 2 else ""
        raise ModelError(
            f"checkpoint {name_or_path} has {dec.num_channels} codebooks x vocab {dec.vocab_size} "
            f"(codebook size {dec.vocab_size - 4}), but the dataset's codec has {vocab.num_codebooks} "
            f"codebooks{sides} x {vocab.codebook_size} codes: prepare the data with the codec the checkpoint "
            "was trained on (DAC 44.1 kHz for Dia), or train from scratch with a model preset"
        )
    specials = (dec.eos_token_id, dec.pad_token_id, dec.bos_token_id)
    if specials != (vocab.eos, vocab.pad, vocab.bos):
        raise ModelError(
            f"checkpoint {name_or_path} uses EOS/PAD/BOS ids {specials}, expected "
            f"{(vocab.eos, vocab.pad, vocab.bos)} (codebook_size + 0/1/2)"
        )
    old = pattern_of(model)
    if old.delays != pattern.delays:
        model.config.delay_pattern = pattern.to_list()
        notes.append(
            f"delay pattern switched from {old} to {pattern}: the checkpoint was trained with {old.name}, "
            "so expect a higher loss at first while it adapts"
        )
    return name_input_embeddings(model), notes


def stereo_from_mono(model: DiaForConditionalGeneration) -> DiaForConditionalGeneration:
    """A mono model made stereo in place: the right side's codebook embeddings and output head slices
    copied from the left's (the research log's warm start).

    The embeddings are halved on both sides: the decoder sums the embeddings of all its streams, so
    with halves a stereo input whose sides are the same gives the decoder the mono model's input, and
    each side's logits are the mono model's (to float rounding of the sum); a plain copy would double
    the decoder's input on the first step of fine-tuning.
    """
    dec = model.config.decoder_config
    streams, vocab_size = 2 * dec.num_channels, dec.vocab_size
    embedding = model.model.decoder.embeddings
    old = embedding.embed.weight.data
    embedding.embed = torch.nn.Embedding.from_pretrained(torch.cat([old, old]) / 2, freeze=False)
    embedding.num_channels = streams
    embedding.offsets = torch.arange(streams, dtype=torch.long, device=old.device) * vocab_size
    head = model.logits_dense.weight.data  # (C * V, hidden): stream c's logits are rows c*V..(c+1)*V
    model.logits_dense = torch.nn.Linear(head.shape[1], streams * vocab_size, bias=False, dtype=head.dtype)
    model.logits_dense.weight.data = torch.cat([head, head])
    model.num_channels = model.model.decoder.num_channels = dec.num_channels = streams
    model.config.delay_pattern = list(model.config.delay_pattern) * 2
    model.config.audio_channels = 2
    return model


def name_input_embeddings(model: DiaForConditionalGeneration) -> DiaForConditionalGeneration:
    """Point ``get_input_embeddings`` of the model and its encoder/decoder at their embeddings.

    transformers' Dia names none of them, and two things we use ask: accelerate's FSDP2 wrapping
    (it shards the input embedding as its own unit and fails without one) and transformers'
    input-gradient hooks for adapters under activation checkpointing. The model's own answer is
    the decoder's code embedding, the large one. Bound methods, so a deep copy points at its own.
    """
    encoder, decoder = model.model.encoder, model.model.decoder
    encoder.get_input_embeddings = MethodType(_encoder_embedding, encoder)
    decoder.get_input_embeddings = MethodType(_decoder_embedding, decoder)
    model.model.get_input_embeddings = MethodType(_model_embedding, model.model)
    model.get_input_embeddings = MethodType(_top_embedding, model)
    return model


def _encoder_embedding(encoder: torch.nn.Module) -> torch.nn.Module:
    return encoder.embedding


def _decoder_embedding(decoder: torch.nn.Module) -> torch.nn.Module:
    return decoder.embeddings.embed


def _model_embedding(dia_model: torch.nn.Module) -> torch.nn.Module:
    return dia_model.decoder.get_input_embeddings()


def _top_embedding(model: torch.nn.Module) -> torch.nn.Module:
    return model.model.get_input_embeddings()


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def add_lora(model: DiaForConditionalGeneration, rank: int, alpha: float) -> torch.nn.Module:
    """Wrap the model with peft LoRA adapters on every attention projection."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every weight and its name: the same base model, wherever it was loaded from."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def adapter_names(model: torch.nn.Module) -> set[str]:
    """The names of the trainable weights: what a LoRA checkpoint holds."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def merge_adapters(
    base: DiaForConditionalGeneration, adapters: dict[str, torch.Tensor], rank: int, alpha: float
) -> DiaForConditionalGeneration:
    """``base`` with a LoRA run's adapters loaded and merged into its weights: a plain Dia model."""
    wrapped = add_lora(base, rank, alpha)
    missing = adapter_names(wrapped) - set(adapters)
    if missing:
        raise ModelError(f"the checkpoint lacks {len(missing)} adapter weights, e.g. {sorted(missing)[0]}")
    wrapped.load_state_dict(adapters, strict=False)
    return wrapped.merge_and_unload()


def pattern_of(model: DiaForConditionalGeneration | DiaConfig) -> DelayPattern:
    """The delay pattern stored in a model's config (or in the config itself)."""
    config = model.config if isinstance(model, torch.nn.Module) else model
    return DelayPattern.parse(list(config.delay_pattern), audio_channels=_audio_channels(config))


def vocab_of(model: DiaForConditionalGeneration | DiaConfig) -> AudioVocab:
    """The audio vocabulary a model's decoder (or a config) was built for."""
    config = model.config if isinstance(model, torch.nn.Module) else model
    dec, channels = config.decoder_config, _audio_channels(config)
    return AudioVocab(dec.vocab_size - 4, dec.num_channels // channels, channels)


def _audio_channels(config: DiaConfig) -> int:
    return int(getattr(config, "audio_channels", 1) or 1)  # Dia-1.6B and older runs: mono


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _preset(name: str) -> ModelPreset:
    if name not in MODEL_PRESETS:
        raise ModelError(f"unknown model preset {name!r}{did_you_mean(name, MODEL_PRESETS)}: use one of "
                         f"{', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


def _check_pattern_vocab(pattern: DelayPattern, vocab: AudioVocab) -> None:
    if (pattern.num_codebooks, pattern.audio_channels) != (vocab.num_codebooks, vocab.audio_channels):
        raise ModelError(
            f"delay pattern {pattern} has {pattern.num_streams} delays but the codec has "
            f"{vocab.num_codebooks} codebooks x {vocab.audio_channels} audio channels"
        )
