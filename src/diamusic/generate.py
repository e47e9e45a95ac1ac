"""Sampling codec tokens from a Dia model: classifier-free guidance, the delay pattern's BOS/EOS
rules, and our own step-by-step decode loop on the model's KV cache.

We do not use transformers' ``generate`` for Dia because it clamps temperature < 1 to 1, ignores a
user ``logits_processor`` and treats the unconditional input differently from our training. The
step layout is exactly ``data.build_decoder_batch``'s: step 0 is all BOS; channel c holds frame
``s - 1 - delays[c]`` at step s (BOS while ``s <= delays[c]``); channel 0's EOS at step e means the
clip has ``e - 1`` frames and channel c's EOS follows at ``e + delays[c]``, PAD after it.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diamusic.model import AudioVocab, encode_text
from diamusic.patterns import DelayPattern

if TYPE_CHECKING:
    from transformers import DiaForConditionalGeneration

    from diamusic.codecs import Codec
    from diamusic.tracking import Tracker


@dataclass
class SamplingConfig:
    """How to sample.

    ``cfg_scale`` uses Dia's formula ``cond + s * (cond - uncond)``; like Dia and transformers we
    treat s = 1 as "guidance off" (skipping the unconditional pass), and s = 0 is unguided too.
    ``cfg_filter_top_k`` is Dia's CFG filter: the candidates are the top-k of the guided logits, and
    the token is sampled from the *conditional* logits restricted to them; ``None`` samples from
    the guided logits (plain CFG). ``temperature`` 0 is greedy; values below 1 are honoured.
    """

    max_frames: int
    cfg_scale: float = 3.0
    cfg_filter_top_k: int | None = 45
    temperature: float = 1.0
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.cfg_filter_top_k is not None and self.cfg_filter_top_k < 1:
            raise ValueError(f"cfg_filter_top_k must be >= 1 or None, got {self.cfg_filter_top_k}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def for_seconds(cls, seconds: float, frame_rate: float, **settings: Any) -> SamplingConfig:
        """A length cap in seconds of audio, rounded to codec frames."""
        return cls(max_frames=max(1, round(seconds * frame_rate)), **settings)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale not in (0.0, 1.0)


@dataclass
class GenerationResult:
    codes: list[np.ndarray]  # per text: (frames_i, C) int64, real codes only, delay reverted
    frames: list[int]
    stopped_on_eos: list[bool]  # False where the length cap forced the end
    steps: int  # decoder steps run after the initial BOS step
    seconds: float
    delayed: torch.Tensor  # (B, 1 + steps, C) the raw step sequence, BOS step included (for inspection)

    @property
    def frames_per_second(self) -> float:
        return sum(self.frames) / self.seconds if self.seconds > 0 else math.inf

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.inf


# --- logits -> token ----------------------------------------------------------------------------


def allowed_tokens(vocab: AudioVocab, device: torch.device | str | None = None) -> torch.Tensor:
    """(C, V) bool: which ids each channel may *sample*. Only channel 0 may choose EOS; BOS, PAD
    and the spare id are only ever forced by the delay rules, so a codec never sees them."""
    allowed = torch.zeros(vocab.num_codebooks, vocab.vocab_size, dtype=torch.bool, device=device)
    allowed[:, : vocab.codebook_size] = True
    allowed[0, vocab.eos] = True
    return allowed


def guide(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, top_k: int | None, allowed: torch.Tensor
) -> torch.Tensor:
    """Classifier-free guidance over (B, C, V) logits; disallowed ids come out as -inf."""
    guided = (cond + scale * (cond - uncond)).masked_fill(~allowed, -math.inf)
    if top_k is None:
        return guided
    # Dia's CFG filter: guidance only chooses the candidate set, the conditional logits rank it
    # (sampling from the sharpened guided logits directly tends to sound harsh at scale 3)
    k = min(top_k, guided.shape[-1])
    keep = torch.zeros_like(allowed.expand_as(guided)).scatter_(-1, guided.topk(k, dim=-1).indices, True)
    return cond.masked_fill(~(keep & allowed), -math.inf)


def eos_only_if_top(logits: torch.Tensor, eos: int) -> torch.Tensor:
    """Channel 0 ends only when EOS is its single most likely token (Dia's rule).

    Stopping is irreversible, so a low-probability EOS drawn at temperature 1 would cut the music
    short; when EOS *is* the top token it is taken outright, otherwise it is removed.
    """
    ch0 = logits[:, 0]
    eos_top = ch0.argmax(dim=-1) == eos
    only_eos = torch.full_like(ch0, -math.inf)
    only_eos[:, eos] = 0.0
    no_eos = ch0.clone()
    no_eos[:, eos] = -math.inf
    logits = logits.clone()
    logits[:, 0] = torch.where(eos_top[:, None], only_eos, no_eos)
    return logits


def sample_logits(
    logits: torch.Tensor, temperature: float, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Sample ids from (..., V) logits: temperature (0 = argmax, never clamped), then nucleus top-p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked above it already cover top_p (the top one always stays)
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


# --- the decode loop ----------------------------------------------------------------------------


@torch.no_grad()
def generate_codes(
    model: DiaForConditionalGeneration,
    texts: list[str],
    pattern: DelayPattern,
    vocab: AudioVocab,
    sampling: SamplingConfig,
) -> GenerationResult:
    """Generate codec frames for each text; returns real codes only, ready for ``codec.decode``."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    _check_model(model, texts, pattern, vocab, sampling)
    start = time.perf_counter()
    device = model.device
    batch, channels = len(texts), pattern.num_codebooks
    delays = torch.tensor(pattern.delays, device=device)  # (C,)
    allowed = allowed_tokens(vocab, device)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    max_steps = pattern.decode_steps(sampling.max_frames)
    cap_step = sampling.max_frames + 1  # channel 0's EOS step for a clip of exactly max_frames

    # Encode the texts once. With CFG the unconditional rows are the *training* "no text" input
    # (encode_text(None)), appended after the conditional rows: one batched decoder pass serves both.
    rows = list(texts) + ([None] * batch if sampling.uses_cfg else [])
    input_ids, text_mask = (t.to(device) for t in encode_text(rows))
    was_training = model.training
    model.eval()
    try:
        encoder_hidden = model.get_encoder()(input_ids=input_ids, attention_mask=text_mask).last_hidden_state
        decoder = model.get_decoder()
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))

        tokens = torch.full((batch, max_steps + 1, channels), vocab.pad, dtype=torch.long, device=device)
        tokens[:, 0] = vocab.bos
        eos_step = torch.full((batch,), -1, dtype=torch.long, device=device)  # -1: channel 0 still going
        natural_eos = torch.zeros(batch, dtype=torch.bool, device=device)
        step = 0
        for step in range(1, max_steps + 1):
            # 1. one decoder step on the previous column (the KV cache holds everything before it)
            previous = tokens[:, step - 1 : step]  # (B, 1, C)
            if sampling.uses_cfg:
                previous = previous.repeat(2, 1, 1)
            # (the decoder and head directly: DiaModel.forward walks every module each call to check
            # for gradient checkpointing, ~10% of a small model's step on CPU)
            hidden = decoder(
                input_ids=previous,
                encoder_hidden_states=encoder_hidden,
                encoder_attention_mask=text_mask,
                cache=cache,
                use_cache=True,
            ).last_hidden_state
            logits = model.logits_dense(hidden).view(-1, channels, vocab.vocab_size).float()  # (B|2B, C, V)

            # 2. guidance, then the sampling rules: no special ids except EOS on channel 0
            if sampling.uses_cfg:
                cond, uncond = logits.split(batch)
                logits = guide(cond, uncond, sampling.cfg_scale, sampling.cfg_filter_top_k, allowed)
            else:
                logits = logits.masked_fill(~allowed, -math.inf)
            logits = eos_only_if_top(logits, vocab.eos)
            sampled = sample_logits(logits, sampling.temperature, sampling.top_p, generator)  # (B, C)

            # 3. channel 0 decides the end: its EOS (or the length cap) fixes e for the sample
            going = eos_step < 0
            chose_eos = going & (sampled[:, 0] == vocab.eos)
            natural_eos |= chose_eos
            ends_now = chose_eos | (going & (step == cap_step))
            eos_step = torch.where(ends_now, step, eos_step)

            # 4. forced tokens: channel c's EOS at e + d_c and PAD after it; BOS before it starts
            ended = (eos_step >= 0)[:, None]
            tail = step - eos_step[:, None] - delays[None, :]  # (B, C): 0 at channel c's EOS step
            column = torch.where(ended & (tail == 0), vocab.eos, sampled)
            column = torch.where(ended & (tail > 0), vocab.pad, column)
            column = torch.where(step <= delays[None, :], vocab.bos, column)
            tokens[:, step] = column

            # 5. stop once every sample's last channel has placed its EOS
            if bool((ended.squeeze(1) & (step >= eos_step + pattern.max_delay)).all()):
                break
    finally:
        model.train(was_training)

    delayed = tokens[:, : step + 1]
    frames = (eos_step - 1).tolist()
    # revert the delay on steps 1..: frame t of channel c sits at step t + 1 + d_c
    reverted = pattern.revert(delayed[:, 1:])
    codes = [reverted[b, : frames[b]].cpu().numpy().astype(np.int64) for b in range(batch)]
    for b, c in enumerate(codes):
        if c.size and (c.min() < 0 or c.max() >= vocab.codebook_size):
            raise RuntimeError(f"sample {b}: generated frames contain a special token (a decode-loop bug)")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return GenerationResult(
        codes=codes,
        frames=frames,
        stopped_on_eos=natural_eos.tolist(),
        steps=step,
        seconds=time.perf_counter() - start,
        delayed=delayed.cpu(),
    )


def _check_model(
    model: DiaForConditionalGeneration,
    texts: list[str],
    pattern: DelayPattern,
    vocab: AudioVocab,
    sampling: SamplingConfig,
) -> None:
    if not texts:
        raise ValueError("generate_codes needs at least one text")
    config = model.config
    if list(config.delay_pattern) != pattern.to_list():
        raise ValueError(
            f"the model was set up for delay pattern {list(config.delay_pattern)} but generation "
            f"uses {pattern}: pass diamusic.model.pattern_of(model)"
        )
    dec = config.decoder_config
    if (dec.num_channels, dec.vocab_size) != (vocab.num_codebooks, vocab.vocab_size):
        raise ValueError(
            f"the model has {dec.num_channels} channels x vocab {dec.vocab_size}, the vocabulary "
            f"{vocab.num_codebooks} x {vocab.vocab_size}"
        )
    longest = pattern.decode_steps(sampling.max_frames) + 1
    if longest > dec.max_position_embeddings:
        warnings.warn(
            f"{sampling.max_frames} frames need {longest} decoder positions, more than the model's "
            f"{dec.max_position_embeddings}: quality past its training length is not guaranteed",
            stacklevel=3,
        )


# --- from a run directory to audio files --------------------------------------------------------


@dataclass
class LoadedRun:
    model: DiaForConditionalGeneration
    pattern: DelayPattern
    vocab: AudioVocab
    codec: Codec
    checkpoint: Path
    info: dict[str, Any]  # run.json


def load_run(run_dir: str | Path, checkpoint: str | int = "latest", device: str | None = None) -> LoadedRun:
    """The model of one checkpoint, with the pattern and codec the run was trained with."""
    from transformers import DiaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from diamusic.codecs import load_codec
    from diamusic.model import load_lora_checkpoint, pattern_of, vocab_of
    from diamusic.train import RunError, resolve_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise RunError(f"{run_dir} is not a run directory (no run.json)")
    info = json.loads((run_dir / "run.json").read_text())
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    model_config = info["config"]["model"]
    hf_logging.disable_progress_bar()  # a local checkpoint loads in a blink; keep stderr for errors
    try:
        if model_config["lora_rank"] > 0:
            model = load_lora_checkpoint(ckpt, model_config["lora_rank"], model_config["lora_alpha"])
        else:
            model = DiaForConditionalGeneration.from_pretrained(ckpt)
    finally:
        hf_logging.enable_progress_bar()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    return LoadedRun(model, pattern_of(model), vocab_of(model), load_codec(run_dir / "codec"), ckpt, info)


def generate_files(
    model: DiaForConditionalGeneration,
    texts: list[str],
    codec: Codec,
    sampling: SamplingConfig,
    out: Path,
    stem: str,
    settings: dict[str, Any],
) -> tuple[GenerationResult, list[Path]]:
    """Generate with the model's own pattern; per text a WAV, its codes (.npy) and a JSON sidecar
    with every setting. Returns the result and the WAV paths."""
    import soundfile as sf

    from diamusic.model import pattern_of, vocab_of

    pattern = pattern_of(model)
    result = generate_codes(model, texts, pattern, vocab_of(model), sampling)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (text, codes) in enumerate(zip(texts, result.codes, strict=True)):
        base = out / f"{stem}_{i:02d}"
        wave = codec.decode(codes) if len(codes) else np.zeros(0, dtype=np.float32)
        sf.write(base.with_suffix(".wav"), wave, codec.sample_rate)
        np.save(base.with_suffix(".npy"), codes)
        sidecar = {
            **settings,
            "pattern": pattern.to_list(),
            **asdict(sampling),
            "text": text,
            "frames": int(codes.shape[0]),
            "seconds": float(codes.shape[0] / codec.frame_rate),
            "stopped_on_eos": bool(result.stopped_on_eos[i]),
        }
        base.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
        paths.append(base.with_suffix(".wav"))
    return result, paths


def write_demos(
    model: DiaForConditionalGeneration,
    run_dir: Path,
    step: int,
    prompts: list[str],
    seconds: float,
    codec: Codec,
    tracker: Tracker | None = None,
) -> list[Path]:
    """Fixed prompts and seed, so checkpoints are compared by ear on the same material."""
    sampling = SamplingConfig.for_seconds(seconds, codec.frame_rate, seed=0)
    out = Path(run_dir) / "demos" / f"step_{step:06d}"
    _, paths = generate_files(model, prompts, codec, sampling, out, "demo", {"step": step})
    if tracker is not None:
        import soundfile as sf

        for i, path in enumerate(paths):
            wave, rate = sf.read(path, dtype="float32")
            tracker.log_audio(f"demo/{i}", wave, rate, step, caption=prompts[i])
    return paths
