"""Arrange a built-in melody for the instruments that will play it: every choice of one rendering.

Every random choice comes from its own generator, ``seeding.piece_rng(piece id, seed, what)``, so the same
(piece, seed) gives the same arrangement in every process and a choice does not move when another is
added or changed: ``texture="mixed"`` arranges exactly what naming its drawn texture would. The parts are
built in the score's seconds, then stretched to the drawn tempo:

- the melody, transposed by -5..+6 semitones, to a value that keeps it inside the melody instrument's
  playable range;
- a chorale keeps Bach's own alto, tenor and bass, each on an instrument of one ensemble (strings,
  brass, winds, organ, piano, choir);
- a single-line tune is harmonised (`diamusic.harmony`): one triad per measure, or per half measure when
  it has 4 or more quarter notes and an even number of beats (4/4, 2/2, 12/8); the pickup before the first
  downbeat stays unaccompanied. The bass plays the root in E2..Eb3 (alternating with the fifth on even
  beat counts for plucked basses), the chord instrument a close-position triad in one of its *figures*:
  block chords, strummed beats, oom-pah, or eighth-note arpeggios;
- optionally a General MIDI drum kit with a groove for the metre (kick/snare backbeat in 2/4, 4/4, 2/2;
  a waltz in 3/4; jig feel in 6/8, 9/8, 12/8), only on measures of the metre's full length;
- humanisation: onsets move by a few milliseconds (Gaussian, clipped), velocities by a few steps, the
  melody's notes are slightly detached; the melody part holds these notes exactly as played.

The tags of an `Arrangement` are the facts its caption is written from (`diamusic.captions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diamusic import pitch
from diamusic.captions import caption_form, draw_mood
from diamusic.corpus import MAX_SECONDS, Melody, collection_key
from diamusic.harmony import close_voicing, harmonise, transpose_key
from diamusic.instruments import (
    BASS_INSTRUMENTS,
    CHORD_INSTRUMENTS,
    CLOSED_HAT,
    DRUM_KITS,
    ENSEMBLES,
    INSTRUMENTS,
    KICK,
    MELODY_INSTRUMENTS,
    SELF_BASS,
    SIDE_STICK,
    SNARE,
    SUSTAINED_BASSES,
    Instrument,
)
from diamusic.seeding import piece_rng

TRANSPOSE_RANGE = range(-5, 7)
TEMPO_SPREAD = 0.15  # tempo drawn within +-15% of the score's
ACCOMPANIED_SHARE = 2 / 3  # of texture="mixed": our users' music is mostly a melody over an accompaniment
DRUMS_SHARE = 0.5  # of accompanied single-line tunes in a metre with a drum groove
REVERB_SHARE = 0.5
ACCOMPANIMENT_DB = (4.0, 9.0)  # the accompaniment together sits this many dB (drawn) under the melody
MAX_TUNING_CENTS = 5.0  # a whole band a little off A440, as real ones are


def _hats(count: int, step: float, factor: float) -> tuple[tuple[float, int, float], ...]:
    return tuple((k * step, CLOSED_HAT, factor) for k in range(count))


# metre -> (position in quarter notes within the measure, drum key, velocity factor)
DRUM_GROOVES: dict[str, tuple[tuple[float, int, float], ...]] = {
    "2/4": ((0, KICK, 1.0), (1, SNARE, 0.8), *_hats(4, 0.5, 0.55)),
    "4/4": ((0, KICK, 1.0), (1, SNARE, 0.8), (2, KICK, 0.85), (3, SNARE, 0.8), *_hats(8, 0.5, 0.55)),
    "3/4": ((0, KICK, 1.0), (1, SIDE_STICK, 0.6), (2, SIDE_STICK, 0.6), *_hats(3, 1.0, 0.5)),
    "6/8": ((0, KICK, 1.0), (1.5, SNARE, 0.7), *_hats(6, 0.5, 0.5)),
    "9/8": ((0, KICK, 1.0), (1.5, SIDE_STICK, 0.6), (3, SNARE, 0.7), *_hats(9, 0.5, 0.5)),
    "12/8": ((0, KICK, 1.0), (1.5, SNARE, 0.7), (3, KICK, 0.85), (4.5, SNARE, 0.7), *_hats(12, 0.5, 0.5)),
}
DRUM_GROOVES["2/2"] = DRUM_GROOVES["4/4"]


@dataclass
class Part:
    """One instrument's line: (MIDI key, start s, duration s, velocity 1-127) per note."""

    role: str  # "melody", "chords", "bass", "alto", "tenor", "drums"
    instrument: Instrument | None  # None for drums
    notes: list[tuple[int, float, float, int]] = field(default_factory=list)
    level_db: float = 0.0  # balance within the accompaniment, dB (see diamusic.playback.render_arrangement)
    kit: int = 0  # GM drum kit (bank 128 preset), drums only


@dataclass
class Arrangement:
    parts: list[Part]  # the melody first
    tuning_cents: float
    accompaniment_db: float  # loudness of all accompanying parts together, relative to the melody
    reverb_wet: float  # 0 = dry
    reverb_rt60: float
    tags: dict[str, Any]


# ---------------------------------------------------------------------------------------------- metre


def _meter(meter: str) -> tuple[int, int] | None:
    try:
        num, den = (int(x) for x in meter.split("/"))
    except ValueError:  # "free", or a metre music21 wrote some other way: no measures to follow
        return None
    return (num, den) if num > 0 and den > 0 else None


def beat_quarters(meter: str) -> float:
    """The felt beat in quarter notes: a dotted quarter in 6/8, 9/8, 12/8, else the metre's denominator."""
    nd = _meter(meter)
    if nd is None:
        return 1.0
    num, den = nd
    return 1.5 if den == 8 and num % 3 == 0 and num > 3 else 4.0 / den


def _measures(melody: Melody, end: float) -> list[tuple[float, float, bool]]:
    """(start s, length s, full length of the metre) of the measures before `end`, in the score's seconds."""
    spq = 60.0 / melody.tempo_bpm
    nd = _meter(melody.meter)
    bar = (nd[0] * 4.0 / nd[1] if nd else 4.0) * spq
    bars = list(melody.bars)
    if not bars:  # free metre or a hand-made melody: measures of the metre (or 4 quarters) from the start
        bars = [(k * bar, bar) for k in range(int(np.ceil(end / bar)))]
    return [(a, n, nd is not None and abs(n - bar) < 1e-3 and a + n <= end + 1e-3) for a, n in bars if a < end - 1e-6]


def _segments(melody: Melody, end: float) -> list[tuple[float, float, bool]]:
    """(start s, end s, starts a measure) of the harmonic rhythm, in the score's seconds."""
    nd = _meter(melody.meter)
    split = nd is not None and nd[0] * 4.0 / nd[1] >= 4 and nd[0] % 2 == 0
    out = []
    for start, length, full in _measures(melody, end):
        stop = min(start + length, end)
        if split and full:
            out += [(start, start + length / 2, True), (start + length / 2, stop, False)]
        else:
            out.append((start, stop, True))
    return out


# ---------------------------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class _Cast:
    """Who plays what, drawn from the piece's "instruments" generator."""

    melody: Instrument
    transpositions: list[int]  # those that keep the melody inside its instrument's range
    ensemble: str | None = None  # a chorale's, a key of ENSEMBLES
    chords: Instrument | None = None  # a harmonised tune's
    bass: Instrument | None = None
    figure: str | None = None  # what the chord instrument plays: block, strum, oompah, arpeggio


@dataclass(frozen=True)
class _Dynamics:
    velocity: int  # the melody's
    accompaniment_velocity: int
    accompaniment_db: float
    levels: dict[str, float]  # part role -> its balance within the accompaniment, dB
    legato: float  # the melody's gate: the share of each note that sounds


@dataclass(frozen=True)
class _Choices:
    texture: str  # "solo" or "accompanied", never "mixed"
    chorale: bool  # accompanied by the score's own voices
    cast: _Cast
    transpose: int
    key: str  # after transposition
    tempo_bpm: int
    factor: float  # drawn tempo over the score's: exactly the tempo the caption states
    tuning_cents: float
    dynamics: _Dynamics
    reverb_wet: float  # 0 = dry
    reverb_rt60: float


def _fits(inst: Instrument, lo: float, hi: float) -> list[int]:
    return [t for t in TRANSPOSE_RANGE if lo + t >= inst.low and hi + t <= inst.high]


def _choose_melody_instrument(
    rng: np.random.Generator, pool: Sequence[str], lo: float, hi: float
) -> tuple[Instrument, list[int]]:
    fitting = [(INSTRUMENTS[n], _fits(INSTRUMENTS[n], lo, hi)) for n in pool]
    fitting = [(i, ts) for i, ts in fitting if ts]
    if not fitting:  # a tune wider than every instrument in the pool: the piano has the range of all
        piano = INSTRUMENTS["piano"]
        return piano, _fits(piano, lo, hi) or [0]
    return fitting[int(rng.integers(len(fitting)))]


def _cast(melody: Melody, seed: int, texture: str, chorale: bool) -> _Cast:
    rng = piece_rng(melody.id, seed, "instruments")
    lo = min(p for p, _, _ in melody.notes)
    hi = max(p for p, _, _ in melody.notes)
    pool = list(MELODY_INSTRUMENTS[collection_key(melody)])
    ensemble = None
    if chorale:
        ensemble = sorted(ENSEMBLES)[int(rng.integers(len(ENSEMBLES)))]
        pool = [n for n in pool if n not in ENSEMBLES[ensemble]]
    melody_inst, transpositions = _choose_melody_instrument(rng, pool, lo, hi)
    if texture != "accompanied" or chorale:
        return _Cast(melody_inst, transpositions, ensemble)
    chord_names = [n for n in CHORD_INSTRUMENTS if n != melody_inst.name]
    chords = INSTRUMENTS[chord_names[int(rng.integers(len(chord_names)))]]
    figures = CHORD_INSTRUMENTS[chords.name]
    figure = figures[int(rng.integers(len(figures)))]
    bass_names = [n for n in BASS_INSTRUMENTS if n != melody_inst.name and (n or chords.name in SELF_BASS)]
    bass_name = bass_names[int(rng.integers(len(bass_names)))]
    bass = INSTRUMENTS[bass_name] if bass_name else chords
    return _Cast(melody_inst, transpositions, ensemble, chords, bass, figure)


def _draw_dynamics(melody: Melody, seed: int) -> _Dynamics:
    rng = piece_rng(melody.id, seed, "dynamics")
    velocity = int(rng.integers(70, 111))
    accompaniment_velocity = velocity - int(rng.integers(10, 26))
    # the melody in front of the accompaniment as a whole (a melody-focused mix); within it, the balance
    # of the parts relative to each other
    accompaniment_db = -float(rng.uniform(*ACCOMPANIMENT_DB))
    levels = {"chords": 0.0, "bass": rng.uniform(-2, 1), "drums": rng.uniform(-7, -4)}
    for role in ("alto", "tenor"):
        levels[role] = rng.uniform(-1, 1)
    legato = rng.uniform(0.86, 0.97)
    return _Dynamics(velocity, accompaniment_velocity, accompaniment_db, levels, legato)


def _draw_reverb(melody: Melody, seed: int) -> tuple[float, float]:
    """(wet, rt60); (0, 0) for a dry recording."""
    rng = piece_rng(melody.id, seed, "reverb")
    if not rng.random() < REVERB_SHARE:
        return 0.0, 0.0
    wet = float(rng.uniform(0.1, 0.35))
    return wet, float(rng.uniform(0.8, 2.0))


def _draw_choices(melody: Melody, seed: int, texture: str) -> _Choices:
    if texture == "mixed":
        texture = "accompanied" if piece_rng(melody.id, seed, "texture").random() < ACCOMPANIED_SHARE else "solo"
    chorale = texture == "accompanied" and bool(melody.accompaniment)
    cast = _cast(melody, seed, texture, chorale)
    transpose = int(piece_rng(melody.id, seed, "transpose").choice(cast.transpositions))
    stretch = piece_rng(melody.id, seed, "tempo").uniform(1 - TEMPO_SPREAD, 1 + TEMPO_SPREAD)
    tempo_bpm = int(round(melody.tempo_bpm * stretch))
    tuning = float(piece_rng(melody.id, seed, "tuning").uniform(-MAX_TUNING_CENTS, MAX_TUNING_CENTS))
    reverb_wet, reverb_rt60 = _draw_reverb(melody, seed)
    return _Choices(
        texture=texture,
        chorale=chorale,
        cast=cast,
        transpose=transpose,
        key=transpose_key(melody.key, transpose),
        tempo_bpm=tempo_bpm,
        factor=tempo_bpm / melody.tempo_bpm,
        tuning_cents=tuning,
        dynamics=_draw_dynamics(melody, seed),
        reverb_wet=reverb_wet,
        reverb_rt60=reverb_rt60,
    )


# ---------------------------------------------------------------------------------------------- parts


def _add(part: Part, key: int, start: float, dur: float, velocity: int, stop: float) -> None:
    """Add a note that ends by `stop`, the end of its chord's segment."""
    if start < stop - 1e-6:
        part.notes.append((key, start, min(dur, stop - start), velocity))


@dataclass(frozen=True)
class _Span:
    """One harmonic segment as the accompaniment plays it (score seconds)."""

    start: float
    stop: float
    beats: list[float]  # the beat onsets within it
    beat: float  # seconds per beat
    accent: int  # velocity added on a measure's first segment


def _bass_line(part: Part, root: int, span: _Span, figure: str, sustained: bool, velocity: int) -> None:
    """The segment's root in E2..Eb3: held (bowed basses, block chords), alternating with the fifth on an
    even count of beats, else struck once."""
    a, b, beat = span.start, span.stop, span.beat
    bass_root = next(p for p in range(40, 52) if p % 12 == root)
    fifth = bass_root + 7
    if sustained or figure == "block":
        _add(part, bass_root, a, (b - a) * 0.95, velocity + span.accent, b)
    elif len(span.beats) % 2 == 0:
        for k, t in enumerate(span.beats):
            _add(part, bass_root if k % 2 == 0 else fifth, t, beat * 0.85, velocity + span.accent, b)
    else:
        _add(part, bass_root, a, beat * 0.9 if figure == "oompah" else (b - a) * 0.95, velocity, b)


def _chord_figure(
    part: Part, voiced: list[int], span: _Span, figure: str, guitar: bool, eighth: float, velocity: int
) -> None:
    """The voiced chord played as the figure says over one segment."""
    a, b, beat, accent = span.start, span.stop, span.beat, span.accent
    if figure == "block":
        for p in voiced:
            _add(part, p, a, (b - a) * 0.96, velocity + accent, b)
    elif figure in ("strum", "oompah"):
        hits = span.beats if figure == "strum" else (span.beats[1:] or [a + beat / 2])
        for k, t in enumerate(hits):
            v = velocity + (accent if k == 0 and figure == "strum" else 0)
            for j, p in enumerate(voiced):  # a guitar's strum sounds the strings low to high
                _add(part, p, t + (0.012 * j if guitar else 0.0), beat * 0.8, v, b)
    elif figure == "arpeggio":
        tones = [*voiced, voiced[0] + 12]
        order = [0, 1, 2, 3, 2, 1]
        for k in range(max(1, int(round((b - a) / eighth)))):
            t = a + k * eighth
            if t >= b - 1e-6:
                break
            # let the notes ring a little, not into mud
            _add(part, tones[order[k % 6]], t, 4 * eighth, velocity + (accent if k == 0 else -6), b)


def _accompany(
    melody_notes: Sequence[tuple[float, float, float]],
    melody: Melody,
    key: str,
    chords_part: Part,
    bass_part: Part,
    figure: str,
    velocity: int,
) -> None:
    """Fill the chord and bass parts of a harmonised tune (score seconds; humanised later)."""
    end = max(s + d for _, s, d in melody_notes)
    segments = _segments(melody, end)
    harmony = harmonise(melody_notes, [(a, b) for a, b, _ in segments], key)
    spq = 60.0 / melody.tempo_bpm
    beat = beat_quarters(melody.meter) * spq
    sustained_bass = bass_part.instrument is not None and bass_part.instrument.name in SUSTAINED_BASSES
    guitar = chords_part.instrument is not None and "guitar" in chords_part.instrument.name
    previous: list[int] | None = None
    for (a, b, downbeat), (root, pcs) in zip(segments, harmony, strict=True):
        ceiling = min((p for p, s, d in melody_notes if s < b - 1e-6 and s + d > a + 1e-6), default=128.0)
        voiced = close_voicing(pcs, previous, ceiling)
        previous = voiced
        beats = [a + k * beat for k in range(max(1, int(round((b - a) / beat))))]
        span = _Span(a, b, [t for t in beats if t < b - 1e-6], beat, 8 if downbeat else 0)
        _bass_line(bass_part, root, span, figure, sustained_bass, velocity)
        _chord_figure(chords_part, voiced, span, figure, guitar, 0.5 * spq, velocity)


def _drums(melody: Melody, end: float, part: Part, velocity: int) -> None:
    """The metre's groove on every measure of full length (not on a pickup or a shortened last measure)."""
    spq = 60.0 / melody.tempo_bpm
    for start, _, full in _measures(melody, end):
        if full:
            for q, key, factor in DRUM_GROOVES[melody.meter]:
                part.notes.append((key, start + q * spq, min(0.2, spq / 2), int(velocity * factor)))


def _melody_part(
    notes: Sequence[tuple[float, float, float]], melody: Melody, inst: Instrument, velocity: int
) -> Part:
    """The melody's notes as played, a little louder on the downbeats."""
    bars = {round(a, 4) for a, _ in melody.bars}
    return Part(
        "melody", inst, [(int(round(p)), s, d, velocity + (6 if round(s, 4) in bars else 0)) for p, s, d in notes]
    )


def _chorale_parts(melody: Melody, choices: _Choices, end: float) -> list[Part]:
    """Bach's own lower voices, each on an instrument of the drawn ensemble."""
    assert choices.cast.ensemble is not None
    levels, velocity = choices.dynamics.levels, choices.dynamics.accompaniment_velocity
    voices = melody.accompaniment[-3:]  # the lowest three: alto, tenor, bass in a chorale
    roles = ("alto", "tenor", "bass")[-len(voices) :]
    parts = []
    for role, name, voice in zip(roles, ENSEMBLES[choices.cast.ensemble][-len(voices) :], voices, strict=True):
        part = Part(role, INSTRUMENTS[name], level_db=levels.get(role, levels["bass"]))
        for p, s, d in voice:
            if s < end - 1e-6:
                part.notes.append((int(round(p)) + choices.transpose, s, min(d, end - s) * 0.97, velocity))
        parts.append(part)
    return parts


def _harmonised_parts(
    melody: Melody, seed: int, notes: Sequence[tuple[float, float, float]], choices: _Choices, end: float
) -> list[Part]:
    """Chords and bass under a single-line tune, and drums when drawn."""
    cast, levels = choices.cast, choices.dynamics.levels
    velocity = choices.dynamics.accompaniment_velocity
    assert cast.chords is not None and cast.bass is not None and cast.figure is not None
    chords = Part("chords", cast.chords, level_db=levels["chords"])
    bass = Part("bass", cast.bass, level_db=levels["bass"])
    _accompany(notes, melody, choices.key, chords, bass, cast.figure, velocity)
    parts = [chords, bass]
    if melody.meter in DRUM_GROOVES and piece_rng(melody.id, seed, "drums").random() < DRUMS_SHARE:
        kit = DRUM_KITS[int(piece_rng(melody.id, seed, "kit").integers(len(DRUM_KITS)))]
        drums = Part("drums", None, level_db=levels["drums"], kit=kit)
        _drums(melody, end, drums, velocity)
        parts.append(drums)
    return parts


def _score_parts(melody: Melody, seed: int, choices: _Choices) -> list[Part]:
    """Every part in the score's seconds, transposed; the melody first."""
    transposed = [(p + choices.transpose, s, d) for p, s, d in melody.notes]
    # the notes that still end within MAX_SECONDS once stretched to the drawn tempo
    kept = [n for n in transposed if (n[1] + n[2]) / choices.factor <= MAX_SECONDS + 1e-6] or transposed[:1]
    end = max(s + d for _, s, d in kept)
    parts = [_melody_part(kept, melody, choices.cast.melody, choices.dynamics.velocity)]
    if choices.chorale:
        parts += _chorale_parts(melody, choices, end)
    elif choices.texture == "accompanied":
        parts += _harmonised_parts(melody, seed, kept, choices, end)
    return parts


# ---------------------------------------------------------------------------------------------- performance


def _humanise(part: Part, rng: np.random.Generator, sigma: float, factor: float, gate: float = 1.0) -> None:
    """Stretch to the drawn tempo, move onsets by a few ms, vary velocities, keep same-key notes apart."""
    moved = []
    for key, start, dur, vel in part.notes:
        jitter = float(np.clip(rng.normal(0.0, sigma), -3 * sigma, 3 * sigma))
        start = max(0.0, start / factor + jitter)
        vel = int(np.clip(vel + rng.integers(-6, 7), 1, 127))
        moved.append((key, start, max(0.02, dur / factor * gate), vel))
    moved.sort(key=lambda n: (n[1], n[0]))
    # a note-off stops every voice of its key on the channel, so a note must end before the same key sounds
    # again; the melody, a single line, must also end before its next note
    last: dict[int, int] = {}
    for i, (key, start, _, _) in enumerate(moved):
        for j in ([last[key]] if key in last else []) + ([i - 1] if part.role == "melody" and i > 0 else []):
            k, s, d, v = moved[j]
            if s + d > start - 0.003:
                moved[j] = (k, s, max(0.01, start - 0.003 - s), v)
        last[key] = i
    part.notes = moved


def _perform(parts: list[Part], melody: Melody, seed: int, choices: _Choices) -> None:
    """Humanise every part in order from the one "humanise" generator."""
    rng = piece_rng(melody.id, seed, "humanise")
    for part in parts:
        sigma = {"melody": 0.004, "drums": 0.003}.get(part.role, 0.006)
        gate = choices.dynamics.legato if part.role == "melody" else 1.0
        _humanise(part, rng, sigma, choices.factor, gate=gate)


# ---------------------------------------------------------------------------------------------- tags


def _heard_name(inst: Instrument, renderer: str) -> str:
    return inst.name if renderer == "soundfont" else inst.synth_name


def _tags(melody: Melody, seed: int, renderer: str, choices: _Choices, parts: list[Part]) -> dict[str, Any]:
    """The facts of the rendering, JSON-serialisable: what captions, dataset manifests and reports use."""
    drums = any(part.role == "drums" for part in parts)
    accompaniment: list[str] = []
    for part in parts[1:]:
        if part.instrument is not None:
            name = _heard_name(part.instrument, renderer)
            if name not in accompaniment:
                accompaniment.append(name)
    # the felt beat for the mood words: dotted quarters in 6/8, 9/8, 12/8, else quarters (also in 2/2,
    # whose half notes would make every reel "calm" at the collection's default tempo)
    tempo_bpm = choices.tempo_bpm
    beat_bpm = tempo_bpm / 1.5 if beat_quarters(melody.meter) == 1.5 else tempo_bpm
    mood_rng = piece_rng(melody.id, seed, "mood")
    return {
        "id": melody.id,
        "seed": seed,
        "collection": melody.collection,
        "title": melody.title,
        "form": caption_form(melody),
        "key": choices.key,
        "meter": melody.meter,
        "tempo_bpm": tempo_bpm,
        "beat_bpm": round(beat_bpm, 1),
        "texture": choices.texture,
        "melody_instrument": _heard_name(choices.cast.melody, renderer),
        "accompaniment": accompaniment,
        "ensemble": choices.cast.ensemble,
        "figure": choices.cast.figure,
        "drums": drums,
        "reverb": choices.reverb_wet > 0,
        "reverb_wet": round(choices.reverb_wet, 3),
        "renderer": renderer,
        "transpose": choices.transpose,
        "tuning_cents": round(choices.tuning_cents, 2),
        "accompaniment_db": round(choices.dynamics.accompaniment_db, 2) if len(parts) > 1 else None,
        "velocity": choices.dynamics.velocity,
        "parts": len(parts) - int(drums),
        "mood": draw_mood(mood_rng, mode=pitch.parse_key(choices.key)[1], beat_bpm=beat_bpm),
    }


def arrange(melody: Melody, seed: int, texture: str, renderer: str) -> Arrangement:
    """Every choice of one rendering, and the parts to play; see the module docstring.

    `texture` is "solo", "accompanied" or "mixed" (drawn); `renderer` ("soundfont" or "synth") only
    changes the instrument names in the tags.
    """
    choices = _draw_choices(melody, seed, texture)
    parts = _score_parts(melody, seed, choices)
    _perform(parts, melody, seed, choices)
    return Arrangement(
        parts=parts,
        tuning_cents=choices.tuning_cents,
        accompaniment_db=choices.dynamics.accompaniment_db,
        reverb_wet=choices.reverb_wet,
        reverb_rt60=choices.reverb_rt60,
        tags=_tags(melody, seed, renderer, choices, parts),
    )
