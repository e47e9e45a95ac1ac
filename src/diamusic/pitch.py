"""Pitch tracking and melody metrics that need no downloaded weights.

Everything runs on `librosa.pyin` (probabilistic YIN) and `mir_eval`. Audio is analysed at 22050 Hz
whatever its input rate: f0 up to 1600 Hz needs nothing higher, and it halves pyin's cost on 44.1 kHz audio.
"""

from __future__ import annotations

import re

import librosa
import numpy as np

from diamusic.errors import DiamusicError

ANALYSIS_RATE = 22050
FRAME_LENGTH = 2048  # 93 ms: several periods of the lowest f0 we track (80 Hz)
HOP_LENGTH = 512  # 23 ms: pyin's cost is per frame, and a 16th note at 120 bpm still spans 5 frames
RESOLUTION = 0.1  # semitones per pyin pitch bin; 0.05 is ~10x slower

_PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Scale degrees in semitones above the tonic. "minor" adds the raised 7th (harmonic minor's leading tone),
# because minor-key melodies (Bach chorales, folk tunes) use it routinely and it should count as in key.
_MODES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "aeolian": (0, 2, 3, 5, 7, 8, 10),
    "locrian": (0, 1, 3, 5, 6, 8, 10),
}


# Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
KEY_PROFILES = {
    "major": np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
    "minor": np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
}
# Temperley's (Kostka-Payne) profiles: from audio chroma they find the key more often than Krumhansl-Kessler's
# (benchmarks/RESULTS.md section 16), which pull towards the dominant that every note's third harmonic feeds
AUDIO_KEY_PROFILES = {
    "major": np.array([5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0]),
    "minor": np.array([5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0]),
}
SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")


# the usual spelling of each key: fewest accidentals, F# major and C#/G# minor with sharps
_KEY_NAMES = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}


def key_name(key: str) -> str:
    """A key as musicians usually spell it: "A# major" -> "Bb major", "Db minor" -> "C# minor"."""
    tonic, mode = parse_key(key)
    return f"{_KEY_NAMES[mode][tonic]} {mode}" if mode in _KEY_NAMES else key


def key_of_histogram(
    hist: np.ndarray,
    candidates: list[tuple[int, str]] | None = None,
    flats: bool = False,
    profiles: dict[str, np.ndarray] = KEY_PROFILES,
) -> str:
    """Krumhansl-Schmuckler key finding: the key (among ``candidates`` (tonic, mode), default all 24)
    whose profile correlates best with a pitch-class histogram, e.g. "F# minor" ("Gb minor" with ``flats``)."""
    candidates = candidates or [(t, mode) for t in range(12) for mode in profiles]

    def score(tonic: int, mode: str) -> float:
        return float(np.corrcoef(hist, np.roll(profiles[mode], tonic))[0, 1]) if hist.std() > 0 else 0.0

    tonic, mode = max(candidates, key=lambda c: score(*c))
    return f"{(FLAT_NAMES if flats else SHARP_NAMES)[tonic]} {mode}"


class KeyNameError(DiamusicError):
    """A musical key's name that cannot be read, e.g. 'H major' or 'C bogus'."""


def to_analysis_rate(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """A wave as mono float32 at ANALYSIS_RATE, the rate every measure here works at."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if sample_rate != ANALYSIS_RATE:
        wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=ANALYSIS_RATE)
    return wave


def pitch_track(
    wave: np.ndarray, sample_rate: int, fmin: float = 80.0, fmax: float = 1600.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track the f0 of a mono wave with pyin.

    Returns (times in seconds, f0 in Hz with 0 where unvoiced, voiced flags), one entry per 23 ms frame.
    pyin reports f0 on a grid of 10-cent bins counted from fmin; we move fmin down onto the equal-tempered
    grid of A440 so that in-tune notes land on a bin centre and the error is at most 5 cents.
    """
    y = to_analysis_rate(wave, sample_rate)
    if len(y) < FRAME_LENGTH:  # pyin needs one full frame; pad short clips with silence
        y = np.pad(y, (0, FRAME_LENGTH - len(y)))
    step = 100.0 * RESOLUTION
    fmin = 440.0 * 2 ** (np.floor(1200.0 * np.log2(fmin / 440.0) / step) * step / 1200.0)
    f0, voiced, _ = librosa.pyin(
        y,
        fmin=fmin,
        fmax=fmax,
        sr=ANALYSIS_RATE,
        frame_length=FRAME_LENGTH,
        hop_length=HOP_LENGTH,
        resolution=RESOLUTION,
        center=True,
    )
    voiced = np.asarray(voiced, dtype=bool) & np.isfinite(f0)
    f0 = np.where(voiced, f0, 0.0)
    times = librosa.frames_to_time(np.arange(len(f0)), sr=ANALYSIS_RATE, hop_length=HOP_LENGTH)
    return times, f0, voiced


def raw_pitch_accuracy(
    ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int, cent_tolerance: float = 20.0
) -> float:
    """Fraction of the reference's voiced frames where the estimate's pitch is within `cent_tolerance`.

    Both waves are pitch-tracked the same way; the estimate is resampled onto the reference's time grid by
    mir_eval, so the two may differ slightly in length. Returns nan when the reference has no voiced frame
    (the metric is undefined there, and 0 or 1 would both be misleading in an average).
    """
    ref_t, ref_f, ref_v = pitch_track(ref_wave, sample_rate)
    est_t, est_f, _ = pitch_track(est_wave, sample_rate)
    if not ref_v.any():
        return float("nan")
    import mir_eval  # a second of scipy.stats at import: only here, not on every CLI start

    ref_voicing, ref_cent, est_voicing, est_cent = mir_eval.melody.to_cent_voicing(ref_t, ref_f, est_t, est_f)
    return float(mir_eval.melody.raw_pitch_accuracy(ref_voicing, ref_cent, est_voicing, est_cent, cent_tolerance))


def parse_key(key: str) -> tuple[int, str]:
    """'G major' / 'F# minor' / 'B- minor' (music21 flats) / 'Bb dorian' -> (tonic pitch class, mode)."""
    m = re.fullmatch(r"\s*([A-Ga-g])([#b\-♯♭]*)\s*([A-Za-z]*)\s*", key)
    if m is None:
        raise KeyNameError(f"cannot parse key {key!r}; expected e.g. 'G major' or 'F# minor'")
    letter, accidentals, mode = m.groups()
    mode = (mode or "major").lower()
    if mode not in _MODES:
        raise KeyNameError(f"unknown mode {mode!r} in key {key!r}; known: {', '.join(sorted(_MODES))}")
    shift = sum(1 if a in "#♯" else -1 for a in accidentals)
    return (_PITCH_CLASSES[letter.upper()] + shift) % 12, mode


def scale_pitch_classes(key: str) -> frozenset[int]:
    tonic, mode = parse_key(key)
    return frozenset((tonic + step) % 12 for step in _MODES[mode])


def hz_to_midi(f0: np.ndarray) -> np.ndarray:
    return 69.0 + 12.0 * np.log2(np.asarray(f0, dtype=np.float64) / 440.0)


def _voiced_runs(voiced: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


Track = tuple[np.ndarray, np.ndarray, np.ndarray]  # pitch_track's (times, f0, voiced)


def melody_stats(
    wave: np.ndarray, sample_rate: int, key: str | None = None, track: Track | None = None
) -> dict[str, float]:
    """Reference-free melody statistics of one wave.

    - voiced_ratio: fraction of frames pyin calls voiced.
    - pitch_stability: median absolute frame-to-frame pitch change, in semitones, between consecutive voiced
      frames of the same voiced segment (frames are 23 ms apart). Lower is steadier: held synth notes give
      a few hundredths, note changes are rare frames, and a wandering or noisy pitch track pushes it up.
      nan when no segment has two voiced frames.
    - in_key_ratio (only when `key` is given): fraction of voiced frames whose rounded pitch class belongs
      to the key's scale (see `_MODES`; minor includes the raised 7th). nan when nothing is voiced.
    """
    _, f0, voiced = track if track is not None else pitch_track(wave, sample_rate)  # pyin is the slow part
    stats: dict[str, float] = {"voiced_ratio": float(voiced.mean()) if len(voiced) else 0.0}
    midi = np.zeros_like(f0)
    midi[voiced] = hz_to_midi(f0[voiced])
    steps = [np.abs(np.diff(midi[a:b])) for a, b in _voiced_runs(voiced) if b - a >= 2]
    stats["pitch_stability"] = float(np.median(np.concatenate(steps))) if steps else float("nan")
    if key is not None:
        scale = np.array(sorted(scale_pitch_classes(key)))
        pcs = np.round(midi[voiced]).astype(np.int64) % 12
        stats["in_key_ratio"] = float(np.isin(pcs, scale).mean()) if len(pcs) else float("nan")
    return stats


def chroma_profile(y: np.ndarray) -> np.ndarray:
    """The energy-weighted pitch-class profile (12,) of audio at ANALYSIS_RATE: its chroma summed over time."""
    # 4096-point frames resolve semitones down to ~100 Hz. norm=None keeps each frame's energy, so the
    # sum is energy-weighted: loud notes dominate and near-silent frames add (almost) nothing
    power = np.abs(librosa.stft(y, n_fft=4096, hop_length=1024)) ** 2
    # tuning=0: compare against A440 rather than re-estimating the tuning of each wave separately
    return librosa.feature.chroma_stft(S=power, sr=ANALYSIS_RATE, norm=None, tuning=0.0).sum(axis=1)


def chroma_cosine(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int) -> float:
    """Cosine similarity of the two waves' time-averaged chroma (pitch-class energy profiles).

    Averaging over time makes it insensitive to timing, so it compares the pitch content of a generation
    with a reference that need not be aligned to it (raw_pitch_accuracy is the aligned measure).
    1 = same pitch-class distribution; unrelated tonal material scores roughly 0.5-0.8; 0 if either is silent.
    """
    a, b = (chroma_profile(to_analysis_rate(wave, sample_rate)) for wave in (ref_wave, est_wave))
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom > 0 else 0.0
