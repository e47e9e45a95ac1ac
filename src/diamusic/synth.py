"""The additive synth: a few timbres built from harmonic partials, played with human imperfection.

It plays a melody alone with a little human imperfection (a per-render detuning of a few cents, vibrato,
per-note velocity, timing and intonation jitter, attack/release envelopes, a per-render tweak of the
timbre) so that a codec or language model cannot treat the audio as a lookup table of 12 pitches.
`render_melody` stays as it was for the codec benchmarks and tests that were measured with it;
`diamusic.playback` uses `add_notes` as the stand-in for every instrument with renderer="synth".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from diamusic.corpus import Melody
from diamusic.errors import DiamusicError
from diamusic.seeding import stable_int


class UnknownTimbreError(DiamusicError):
    """A timbre name the synth does not have."""


@dataclass(frozen=True)
class Timbre:
    """How one synth voice sounds: its partials, envelope and playing style."""

    harmonics: tuple[float, ...]  # amplitude of partial k+1 while sustained
    attack: float  # seconds
    release: float
    sustain: float  # level after the attack's overshoot decays
    vibrato_cents: float
    legato: float  # fraction of the written duration that sounds before the release
    noise: float = 0.0  # breath noise level relative to the partials
    decay: float = 0.0  # > 0: plucked, amplitude decays with this time constant (s) instead of sustaining
    dull: tuple[float, ...] = ()  # plucked: the spectrum the tone decays towards


def _odd_heavy(n: int) -> tuple[float, ...]:
    return tuple((1.0 / k) if k % 2 else (0.1 / k) for k in range(1, n + 1))


# The order is part of pick_timbre's draw: keep it.
TIMBRES: dict[str, Timbre] = {
    "flute": Timbre((1.0, 0.45, 0.22, 0.1, 0.06, 0.03), 0.06, 0.08, 0.85, 12.0, 0.92, noise=0.02),
    "clarinet": Timbre(_odd_heavy(15), 0.03, 0.06, 0.9, 4.0, 0.94),
    "violin": Timbre(
        tuple((1.0 / k) * (1.6 if 3 <= k <= 6 else 1.0) for k in range(1, 21)), 0.08, 0.12, 0.8, 18.0, 0.95
    ),
    "organ": Timbre((1.0, 0.7, 0.5, 0.35, 0.0, 0.25, 0.0, 0.2), 0.01, 0.04, 1.0, 0.0, 0.9),
    "pluck": Timbre(
        tuple(1.0 / k**1.2 for k in range(1, 21)), 0.004, 0.05, 1.0, 0.0, 1.0, decay=0.45, dull=(1.0, 0.3, 0.1)
    ),
}
_TABLE = 2048  # wavetable length; partials are band-limited per note, so linear lookup is clean enough


def pick_timbre(melody: Melody, seed: int) -> str:
    """The timbre a (melody, seed) pair is rendered with by `render_melody`: deterministic, roughly uniform."""
    names = tuple(TIMBRES)
    return names[stable_int("instrument", melody.id, seed) % len(names)]


@dataclass(frozen=True)
class Performance:
    """The random choices of one rendering, exposed so tests and reports can see them."""

    detune_cents: float
    vibrato_hz: float
    vibrato_cents: float
    brightness: float  # spectral tilt exponent applied to the partials
    gain: float


def performance(melody: Melody, timbre: str, seed: int) -> Performance:
    """The performance `render_melody` draws for (melody, timbre, seed)."""
    rng = np.random.default_rng(stable_int("performance", melody.id, timbre, seed))
    return Performance(
        detune_cents=float(rng.uniform(-8.0, 8.0)),
        vibrato_hz=float(rng.uniform(4.5, 6.5)),
        vibrato_cents=float(TIMBRES[timbre].vibrato_cents * rng.uniform(0.6, 1.3)),
        brightness=float(rng.uniform(-0.3, 0.3)),
        gain=float(rng.uniform(0.5, 0.9)),
    )


def _wavetable(amps: np.ndarray, f0: float, sample_rate: int) -> np.ndarray:
    k = np.arange(1, len(amps) + 1)
    amps = np.where(k * f0 < 0.45 * sample_rate, amps, 0.0)  # drop partials that would alias
    x = np.arange(_TABLE + 1) / _TABLE  # one extra sample so interpolation can wrap without a modulo
    return (amps[:, None] * np.sin(2 * np.pi * k[:, None] * x[None, :])).sum(0)


def _lookup(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    pos = (cycles % 1.0) * _TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] * (1.0 - frac) + table[i + 1] * frac


def add_notes(
    out: np.ndarray,
    notes: Iterable[tuple[float, float, float]],
    sample_rate: int,
    timbre: Timbre,
    perf: Performance,
    rng: np.random.Generator,
    velocities: Sequence[float] | None = None,
) -> None:
    """Add the synth's rendering of `notes` (MIDI pitch, start s, duration s) to `out`, in place.

    Without `velocities` the synth humanises the notes itself (onset jitter, gate, velocity), which is what
    `render_melody` wants; with them (0-1, one per note) the notes play exactly as given, because
    diamusic.arrangement has already humanised them and reports the timing it chose.
    """
    tilt = np.arange(1, len(timbre.harmonics) + 1, dtype=np.float64) ** -perf.brightness
    sustained_amps = np.asarray(timbre.harmonics) * tilt
    sustained_amps *= rng.uniform(0.8, 1.2, size=len(sustained_amps))  # per-render timbre variation
    dull_amps = np.zeros_like(sustained_amps)
    dull_amps[: len(timbre.dull)] = timbre.dull[: len(dull_amps)]
    vib_phase = rng.uniform(0, 2 * np.pi)

    for i, (pitch, start, dur) in enumerate(notes):
        if velocities is None:
            onset = max(0.0, start + rng.normal(0.0, 0.008))
            sounding = max(0.06, dur * timbre.legato * rng.uniform(0.95, 1.02))
        else:
            onset, sounding = start, max(0.02, dur)
        n0 = int(round(onset * sample_rate))
        n = min(int((sounding + timbre.release) * sample_rate), len(out) - n0)
        if n <= 0:
            continue
        t = np.arange(n) / sample_rate
        f0 = 440.0 * 2 ** ((pitch - 69 + (perf.detune_cents + rng.normal(0.0, 2.0)) / 100.0) / 12.0)

        # vibrato runs on the global clock (the player's arm doesn't restart per note) and fades in
        fade_in = np.clip((t - 0.12) / 0.25, 0.0, 1.0)
        vib = perf.vibrato_cents * fade_in * np.sin(2 * np.pi * perf.vibrato_hz * (onset + t) + vib_phase)
        cycles = np.cumsum(f0 * 2 ** (vib / 1200.0)) / sample_rate + rng.uniform()

        velocity = rng.uniform(0.65, 1.0)  # drawn even when given, so the draws after it stay put
        if velocities is not None:
            velocity = velocities[i]
        if timbre.decay > 0:  # plucked: bright at the attack, decaying towards a duller spectrum
            decay = np.exp(-t / (timbre.decay * rng.uniform(0.8, 1.2)))
            tone = decay * (
                decay * _lookup(_wavetable(sustained_amps, f0, sample_rate), cycles)
                + (1 - decay) * _lookup(_wavetable(dull_amps, f0, sample_rate), cycles)
            )
        else:
            tone = _lookup(_wavetable(sustained_amps, f0, sample_rate), cycles)
            # attack overshoot decaying to the sustain level, as a bowed/blown note settles
            tone *= timbre.sustain + (1 - timbre.sustain) * np.exp(-t / 0.1)
            if timbre.noise > 0:
                tone += timbre.noise * rng.standard_normal(n) * np.abs(tone).max()
        envelope = np.minimum(1.0, t / timbre.attack) * np.clip(
            (sounding + timbre.release - t) / timbre.release, 0.0, 1.0
        )
        out[n0 : n0 + n] += velocity * envelope * tone


def render_melody(melody: Melody, sample_rate: int, timbre: str, seed: int) -> np.ndarray:
    """Render a melody alone to float32 mono audio at `sample_rate`, peak <= 1.

    Deterministic for (melody, sample_rate, timbre, seed); different seeds give a different detuning,
    vibrato, dynamics and timing. The audio lasts until the last note's release has died away. Plays only
    `melody.notes`; `diamusic.render.render_piece` is the arranged, captioned rendering.
    """
    if timbre not in TIMBRES:
        raise UnknownTimbreError(f"unknown timbre {timbre!r}; choose one of {', '.join(TIMBRES)}")
    perf = performance(melody, timbre, seed)
    rng = np.random.default_rng(stable_int("notes", melody.id, timbre, seed))
    tail = TIMBRES[timbre].release + 0.25
    out = np.zeros(int(np.ceil((melody.duration + tail + 0.05) * sample_rate)), dtype=np.float64)
    add_notes(out, melody.notes, sample_rate, TIMBRES[timbre], perf, rng)
    peak = np.abs(out).max()
    if peak > 0:
        out *= perf.gain / peak
    return out.astype(np.float32)
