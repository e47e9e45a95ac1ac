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

import itertools
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


def sampling_grid(
    seconds: float,
    frame_rate: float,
    temperatures: list[float],
    cfg_scales: list[float],
    top_ps: list[float | None],
    **fixed: Any,
) -> dict[str, SamplingConfig]:
    """Every combination of the listed settings, by the file stem its clips get: "gen" for a single
    one, else e.g. "gen_t0.7_cfg3_p0.9" (the p part only where a top-p is set)."""
    grid = {}
    for t, c, p in itertools.product(temperatures, cfg_scales, top_ps):
        stem = f"gen_t{t:g}_cfg{c:g}" + (f"_p{p:g}" if p is not None else "")
        grid[stem] = SamplingConfig.for_seconds(seconds, frame_rate, cfg_scale=c, temperature=t, top_p=p, **fixed)
    if len(grid) < len(temperatures) * len(cfg_scales) * len(top_ps):
        raise GenerationError("a setting is listed twice: each combination must be new")
    return grid if len(grid) > 1 else {"gen": next(iter(grid.values()))}


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
    prompt: np.ndarray | None = None,
) -> GenerationResult:
    """Generate codec frames for each text; returns real codes only, ready for ``codec.decode``.

    ``prompt``: real codes (P, C), or (B, P, C) one per text, for the clips to continue (Dia's audio
    prompt), laid out as `prompt_steps` says. The result holds the continuation only, up to
    ``sampling.max_frames`` frames after the prompt."""
    prompt_frames = _check_prompt(prompt, len(texts), pattern, vocab)
    _check_model(model, texts, pattern, vocab, sampling, prompt_frames)
    start = time.perf_counter()
    device = model.device
    batch, codebooks = len(texts), pattern.num_streams
    delays = torch.tensor(pattern.delays, device=device)  # (C,)
    allowed = sampleable(vocab, pattern.reference, device)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    cap_step = prompt_frames + sampling.max_frames + 1  # the reference codebook's EOS step at the cap
    max_steps = cap_step + pattern.max_delay

    # With CFG the unconditional rows (training's "no text", encode_text(None)) follow: one pass serves both
    rows = list(texts) + ([None] * batch if sampling.uses_cfg else [])
    input_ids, text_mask = (t.to(device) for t in encode_text(rows))
    was_training = model.training
    model.eval()
    try:
        encoder_hidden = model.get_encoder()(input_ids=input_ids, attention_mask=text_mask).last_hidden_state
        cache = new_cache(model, max_steps, input_ids.shape[1], options.static_cache)
        compiled = _compiled_step(device) if options.compile else None

        tokens = torch.full((batch, max_steps + 1, codebooks), vocab.pad, dtype=torch.long, device=device)
        known = prompt_steps(prompt, batch, pattern, vocab, device)  # (B, 1 + P + max delay, C), PAD: to sample
        first = prompt_frames + 1  # the first step with a token to sample; before it BOS and the prompt
        tokens[:, :first] = known[:, :first]
        eos_step = torch.full((batch,), -1, dtype=torch.long, device=device)  # -1: still going
        natural_eos = torch.zeros(batch, dtype=torch.bool, device=device)
        step = 0
        for step in range(first, max_steps + 1):
            # 1. one decoder step on the previous column (the KV cache holds everything before it);
            # the first runs on every known step before it (BOS, and the prompt's steps)
            previous, position = decoder_inputs(tokens, 0 if step == first else step - 1, step, sampling.uses_cfg)
            # The first step runs uncompiled: it allocates the static caches outside the compiler,
            # where transformers marks their addresses fixed (else CUDA graphs are skipped for the
            # in-place cache writes), and fills the cross-attention cache; the rest share one graph.
            step_logits = decoder_step if compiled is None or step == first else compiled
            logits = step_logits(model, previous, position, encoder_hidden, text_mask, cache)[:, -1:]
            logits = logits.reshape(-1, codebooks, vocab.vocab_size).float()  # (B|2B, C, V)

            # 2. guidance, then the sampling rules: no special ids except EOS on the reference codebook
            sampled = sample_step(logits, sampling, allowed, vocab, generator, pattern.reference)  # (B, C)

            # 3. the reference codebook decides the end: its EOS (or the length cap) fixes e for the sample
            eos_step = mark_ends(sampled, step, eos_step, natural_eos, cap_step, vocab.eos, pattern.reference)

            # 4. forced tokens: BOS before a codebook starts, its EOS and then PAD after the end; the
            # prompt's frames on the codebooks still behind it (never where an EOS or PAD goes)
            tokens[:, step] = force_delay_tokens(sampled, step, eos_step, delays, vocab)
            if step < known.shape[1]:
                tokens[:, step] = torch.where(known[:, step] != vocab.pad, known[:, step], tokens[:, step])

            # 5. stop once every sample's last codebook has placed its EOS. Asking waits for the device, which
            # then idles while the host queues the next step: asked every few steps, the extra PAD steps cut below
            if step % STOP_CHECK_EVERY == 0 and bool(((eos_step >= 0) & (step >= eos_step + pattern.max_delay)).all()):
                break
    finally:
        model.train(was_training)

    # every sample has ended by max_steps, and the loop would have stopped at its last EOS
    delayed = tokens[:, : min(step, int(eos_step.max()) + pattern.max_delay) + 1]
    codes = [c[prompt_frames:] for c in frames_of(delayed, (eos_step - 1).tolist(), pattern, vocab)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    steps = delayed.shape[1] - 1 - prompt_frames
    return GenerationResult(codes, [len(c) for c in codes], natural_eos.tolist(), steps, seconds, delayed.cpu())


def decoder_inputs(tokens: torch.Tensor, begin: int, step: int, uses_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's input columns ``begin..step-1`` (B|2B, L, C), CFG's rows repeated, and their positions."""
    previous = tokens[:, begin:step]
    return (previous.repeat(2, 1, 1) if uses_cfg else previous), torch.arange(begin, step, device=tokens.device)[None]


def prompt_steps(
    prompt: np.ndarray | None, batch: int, pattern: DelayPattern, vocab: AudioVocab, device: torch.device
) -> torch.Tensor:
    """(B, 1 + P + max delay, C) decode steps a prompt of P frames fixes: BOS first, its frames under the
    pattern, PAD where a token is still to be sampled (after each codebook's last prompt frame). Steps
    0..P hold only known tokens and run as one prefill pass; in the next max-delay steps the codebooks
    still behind (delay > 0) take the prompt's frames while the others are sampled."""
    frames = torch.tensor(np.zeros((0, pattern.num_streams)) if prompt is None else np.asarray(prompt), device=device)
    frames = frames.long().expand(batch, *frames.shape[-2:])
    first = torch.full((batch, 1, pattern.num_streams), vocab.bos, dtype=torch.long, device=device)
    return torch.cat([first, pattern.apply(frames, vocab.bos, vocab.pad)], dim=1)


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


def _check_prompt(prompt: np.ndarray | None, batch: int, pattern: DelayPattern, vocab: AudioVocab) -> int:
    """The prompt's frame count (0 for none), after checking its shape and codes."""
    if prompt is None:
        return 0
    prompt = np.asarray(prompt)
    streams = pattern.num_streams
    if prompt.ndim not in (2, 3) or prompt.shape[-1] != streams or (prompt.ndim == 3 and len(prompt) != batch):
        raise GenerationError(
            f"a prompt must be codes of shape (frames, {streams}) or ({batch}, frames, {streams}), got {prompt.shape}"
        )
    if prompt.size and (prompt.min() < 0 or prompt.max() >= vocab.codebook_size):
        raise GenerationError(f"a prompt's codes must be in [0, {vocab.codebook_size}): strip special tokens first")
    return prompt.shape[-2]


def _check_model(
    model: DiaForConditionalGeneration,
    texts: list[str],
    pattern: DelayPattern,
    vocab: AudioVocab,
    sampling: SamplingConfig,
    prompt_frames: int = 0,
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
    if prompt_frames >= most:
        raise GenerationError(
            f"a prompt of {prompt_frames} frames leaves nothing to generate: the model's "
            f"{dec.max_position_embeddings} decoder positions hold at most {most} frames (prompt included)"
        )
    total = prompt_frames + sampling.max_frames
    if total > most:  # past the model's positions, and the cache's memory grows without bound
        after = f" after a prompt of {prompt_frames} frames" if prompt_frames else ""
        raise GenerationError(
            f"a length cap of {sampling.max_frames} frames{after} needs {pattern.decode_steps(total) + 1} "
            f"decoder positions; the model has {dec.max_position_embeddings}, so at most {most - prompt_frames} frames"
        )


def longest_cap(model: DiaForConditionalGeneration, pattern: DelayPattern) -> int:
    """The longest length cap in frames whose decode steps (BOS step included) fit the model's positions."""
    return model.config.decoder_config.max_position_embeddings - 2 - pattern.max_delay


# --- from a run directory to audio files --------------------------------------------------------


def check_output(out: Path, stem: str, overwrite: bool) -> None:
    """Refuse an output directory that already holds generations, unless told to overwrite them."""
    if not overwrite and out.is_dir() and any(out.glob(f"{stem}_*")):
        raise GenerationError(
            f"{out} already holds {stem}_* files: choose another output directory, or overwrite them", "overwrite"
        )


MIN_PROMPT_RATE = 0.5  # of the codec's rate: a prompt below it lacks the top half of the band, so it is refused


def prompt_codes(path: str | Path, codec: Codec, audio_channels: int, seconds: float | None = None) -> np.ndarray:
    """An audio file's first ``seconds`` as prompt codes (frames, streams), laid out as `prepare` lays
    out its inputs for the run's audio channels (mono averaged, mono copied to both sides)."""
    import soundfile as sf

    from diamusic.codecs import encode_channels
    from diamusic.data.sources import Rejected, to_audio_channels

    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for what is not audio
        raise GenerationError(f"cannot read the prompt audio {path} ({type(exc).__name__})") from exc
    if rate < MIN_PROMPT_RATE * codec.sample_rate:
        raise GenerationError(
            f"the prompt audio {path} is at {rate} Hz, under half the codec's {codec.sample_rate} Hz: "
            "give a recording at its rate"
        )
    wave = wave[: int(seconds * rate)] if seconds is not None else wave
    if not len(wave):
        raise GenerationError(f"the prompt audio {path} holds no samples")
    if not np.isfinite(wave).all():
        raise GenerationError(f"the prompt audio {path} holds non-finite samples (NaN or inf)")
    try:
        wave, _ = to_audio_channels(wave if wave.shape[1] > 1 else wave[:, 0], audio_channels)
    except Rejected as exc:
        raise GenerationError(f"the prompt audio {path}: {exc}") from exc
    return encode_channels(codec, [wave.reshape(len(wave), -1)], rate)[0]


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
    prompt: np.ndarray | None = None,
    keep_prompt: bool = False,
) -> tuple[GenerationResult, list[Path]]:
    """Generate with the model's own pattern; per text a WAV, its codes (.npy) and a JSON sidecar
    with every setting. Returns the result and the WAV paths. Files of an earlier call with the same
    ``stem`` in ``out`` are refused unless ``overwrite``, before anything is generated. With a
    ``prompt`` (codes, see `generate_codes`) the files hold the continuation, or the prompt and the
    continuation with ``keep_prompt``."""
    import soundfile as sf

    check_output(out, stem, overwrite)
    pattern, vocab = pattern_of(model), vocab_of(model)
    # a refused request leaves no folder behind
    _check_model(model, texts, pattern, vocab, sampling, _check_prompt(prompt, len(texts), pattern, vocab))
    try:  # before generating, so an unwritable destination costs nothing
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenerationError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    result = generate_codes(model, texts, pattern, vocab, sampling, options, prompt)
    if prompt is not None:
        settings = {**settings, "prompt_frames": int(np.shape(prompt)[-2]), "keep_prompt": keep_prompt}
    paths = []
    for i, (text, codes) in enumerate(zip(texts, result.codes, strict=True)):
        if prompt is not None and keep_prompt:  # decoded as one clip: no seam where the prompt ends
            codes = np.concatenate([np.asarray(prompt if np.ndim(prompt) == 2 else prompt[i]), codes])
        name = f"{stem}_{i:02d}"  # a stem may hold dots (gen_t0.7_...): no with_suffix
        wave = decode_channels(codec, codes, vocab.audio_channels)  # (samples, 2) for stereo: a 2-channel WAV
        sf.write(out / f"{name}.wav", wave, codec.sample_rate)
        np.save(out / f"{name}.npy", codes)
        sidecar = {
            **settings,
            "pattern": pattern.to_list(),
            **asdict(sampling),
            "text": text,
            "frames": int(codes.shape[0]),
            "seconds": float(codes.shape[0] / codec.frame_rate),
            "stopped_on_eos": bool(result.stopped_on_eos[i]),
        }
        (out / f"{name}.json").write_text(json.dumps(sidecar, indent=2))
        paths.append(out / f"{name}.wav")
    return result, paths


def write_samples(
    model: DiaForConditionalGeneration,
    run_dir: Path,
    step: int,
    prompts: list[str],
    seconds: float,
    codec: Codec,
    tracker: Tracker | None = None,
    temperatures: list[float] | tuple[float, ...] = (1.0,),
) -> list[Path]:
    """Fixed prompts and seed, so checkpoints are compared by ear on the same material; one set of clips
    per temperature (``sample_NN`` for one, ``sample_t0.7_NN`` for several)."""
    out = samples_dir(run_dir, step)
    paths = []
    for t in temperatures:
        sampling = SamplingConfig.for_seconds(seconds, codec.frame_rate, seed=0, temperature=t)
        stem, tag = ("sample", "") if len(temperatures) == 1 else (f"sample_t{t:g}", f"t{t:g}/")
        _, made = generate_files(model, prompts, codec, sampling, out, stem, {"step": step}, overwrite=True)
        paths += made
        if tracker is not None:
            import soundfile as sf

            for i, path in enumerate(made):
                wave, rate = sf.read(path, dtype="float32")
                tracker.log_audio(f"samples/{tag}{i}", wave, rate, step, caption=prompts[i])
    return paths
