"""Evaluating one checkpoint: teacher-forced losses (split into edge and interior frames, computed
as training computes them: `diamusic.teacher_forced`), and audio generated from eval captions
scored for speed, melody and closeness to the data.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diamusic import pitch
from diamusic.audio_metrics import audio_scores, key_agreement, tempo_agreement
from diamusic.clap import Clap, ClapError, frechet_distance
from diamusic.codecs import decode_channels
from diamusic.config import from_dict
from diamusic.data.dataset import CodesDataset
from diamusic.errors import DiamusicError
from diamusic.generate import SamplingConfig, generate_codes
from diamusic.runs import LoadedRun, load_run
from diamusic.teacher_forced import fixed_eval_batches, interior_edge, teacher_forced
from diamusic.threads import usable_cores
from diamusic.tracking import read_metrics

IN_TUNE_CENTS = 25.0  # every pitch is within 50 cents of some semitone: a quarter of that is the test
# generations needed for the Fréchet distance: below it, sampling noise in the 50 feature means and
# variances (about 26% relative error on a variance from 30 clips) swamps any difference between models
FRECHET_MIN_CLIPS = 30


class EvalError(DiamusicError):
    """An evaluation that cannot run as asked."""


# --- generated audio ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A caption from the eval split, with what its clip tells about the music asked for."""

    text: str
    key: str | None  # from the built-in corpus's tags
    reference: np.ndarray  # the clip's codes (frames, C), decoded for reference-based metrics
    melody: list[list[float]] | None  # the clip's melody notes (pitch, start s, duration s)


def eval_prompts(data: CodesDataset, count: int) -> list[Prompt]:
    """The first clip of each of the first ``count`` eval sources, in the dataset's order (so every
    run gets the same ones); a source's later clips are taken only when sources run out."""
    firsts, rest, seen = [], [], set()
    for i, source in enumerate(data.sources):
        (rest if source in seen else firsts).append(i)
        seen.add(source)
    prompts = []
    for i in (firsts + rest)[:count]:
        row = data.row(i)
        key = (row.get("tags") or {}).get("key")
        prompts.append(Prompt(data.text(i), key, np.asarray(data.codes(i)), row.get("melody")))
    return prompts


MIN_NOTE_FRAMES = 3  # pitch-track frames (23 ms each) a note must hold: shorter runs are glides between notes


def note_rate(voiced: np.ndarray, midi: np.ndarray, seconds: float) -> float:
    """Notes per second: runs of voiced frames on one rounded pitch, at least MIN_NOTE_FRAMES long."""
    if seconds <= 0:
        return math.nan
    rounded = np.where(voiced, np.round(midi), -1)
    bounds = np.flatnonzero(np.concatenate([[True], rounded[1:] != rounded[:-1], [True]]))
    runs = zip(bounds[:-1], bounds[1:], strict=True)
    return float(sum(1 for a, b in runs if rounded[a] >= 0 and b - a >= MIN_NOTE_FRAMES) / seconds)


def melody_metrics(wave: np.ndarray, rate: int, key: str | None, track: pitch.Track | None = None) -> dict[str, float]:
    """Reference-free: voiced ratio, pitch stability, in-tune ratio, note rate, in-key ratio (with a key)."""
    track = track if track is not None else pitch.pitch_track(wave, rate)
    _, f0, voiced = track
    midi = np.where(voiced, pitch.hz_to_midi(np.where(voiced, f0, 440.0)), 0.0)
    out = pitch.melody_stats(wave, rate, key, track)
    cents = 100 * np.abs(midi[voiced] - np.round(midi[voiced]))
    out["in_tune_ratio"] = float((cents <= IN_TUNE_CENTS).mean()) if voiced.any() else math.nan
    out["note_rate"] = note_rate(voiced, midi, len(wave) / rate)
    return out


def melody_agreement(wave: np.ndarray, rate: int, notes: list[list[float]], track: pitch.Track | None = None) -> float:
    """Raw pitch accuracy (mir_eval, 50 cents) of a wave's pitch track against reference notes."""
    import mir_eval

    times, f0, _ = track if track is not None else pitch.pitch_track(wave, rate)
    ref = np.zeros_like(f0)
    for p, start, duration in notes:
        ref[(times >= start) & (times < start + duration)] = 440.0 * 2 ** ((p - 69) / 12)
    if not (ref > 0).any():
        return math.nan
    with warnings.catch_warnings():  # an unvoiced clip scores 0, and the table says why; no warning per clip
        warnings.filterwarnings("ignore", "Estimated melody has no voiced frames", UserWarning)
        voicing = mir_eval.melody.to_cent_voicing(times, ref, times, f0)
        return float(mir_eval.melody.raw_pitch_accuracy(*voicing, cent_tolerance=50.0))


def reference_track(wave: np.ndarray, rate: int) -> pitch.Track:
    """The pitch track of a reference clip. An ablation scores the same references once per run, so
    each is tracked once per process (pyin is most of an evaluation's time); treat it as read-only."""
    return _track_of(np.ascontiguousarray(wave, dtype=np.float32).tobytes(), rate)


@functools.lru_cache(maxsize=32)
def _track_of(wave: bytes, rate: int) -> pitch.Track:
    return pitch.pitch_track(np.frombuffer(wave, dtype=np.float32), rate)


def audio_features(wave: np.ndarray, rate: int) -> np.ndarray:
    """Mean and std over time of chroma (12) and MFCC (13): a clip-level summary, ours, not a learnt embedding."""
    import librosa

    y = pitch.to_analysis_rate(wave, rate)
    chroma = librosa.feature.chroma_stft(y=y, sr=pitch.ANALYSIS_RATE, tuning=0.0)
    mfcc = librosa.feature.mfcc(y=y, sr=pitch.ANALYSIS_RATE, n_mfcc=13)
    return np.concatenate([chroma.mean(1), chroma.std(1), mfcc.mean(1), mfcc.std(1)])


def frechet_diagonal(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians with diagonal covariances fitted to rows of ``a`` and ``b``,
    each feature first scaled by its spread in ``b`` (the real clips).

    Diagonal because an evaluation generates a handful of clips, too few for a full covariance of
    50 features; scaled so that MFCC energy (hundreds) does not drown chroma (0 to 1): each feature
    counts in units of the real data's own variation.
    """
    scale = b.std(0)
    scale = np.where(scale > 1e-8, scale, 1.0)  # a constant real feature is compared unscaled
    a, b = a / scale, b / scale
    mu_a, mu_b = a.mean(0), b.mean(0)
    var_a, var_b = a.var(0), b.var(0)
    return float(((mu_a - mu_b) ** 2).sum() + (var_a + var_b - 2 * np.sqrt(var_a * var_b)).sum())


def usage_divergence(generated: list[np.ndarray], real: list[np.ndarray], codebook_size: int) -> list[float]:
    """Jensen-Shannon divergence (nats) per codebook between generated and real code histograms."""
    out = []
    for c in range(real[0].shape[1]):
        p = np.bincount(np.concatenate([g[:, c] for g in generated]), minlength=codebook_size) + 1e-9
        q = np.bincount(np.concatenate([r[:, c] for r in real]), minlength=codebook_size) + 1e-9
        p, q = p / p.sum(), q / q.sum()
        m = (p + q) / 2
        out.append(float(0.5 * (p * np.log(p / m)).sum() + 0.5 * (q * np.log(q / m)).sum()))
    return out


def generated_metrics(
    run: LoadedRun, prompts: list[Prompt], seconds: float, audio_dir: Path | None = None, clap: Clap | None = None
) -> dict[str, float]:
    """Generate one clip per prompt (seed = its index) and score it; means over prompts.

    With ``audio_dir``, each generation and its reference (its first ``seconds``) are kept as ``gen_NN.wav`` /
    ``ref_NN.wav`` beside ``prompts.json`` (the captions) and ``clips.json`` (each generation's length and whether it
    stopped on EOS), for listening. With ``clap``, the CLAP score of each
    generation and of each reference with its caption, and the FAD between the two sets (30+ clips).
    """
    codec, rows, clips = run.codec, [], []
    sampling_seconds = 0.0
    frames = decode_steps = 0
    generated_codes, generated_feats, real_feats, waves = [], [], [], []
    for i, prompt in enumerate(prompts):
        sampling = SamplingConfig.for_seconds(seconds, codec.frame_rate, seed=i)
        result = generate_codes(run.model, [prompt.text], run.pattern, run.vocab, sampling)
        sampling_seconds += result.seconds
        frames += result.frames[0]
        decode_steps += result.decode_steps
        codes = result.codes[0]
        generated_codes.append(codes)
        channels = run.vocab.audio_channels
        wave = decode_channels(codec, codes, channels) if len(codes) > 1 else _silence(codec.sample_rate, channels)
        reference = decode_channels(codec, prompt.reference, channels)
        if audio_dir is not None:  # the reference as long as a generation asked for, to listen to side by side
            _write_wavs(audio_dir, i, wave, reference[: round(seconds * codec.sample_rate)], codec.sample_rate)
        # the mid signal (L+R)/2 is scored under the mono names, so tables compare across layouts
        row = _audio_scores(_mid(wave), _mid(reference), prompt, codec.sample_rate)
        if channels == 2:
            for n, side in enumerate(("left", "right")):
                scores = _audio_scores(wave[:, n], reference[:, n], prompt, codec.sample_rate)
                row.update({f"{side}/{k}": v for k, v in scores.items()})
            row["side_correlation"] = side_correlation(wave)
            row["reference_side_correlation"] = side_correlation(reference)
        wave, reference = _mid(wave), _mid(reference)
        row["stopped_on_eos"] = float(result.stopped_on_eos[0])
        clips.append({"seconds": len(codes) / codec.frame_rate, "stopped_on_eos": bool(result.stopped_on_eos[0])})
        rows.append(row)
        generated_feats.append(audio_features(wave, codec.sample_rate))
        real_feats.append(audio_features(reference, codec.sample_rate))
        waves.append((wave, reference))
    if audio_dir is not None:
        (audio_dir / "prompts.json").write_text(json.dumps([p.text for p in prompts], indent=1))
        (audio_dir / "clips.json").write_text(json.dumps(clips, indent=1))  # for the report's listening table
    keys = sorted(set().union(*rows))  # the in-key and reference metrics exist only where a prompt has them
    out = {f"gen/{k}": _nanmean([r.get(k, math.nan) for r in rows]) for k in keys}
    audio_seconds = frames / codec.frame_rate
    out.update(
        {
            "gen/clips": len(prompts),
            # no pitch to score: their pitch metrics are left out of the means above, and the summary says how many
            "gen/unvoiced_clips": sum(r.get("voiced_ratio", 1.0) == 0 for r in rows),
            "gen/decode_steps": decode_steps / len(prompts),
            # wall-clock: meaningful only on a quiet machine, so the load it ran under goes with it
            "gen/frames_per_s": frames / max(sampling_seconds, 1e-9),
            "gen/real_time_factor": audio_seconds / max(sampling_seconds, 1e-9),
            "gen/seconds": audio_seconds / len(prompts),
            "machine/load_average": os.getloadavg()[0],
            "machine/cores": usable_cores(),
            "machine/threads": torch.get_num_threads(),  # CPU results differ in their last digits with it
        }
    )
    if len(prompts) >= FRECHET_MIN_CLIPS:
        out["gen/frechet_features"] = frechet_diagonal(np.stack(generated_feats), np.stack(real_feats))
    if clap is not None:
        out.update(clap_metrics(clap, [p.text for p in prompts], waves, codec.sample_rate))
    usage = usage_divergence(generated_codes, [p.reference for p in prompts], run.vocab.codebook_size)
    out.update({f"gen/usage_js/cb{c}": v for c, v in enumerate(usage)})
    out["gen/usage_js"] = float(np.mean(usage))
    return out


MIN_CONTINUATION_SECONDS = 0.5  # of the clip after the prompt: the truth a continuation is scored against


def continuation_metrics(
    run: LoadedRun, prompts: list[Prompt], prompt_seconds: float, seconds: float, audio_dir: Path | None = None
) -> dict[str, float]:
    """Each clip's first ``prompt_seconds`` continued for up to ``seconds`` (seed = its index, its caption
    as the text), and scored against what the clip really does next (the same length of it): chroma
    similarity, key agreement, tempo agreement, and melody agreement where the corpus knows the notes.
    Clips too short to hold a prompt and MIN_CONTINUATION_SECONDS after it are passed over. With
    ``audio_dir``, ``cont_NN.wav`` (prompt + continuation) beside ``cont_ref_NN.wav`` (the clip itself)."""
    codec, channels, rows = run.codec, run.vocab.audio_channels, []
    head = round(prompt_seconds * codec.frame_rate)
    for i, prompt in enumerate(prompts):
        if len(prompt.reference) < head + MIN_CONTINUATION_SECONDS * codec.frame_rate:
            continue
        sampling = SamplingConfig.for_seconds(seconds, codec.frame_rate, seed=i)
        result = generate_codes(
            run.model, [prompt.text], run.pattern, run.vocab, sampling, prompt=prompt.reference[:head]
        )
        made = result.codes[0]
        if len(made) < 2:  # nothing to score but silence
            rows.append({"chroma_cosine": 0.0, "key_agreement": 0.0, "tempo_agreement": 0.0})
            continue
        # each decoded with its prompt, as one would listen to it, then cut where the prompt ends
        cut = round(head * codec.sample_rate / codec.frame_rate)
        wave = decode_channels(codec, np.concatenate([prompt.reference[:head], made]), channels)
        truth = decode_channels(codec, prompt.reference[: head + len(made)], channels)
        if audio_dir is not None:
            _write_wavs(audio_dir, i, wave, truth, codec.sample_rate, "cont", "cont_ref")
        made_wave, true_wave = _mid(wave[cut:]), _mid(truth[cut:])
        row = {
            "chroma_cosine": pitch.chroma_cosine(true_wave, made_wave, codec.sample_rate),
            "key_agreement": key_agreement(true_wave, made_wave, codec.sample_rate),
            "tempo_agreement": tempo_agreement(true_wave, made_wave, codec.sample_rate),
        }
        if prompt.melody:  # the notes sounding after the prompt, timed from its end (its last frame's)
            t0 = head / codec.frame_rate
            notes = [[p, max(start - t0, 0.0), start + d - max(start, t0)] for p, start, d in prompt.melody
                     if start + d > t0]  # fmt: skip
            row["melody_agreement"] = melody_agreement(made_wave, codec.sample_rate, notes)
        rows.append(row)
    keys = sorted(set().union(*rows)) if rows else []
    out = {f"cont/{k}": _nanmean([r.get(k, math.nan) for r in rows]) for k in keys}
    out["cont/clips"] = len(rows)
    return out


def clap_metrics(
    clap: Clap, texts: list[str], waves: list[tuple[np.ndarray, np.ndarray]], rate: int
) -> dict[str, float]:
    """The mean CLAP score of the generations and of their references with their captions, and the FAD
    between the CLAP embeddings of the two sets (from FRECHET_MIN_CLIPS clips on)."""
    made = clap.embed_audio([w for w, _ in waves], rate)
    real = clap.embed_audio([r for _, r in waves], rate)
    text = clap.embed_text(texts)
    out = {
        "gen/clap_score": float(np.mean((made * text).sum(1))),
        "gen/reference_clap_score": float(np.mean((real * text).sum(1))),
    }
    if len(waves) >= FRECHET_MIN_CLIPS:
        out["gen/fad_clap"] = frechet_distance(made, real)
    return out


def _audio_scores(wave: np.ndarray, reference: np.ndarray, prompt: Prompt, rate: int) -> dict[str, float]:
    """Melody metrics and the research log's scores of one mono generation, and how it compares with its
    prompt's key, melody and reference audio."""
    track = pitch.pitch_track(wave, rate)
    row = melody_metrics(wave, rate, prompt.key, track)
    row.update(audio_scores(wave, rate))
    row["chroma_cosine"] = pitch.chroma_cosine(reference, wave, rate)
    if prompt.melody:
        row["melody_agreement"] = melody_agreement(wave, rate, prompt.melody, track)
        # the metric's ceiling through this codec: a generation scoring 0 then says the model, not the metric
        row["reference_melody_agreement"] = melody_agreement(
            reference, rate, prompt.melody, reference_track(reference, rate)
        )
    return row


def side_correlation(wave: np.ndarray) -> float:
    """Pearson correlation of the left and right sides of a (samples, 2) wave: 1 for mono copied to
    both sides, near 0 for unrelated sides (a wide image); nan where a side is silent."""
    left, right = wave[:, 0].astype(np.float64), wave[:, 1].astype(np.float64)
    if len(left) < 2 or left.std() == 0 or right.std() == 0:
        return math.nan
    return float(np.corrcoef(left, right)[0, 1])


def _mid(wave: np.ndarray) -> np.ndarray:
    return wave if wave.ndim == 1 else wave.mean(axis=1)


def _silence(rate: int, channels: int) -> np.ndarray:
    """What an empty generation is scored as: a tenth of a second of silence."""
    shape = (rate // 10,) if channels == 1 else (rate // 10, channels)
    return np.zeros(shape, dtype=np.float32)


def _write_wavs(
    folder: Path, i: int, wave: np.ndarray, reference: np.ndarray, rate: int, stem: str = "gen", ref: str = "ref"
) -> None:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / f"{stem}_{i:02d}.wav", wave, rate)
    sf.write(folder / f"{ref}_{i:02d}.wav", reference, rate)


def _clap(name: str, device: str) -> Clap | None:
    if not name:
        return None
    try:
        return Clap.load(name, device)
    except ClapError as exc:
        print(f"warning: {exc}; evaluating without the CLAP metrics", file=sys.stderr)
        return None


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


# --- one checkpoint -----------------------------------------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    checkpoint: str | int = "latest",
    prompts: int = 4,
    seconds: float = 4.0,
    edge: int | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    audio_dir: str | Path | None = None,
    continuation: float = 0.0,
    clap_model: str | None = None,
) -> dict[str, Any]:
    """Every metric of one checkpoint, as one flat dict (also written to ``out`` as JSON).

    ``edge`` defaults to the run's own max delay + 1 (`interior_edge`); an ablation passes the one of
    all its patterns, and a standalone evaluation compared with an ablation's must pass the same.
    ``continuation`` > 0 also continues the same eval clips from their first ``continuation`` seconds
    (`continuation_metrics`). ``clap_model`` (default: the run's ``eval.clap_model``; "" for none) adds
    the CLAP metrics; one that cannot be loaded is a warning, and the rest is evaluated. ``audio_dir``
    keeps the generated and reference audio.
    """
    start = time.perf_counter()
    run = load_run(run_dir, checkpoint, device)
    config = from_dict(run.info["config"])
    data_path = Path(run.info["dataset"])
    if not (data_path / "card.json").exists():
        raise EvalError(f"the run's dataset {data_path} is gone: evaluation needs its eval split")
    edge = interior_edge([run.pattern]) if edge is None else edge
    if edge < 0:
        raise EvalError(f"the interior edge must be >= 0 frames, got {edge}")
    if not 0 <= continuation < math.inf:
        raise EvalError(f"the continuation's prompt must be a finite number of seconds >= 0, got {continuation}")
    eval_data, train_data = CodesDataset(data_path, "eval"), CodesDataset(data_path, "train")
    result: dict[str, Any] = {"run": str(run_dir), "checkpoint": run.checkpoint.name, "edge_frames": edge}
    result["pattern"] = {"name": run.pattern.name, "delays": run.pattern.to_list()}
    result["model/max_delay"] = run.pattern.max_delay
    result["model/parameters"] = sum(p.numel() for p in run.model.parameters())
    if "early_stop" in run.info:  # config.early_stop ended the run: its last step is not config.steps
        result["early_stop"] = run.info["early_stop"]
    losses = {}
    for prefix, batches in fixed_eval_batches(config, train_data, eval_data, run.pattern).items():
        losses[prefix + "clips"] = sum(len(b["labels"]) for b in batches)
        for part, stats in teacher_forced(run.model, batches, run.pattern, run.vocab, edge).items():
            losses.update(stats.summary(prefix + part))
            losses[prefix + part + "targets"] = int(stats.count.sum())
    if config.eval.clips == 0:
        raise EvalError("nothing to evaluate: the run's eval.clips is 0")
    if len(eval_data):
        losses["eval/gap"] = losses["eval/loss"] - losses["train_subset/loss"]
    else:  # a one-source dataset: report what the train split allows
        result["note"] = "the eval split is empty: train-subset losses only, no eval losses or generation"
    result.update(losses)
    history = read_metrics(run_dir)
    for key in ("train/loss", "train/entropy", "train/loss_noise"):
        logged = [row[key] for row in history if key in row]
        if logged:
            result[key] = logged[-1]
    if prompts > 0 and len(eval_data):
        folder = Path(audio_dir) if audio_dir is not None else None
        chosen = eval_prompts(eval_data, prompts)
        clap = _clap(config.eval.clap_model if clap_model is None else clap_model, str(run.model.device))
        result.update(generated_metrics(run, chosen, seconds, folder, clap))
        if continuation > 0:
            result.update(continuation_metrics(run, chosen, continuation, seconds, folder))
    result["seconds"] = time.perf_counter() - start
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result
