"""The research log's checkpoint scores, from the audio alone (no weights), and the key and tempo of
a clip, by which a continuation is compared with the true one.

Clipping and silence say whether a checkpoint makes usable audio at all, dynamic range whether it is a
flat wall of sound, beat stability whether it keeps a pulse, key consistency whether it stays in one
tonal area. Each takes a mono wave; `audio_scores` gathers them under the names eval and the ablation use.
"""

from __future__ import annotations

import math
import warnings

import librosa
import numpy as np

from diamusic import pitch

CLIP_LEVEL = 0.99  # |x| at or above this counts as clipped: a float wave written to 16-bit WAV saturates there
SILENCE_DB = -60.0  # a frame this far below the clip's peak is silent
FRAME = 2048  # samples at pitch.ANALYSIS_RATE (93 ms), for silence and chroma
HOP = 512
MIN_BEATS = 4  # three intervals: fewer say nothing about their spread
BEAT_HOP = 256  # 12 ms onset frames: at 23 ms a steady 120 bpm click track already shows a 2 % spread


def clipping_ratio(wave: np.ndarray) -> float:
    """Share of samples at or above CLIP_LEVEL in magnitude."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    return float((np.abs(wave) >= CLIP_LEVEL).mean()) if len(wave) else math.nan


def frame_rms(y: np.ndarray) -> np.ndarray:
    """The RMS of each whole 93 ms frame (23 ms apart) of audio at pitch.ANALYSIS_RATE; none when shorter."""
    if len(y) < FRAME:  # librosa refuses a signal shorter than one frame
        return np.zeros(0)
    return librosa.feature.rms(y=y, frame_length=FRAME, hop_length=HOP, center=False)[0]


def silence_ratio(wave: np.ndarray, sample_rate: int) -> float:
    """Share of 93 ms frames whose RMS lies SILENCE_DB or more below the clip's peak sample; 1 when all is zero."""
    y = pitch.to_analysis_rate(wave, sample_rate)
    peak = float(np.abs(y).max()) if len(y) else 0.0
    if peak == 0.0:
        return 1.0
    rms = frame_rms(y)
    if not len(rms):  # shorter than one frame
        rms = np.sqrt(np.mean(y.astype(np.float64) ** 2, keepdims=True))
    return float((rms <= peak * 10 ** (SILENCE_DB / 20)).mean())


def dynamic_range_db(wave: np.ndarray) -> float:
    """Peak over RMS in dB (the crest factor): 3.01 for a sine, 0 for a square wave; nan when silent."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    rms = math.sqrt(float(np.mean(wave**2))) if len(wave) else 0.0
    return 20 * math.log10(float(np.abs(wave).max()) / rms) if rms > 0 else math.nan


def beat_stability(wave: np.ndarray, sample_rate: int) -> float:
    """Coefficient of variation (std / mean) of the intervals between beats from librosa's beat tracker:
    0 for a steady pulse, larger as the pulse drifts; nan when fewer than MIN_BEATS beats are found."""
    y = pitch.to_analysis_rate(wave, sample_rate)
    _, beats = librosa.beat.beat_track(y=y, sr=pitch.ANALYSIS_RATE, hop_length=BEAT_HOP, units="time")
    if len(beats) < MIN_BEATS:
        return math.nan
    intervals = np.diff(beats)
    return float(intervals.std() / intervals.mean())


def key_consistency(wave: np.ndarray, sample_rate: int, parts: int = 4) -> float:
    """Mean cosine between the time-averaged chroma of successive parts (quarters) of the clip: 1 when
    each part holds the same pitch classes, lower as it moves between keys; nan when a part is silent."""
    y = pitch.to_analysis_rate(wave, sample_rate)
    if len(y) < parts * FRAME:
        return math.nan
    profiles = [pitch.chroma_profile(piece) for piece in np.array_split(y, parts)]
    cosines = []
    for a, b in zip(profiles, profiles[1:], strict=False):
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        if denom == 0:
            return math.nan
        cosines.append(float(np.dot(a, b)) / denom)
    return float(np.mean(cosines))


def estimate_key(wave: np.ndarray, sample_rate: int) -> str | None:
    """The clip's key, e.g. "Bb major": key-profile correlation (Temperley's profiles) with its summed
    constant-Q chroma; None if silent."""
    y = pitch.to_analysis_rate(wave, sample_rate)
    if not np.abs(y).max(initial=0.0) > 0:
        return None
    with warnings.catch_warnings():  # its lowest octaves are analysed at a low rate: a short clip warns there
        warnings.filterwarnings("ignore", "n_fft=.* is too large for input signal", UserWarning)
        hist = librosa.feature.chroma_cqt(y=y, sr=pitch.ANALYSIS_RATE, norm=None, tuning=0.0).sum(1)
    return pitch.key_name(pitch.key_of_histogram(hist, profiles=pitch.AUDIO_KEY_PROFILES)) if hist.std() > 0 else None


def key_agreement(reference: np.ndarray, wave: np.ndarray, sample_rate: int) -> float:
    """MIREX's weighted key score of the wave's key against the reference's: 1 same key, 0.5 a fifth
    apart, 0.3 relative, 0.2 parallel major/minor, else 0; nan when the reference has no key."""
    import mir_eval

    ref, est = estimate_key(reference, sample_rate), estimate_key(wave, sample_rate)
    if ref is None:
        return math.nan
    return float(mir_eval.key.weighted_score(ref, est)) if est is not None else 0.0


TEMPO_TOLERANCE = 0.08  # MIREX's tempo tolerance: estimates within 8 % agree


def estimate_tempo(wave: np.ndarray, sample_rate: int) -> float:
    """librosa's global tempo estimate in beats per minute; 0 without onsets (librosa would answer
    with its prior, 120)."""
    y = pitch.to_analysis_rate(wave, sample_rate)
    onsets = librosa.onset.onset_strength(y=y, sr=pitch.ANALYSIS_RATE, hop_length=BEAT_HOP)
    if not onsets.any():
        return 0.0
    return float(librosa.feature.tempo(onset_envelope=onsets, sr=pitch.ANALYSIS_RATE, hop_length=BEAT_HOP)[0])


def tempo_agreement(reference: np.ndarray, wave: np.ndarray, sample_rate: int) -> float:
    """1 when the wave's tempo is within TEMPO_TOLERANCE of the reference's, else 0; nan when the
    reference has no pulse."""
    ref = estimate_tempo(reference, sample_rate)
    if not ref > 0:
        return math.nan
    return float(abs(estimate_tempo(wave, sample_rate) / ref - 1) <= TEMPO_TOLERANCE)


def audio_scores(wave: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Every score above for one mono wave, keyed as eval.json names them (under `gen/`)."""
    return {
        "clipping_ratio": clipping_ratio(wave),
        "silence_ratio": silence_ratio(wave, sample_rate),
        "dynamic_range_db": dynamic_range_db(wave),
        "beat_stability": beat_stability(wave, sample_rate),
        "key_consistency": key_consistency(wave, sample_rate),
    }


def compile_kernels() -> None:
    """Run every librosa analysis here once on two seconds of clicks over a tone. pyin and the beat
    tracker are numba code compiled on first use and cached beside librosa (about 35 s and 14 s on
    2 cores: benchmarks/RESULTS.md section 14), so `make setup` pays that once, not the first
    evaluation, test or demo."""
    t = np.arange(2 * pitch.ANALYSIS_RATE) / pitch.ANALYSIS_RATE
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + (t % 0.5 < 0.02))
    pitch.pitch_track(wave.astype(np.float32), pitch.ANALYSIS_RATE)
    audio_scores(wave.astype(np.float32), pitch.ANALYSIS_RATE)
    estimate_tempo(wave.astype(np.float32), pitch.ANALYSIS_RATE)
