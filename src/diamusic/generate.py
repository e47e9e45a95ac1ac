"""Sampling codec tokens from a Dia model: classifier-free guidance, the delay pattern's BOS/EOS
rules, and our own step-by-step decode loop on the model's KV cache.

We do not use transformers' ``generate`` for Dia because it clamps temperature < 1 to 1, ignores a
user ``logits_processor`` and treats the unconditional input differently from our training. The
decode-step layout is exactly ``tokens.build_decoder_batch``'s: step 0 is all BOS; codebook c holds
frame ``s - 1 - delays[c]`` at decode step s (BOS while ``s <= delays[c]``); the reference codebook's
(the pattern's first with delay 0: codebook 0 in Dia's patterns) EOS at step e means the clip has
``e - 1`` frames and codebook c's EOS follows at ``e + delays[c]``, PAD after it (``tokens.sampleable``
and ``tokens.force_delay_tokens`` hold those rules).

Each step's token rules run in Dia's (and transformers') order, so greedy decoding agrees with theirs
token for token where transformers supports the pattern (codebook 0 at delay 0): guidance and the CFG
filter's top-k over the whole vocabulary; then the ids a codebook may not sample (every special id, EOS
allowed on the reference codebook only) are masked; then the reference codebook takes EOS outright if
it is still the top candidate and drops it otherwise; then temperature and top-p, which keeps a token
unless the mass ranked above it exceeds p.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diamusic.codecs import decode_channels
from diamusic.errors import DiamusicError
from diamusic.model import pattern_of, vocab_of
from diamusic.patterns import DelayPattern
from diamusic.runs import samples_dir
from diamusic.tokens import AudioVocab, encode_text, force_delay_tokens, sampleable

if TYPE_CHECKING:
    from transformers import DiaForConditionalGeneration

    from diamusic.codecs import Codec
    from diamusic.tracking import Tracker


class GenerationError(DiamusicError):
    """Sampling settings or an output that cannot be used; one line for the user."""


DEFAULT_SECONDS = 10.0  # length cap of a generation when none is asked for; EOS usually ends it earlier


@dataclass
class SamplingConfig:
    """How to sample.

    ``cfg_scale`` uses Dia's formula ``cond + s * (cond - uncond)``; like Dia and transformers we
    treat s = 1 as "guidance off" (skipping the unconditional pass), and s = 0 is unguided too.
    ``cfg_filter_top_k`` is Dia's CFG filter: the candidates are the top-k of the guided logits, and
    the token is sampled from the *conditional* logits restricted to them; ``None`` samples from
    the guided logits (plain CFG). As in Dia the top-k is taken over the whole vocabulary before
    the special ids are masked, so a special id ranked in it uses up a slot and fewer than k codes
    may remain. ``temperature`` 0 is greedy; values below 1 are honoured. ``top_p`` keeps a token
    unless the probability ranked above it exceeds p (Dia's boundary: exactly p still keeps it).
    """

    max_frames: int
    cfg_scale: float = 3.0
    cfg_filter_top_k: int | None = 45
    temperature: float = 1.0
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise GenerationError(f"max_frames must be >= 1, got {self.max_frames}")
        if not 0 <= self.cfg_scale < math.inf:
            raise GenerationError(f"cfg_scale must be a finite number >= 0, got {self.cfg_scale}")
        if self.cfg_filter_top_k is not None and self.cfg_filter_top_k < 1:
            raise GenerationError(f"cfg_filter_top_k must be >= 1 or None, got {self.cfg_filter_top_k}")
        if not 0 <= self.temperature < math.inf:
            raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def for_seconds(cls, seconds: float, frame_rate: float, **settings: Any) -> SamplingConfig:
        """A length cap in seconds of audio, rounded to codec frames."""
        if not 0 < seconds < math.inf:
            raise GenerationError(f"seconds must be a finite number > 0, got {seconds}")
        return cls(max_frames=max(1, round(seconds * frame_rate)), **settings)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale not in (0.0, 1.0)


@dataclass(frozen=True)
class DecodeOptions:
    """How the decode loop runs, never what it samples: greedy decoding gives the same tokens either way.

    ``static_cache`` preallocates the self- and cross-attention caches (fixed shapes, so no
    reallocation as the clip grows, and what ``compile`` needs); ``compile`` runs the decoder step
    through ``torch.compile`` (with CUDA graphs on a GPU), paying a compile on first use per shape
    (batch, text length, clip length); a process that keeps changing them reaches dynamo's recompile
    limit, after which the step runs uncompiled.
    """

    static_cache: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.compile and not self.static_cache:
            # a growing cache changes shape every step: a recompile per step until dynamo gives up
            raise GenerationError("compiling the decode step needs the static cache, not the dynamic one")


@dataclass
class GenerationResult:
    codes: list[np.ndarray]  # per text: (frames_i, C) int64, real codes only, delay reverted
    frames: list[int]
    stopped_on_eos: list[bool]  # False where the length cap forced the end
    decode_steps: int  # run after the initial BOS step
    seconds: float
    delayed: torch.Tensor  # (B, 1 + decode_steps, C) the raw decode steps, BOS step included (for inspection)

    @property
    def frames_per_second(self) -> float:
        return sum(self.frames) / self.seconds if self.seconds > 0 else math.inf


# --- logits -> token ----------------------------------------------------------------------------


def guide(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, top_k: int | None, allowed: torch.Tensor
) -> torch.Tensor:
    """Classifier-free guidance over (B, C, V) logits; ids that may not be sampled come out as -inf."""
    guided = cond + scale * (cond - uncond)
    if top_k is None:
        return guided.masked_fill(~allowed, -math.inf)
    # Dia's CFG filter: guidance only chooses the candidate set, the conditional logits rank it
    # (sampling from the sharpened guided logits directly tends to sound harsh at scale 3)
    return cond.masked_fill(~cfg_candidates(guided, top_k, allowed), -math.inf)


def cfg_candidates(guided: torch.Tensor, top_k: int, allowed: torch.Tensor) -> torch.Tensor:
    """(B, C, V) bool: the top-k of the guided logits over the whole vocabulary, then the allowed ids.

    The order is Dia's and transformers': a special id ranked in the top-k takes a slot, so fewer
    than k real codes may remain (greedy decoding then agrees with theirs token for token).
    """
    k = min(top_k, guided.shape[-1])
    keep = torch.zeros_like(guided, dtype=torch.bool).scatter_(-1, guided.topk(k, dim=-1).indices, True)
    keep &= allowed
    # A row whose k slots all went to special ids (small k only) has no candidate left: Dia's and
    # transformers' greedy argmax over all -inf then yields id 0 (their sampling fails on NaN), so we
    # keep code 0 there, which greedy decoding needs to agree and sampling needs to have a token at all
    keep[..., 0] |= ~keep.any(dim=-1)
    return keep


def eos_only_if_top(logits: torch.Tensor, eos: int, reference: int = 0) -> torch.Tensor:
    """The reference codebook ends only when EOS is its single most likely token (Dia's rule).

    Stopping is irreversible, so a low-probability EOS drawn at temperature 1 would cut the music
    short; when EOS *is* the top token it is taken outright, otherwise it is removed.
    """
    first = logits[:, reference]
    eos_top = first.argmax(dim=-1) == eos
    only_eos = torch.full_like(first, -math.inf)
    only_eos[:, eos] = 0.0
    no_eos = first.clone()
    no_eos[:, eos] = -math.inf
    logits = logits.clone()
    logits[:, reference] = torch.where(eos_top[:, None], only_eos, no_eos)
    return logits


def sample_logits(
    logits: torch.Tensor, temperature: float, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Sample ids from (..., V) logits: temperature (0 = argmax, never clamped), then nucleus top-p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        probs = nucleus(probs, top_p)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the (..., V) probabilities outside the top-p nucleus (unnormalised, for ``multinomial``).

    Dia's boundary: a token goes only when the mass ranked strictly above it *exceeds* top_p, so the
    top token always stays and one whose predecessors cover exactly top_p stays too.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # the mass above each token as Dia computes it (the cumsum shifted by one), not cumsum - p,
    # which can round across the boundary
    above = torch.cat([torch.zeros_like(sorted_probs[..., :1]), sorted_probs.cumsum(dim=-1)[..., :-1]], dim=-1)
    return probs.scatter(-1, order, sorted_probs.masked_fill(above > top_p, 0.0))


# --- the decode loop ----------------------------------------------------------------------------

STOP_CHECK_EVERY = 8  # decode steps between the loop's checks for the end (each one a host sync)


@torch.no_grad()
def generate_codes(
    model: DiaForConditionalGeneration,
    texts: list[str],
    pattern: DelayPattern,
    vocab: AudioVocab,
    sampling: SamplingConfig,
    options: DecodeOptions = DecodeOptions(),
) -> GenerationResult:
    """Generate codec frames for each text; returns real codes only, ready for ``codec.decode``."""
    _check_model(model, texts, pattern, vocab, sampling)
    start = time.perf_counter()
    device = model.device
    batch, codebooks = len(texts), pattern.num_streams
    delays = torch.tensor(pattern.delays, device=device)  # (C,)
    allowed = sampleable(vocab, pattern.reference, device)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    max_steps = pattern.decode_steps(sampling.max_frames)
    cap_step = sampling.max_frames + 1  # the reference codebook's EOS step for a clip of max_frames

    # Encode the texts once. With CFG the unconditional rows are the *training* "no text" input
    # (encode_text(None)), appended after the conditional rows: one batched decoder pass serves both.
    rows = list(texts) + ([None] * batch if sampling.uses_cfg else [])
    input_ids, text_mask = (t.to(device) for t in encode_text(rows))
    was_training = model.training
    model.eval()
    try:
        encoder_hidden = model.get_encoder()(input_ids=input_ids, attention_mask=text_mask).last_hidden_state
        cache = new_cache(model, max_steps, input_ids.shape[1], options.static_cache)
        compiled = _compiled_step(device) if options.compile else None

        tokens = torch.full((batch, max_steps + 1, codebooks), vocab.pad, dtype=torch.long, device=device)
        tokens[:, 0] = vocab.bos
        eos_step = torch.full((batch,), -1, dtype=torch.long, device=device)  # -1: still going
        natural_eos = torch.zeros(batch, dtype=torch.bool, device=device)
        step = 0
        for step in range(1, max_steps + 1):
            # 1. one decoder step on the previous column (the KV cache holds everything before it)
            previous = tokens[:, step - 1 : step]  # (B, 1, C)
            if sampling.uses_cfg:
                previous = previous.repeat(2, 1, 1)
            position = torch.full((1, 1), step - 1, dtype=torch.long, device=device)
            # The first step runs uncompiled: it allocates the static caches outside the compiler,
            # where transformers marks their addresses fixed (else CUDA graphs are skipped for the
            # in-place cache writes), and fills the cross-attention cache; the rest share one graph.
            step_logits = decoder_step if compiled is None or step == 1 else compiled
            logits = step_logits(model, previous, position, encoder_hidden, text_mask, cache)
            logits = logits.view(-1, codebooks, vocab.vocab_size).float()  # (B|2B, C, V)

            # 2. guidance, then the sampling rules: no special ids except EOS on the reference codebook
            sampled = sample_step(logits, sampling, allowed, vocab, generator, pattern.reference)  # (B, C)

            # 3. the reference codebook decides the end: its EOS (or the length cap) fixes e for the sample
            eos_step = mark_ends(sampled, step, eos_step, natural_eos, cap_step, vocab.eos, pattern.reference)

            # 4. forced tokens: BOS before a codebook starts, its EOS and then PAD after the end
            tokens[:, step] = force_delay_tokens(sampled, step, eos_step, delays, vocab)

            # 5. stop once every sample's last codebook has placed its EOS. Asking waits for the
            # device, which then idles while the host queues the next step, so it is asked every
            # few steps and the steps past the end are cut below (they only wrote PAD)
            if step % STOP_CHECK_EVERY == 0 and bool(((eos_step >= 0) & (step >= eos_step + pattern.max_delay)).all()):
                break
    finally:
        model.train(was_training)

    # every sample has ended by max_steps, and the loop would have stopped at its last EOS
    step = min(step, int(eos_step.max()) + pattern.max_delay)
    delayed = tokens[:, : step + 1]
    frames = (eos_step - 1).tolist()
    codes = frames_of(delayed, frames, pattern, vocab)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return GenerationResult(
        codes=codes,
        frames=frames,
        stopped_on_eos=natural_eos.tolist(),
        decode_steps=step,
        seconds=time.perf_counter() - start,
        delayed=delayed.cpu(),
    )


def mark_ends(
    sampled: torch.Tensor,
    step: int,
    eos_step: torch.Tensor,
    natural_eos: torch.Tensor,
    cap_step: int,
    eos: int,
    reference: int = 0,
) -> torch.Tensor:
    """The EOS step of each sample (-1 while its reference codebook is still going), once it chose EOS
    or reached the length cap; ``natural_eos`` is updated in place for the samples that chose it."""
    going = eos_step < 0
    chose_eos = going & (sampled[:, reference] == eos)
    natural_eos |= chose_eos
    return torch.where(chose_eos | (going & (step == cap_step)), step, eos_step)


def sample_step(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    allowed: torch.Tensor,
    vocab: AudioVocab,
    generator: torch.Generator,
    reference: int = 0,
) -> torch.Tensor:
    """(B, C) tokens from one step's (B|2B, C, V) logits: guidance (the unconditional rows come
    second), the sampling rules (no special ids except EOS on the reference codebook), then sampling."""
    if sampling.uses_cfg:
        cond, uncond = logits.split(logits.shape[0] // 2)
        logits = guide(cond, uncond, sampling.cfg_scale, sampling.cfg_filter_top_k, allowed)
    else:
        logits = logits.masked_fill(~allowed, -math.inf)
    logits = eos_only_if_top(logits, vocab.eos, reference)
    return sample_logits(logits, sampling.temperature, sampling.top_p, generator)


def frames_of(delayed: torch.Tensor, frames: list[int], pattern: DelayPattern, vocab: AudioVocab) -> list[np.ndarray]:
    """Each sample's (frames, C) real codes from the decoder's (B, S, C) tokens, BOS step first:
    frame t of codebook c sits at step t + 1 + d_c."""
    reverted = pattern.revert(delayed[:, 1:])
    codes = [reverted[b, : frames[b]].cpu().numpy().astype(np.int64) for b in range(len(frames))]
    for b, c in enumerate(codes):
        if c.size and (c.min() < 0 or c.max() >= vocab.codebook_size):
            raise RuntimeError(f"sample {b}: generated frames contain a special token (a decode-loop bug)")
    return codes


def new_cache(model: DiaForConditionalGeneration, steps: int, text_length: int, static: bool) -> Any:
    """Self-attention cache for ``steps`` decoder inputs and a cross-attention one for the text."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

    if static:
        return EncoderDecoderCache(
            StaticCache(config=model.config, max_cache_len=steps),
            StaticCache(config=model.config, max_cache_len=text_length),
        )
    return EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))


def decoder_step(
    model: DiaForConditionalGeneration,
    previous: torch.Tensor,
    position: torch.Tensor,
    encoder_hidden: torch.Tensor,
    text_mask: torch.Tensor,
    cache: Any,
) -> torch.Tensor:
    """One decoder step on the previous column -> logits (rows, 1, C * V).

    The decoder and head are called directly: DiaModel.forward walks every module on each call to
    check for gradient checkpointing, a cost measured in benchmarks/RESULTS.md.
    """
    hidden = model.get_decoder()(
        input_ids=previous,
        position_ids=position,
        encoder_hidden_states=encoder_hidden,
        encoder_attention_mask=text_mask,
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    return model.logits_dense(hidden)


_COMPILED: dict[str, Any] = {}


def _compiled_step(device: torch.device) -> Any:
    """`decoder_step` compiled once per device type (CUDA graphs on GPU); shapes are static per call."""
    if device.type not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[device.type] = torch.compile(decoder_step, mode=mode, dynamic=False)
    return _COMPILED[device.type]


def _check_model(
    model: DiaForConditionalGeneration,
    texts: list[str],
    pattern: DelayPattern,
    vocab: AudioVocab,
    sampling: SamplingConfig,
) -> None:
    if not texts:
        raise GenerationError("generate_codes needs at least one text")
    if any(not text.strip() for text in texts):
        raise GenerationError("empty text: give a caption (the empty prompt is what CFG guides away from)")
    config = model.config
    if list(config.delay_pattern) != pattern.to_list():
        raise GenerationError(
            f"the model was set up for delay pattern {list(config.delay_pattern)} but generation "
            f"uses {pattern}: pass diamusic.model.pattern_of(model)"
        )
    dec = config.decoder_config
    if (dec.num_channels, dec.vocab_size) != (vocab.num_streams, vocab.vocab_size):
        raise GenerationError(
            f"the model has {dec.num_channels} streams x vocab {dec.vocab_size}, the vocabulary "
            f"{vocab.num_streams} x {vocab.vocab_size}"
        )
    most = longest_cap(model, pattern)
    if sampling.max_frames > most:  # past the model's positions, and the cache's memory grows without bound
        raise GenerationError(
            f"a length cap of {sampling.max_frames} frames needs {pattern.decode_steps(sampling.max_frames) + 1} "
            f"decoder positions; the model has {dec.max_position_embeddings}, so at most {most} frames"
        )


def longest_cap(model: DiaForConditionalGeneration, pattern: DelayPattern) -> int:
    """The longest length cap in frames whose decode steps (BOS step included) fit the model's positions."""
    return model.config.decoder_config.max_position_embeddings - 2 - pattern.max_delay


# --- from a run directory to audio files --------------------------------------------------------


def check_output(out: Path, stem: str, overwrite: bool) -> None:
    """Refuse an output directory that already holds generations, unless told to overwrite them."""
    if not overwrite and out.is_dir() and any(out.glob(f"{stem}_*")):
        raise GenerationError(f"{out} already holds {stem}_* files: choose another output directory or overwrite")


def generate_files(
    model: DiaForConditionalGeneration,
    texts: list[str],
    codec: Codec,
    sampling: SamplingConfig,
    out: Path,
    stem: str,
    settings: dict[str, Any],
    overwrite: bool = False,
    options: DecodeOptions = DecodeOptions(),
) -> tuple[GenerationResult, list[Path]]:
    """Generate with the model's own pattern; per text a WAV, its codes (.npy) and a JSON sidecar
    with every setting. Returns the result and the WAV paths. Files of an earlier call with the same
    ``stem`` in ``out`` are refused unless ``overwrite``, before anything is generated."""
    import soundfile as sf

    check_output(out, stem, overwrite)
    pattern, vocab = pattern_of(model), vocab_of(model)
    _check_model(model, texts, pattern, vocab, sampling)  # a refused request leaves no folder behind
    try:  # before generating, so an unwritable destination costs nothing
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenerationError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    result = generate_codes(model, texts, pattern, vocab, sampling, options)
    paths = []
    for i, (text, codes) in enumerate(zip(texts, result.codes, strict=True)):
        base = out / f"{stem}_{i:02d}"
        wave = decode_channels(codec, codes, vocab.audio_channels)  # (samples, 2) for stereo: a 2-channel WAV
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


def write_samples(
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
    out = samples_dir(run_dir, step)
    _, paths = generate_files(model, prompts, codec, sampling, out, "sample", {"step": step}, overwrite=True)
    if tracker is not None:
        import soundfile as sf

        for i, path in enumerate(paths):
            wave, rate = sf.read(path, dtype="float32")
            tracker.log_audio(f"samples/{i}", wave, rate, step, caption=prompts[i])
    return paths
