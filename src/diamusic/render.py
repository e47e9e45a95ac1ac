"""Arrange a built-in melody as a piece of music, render it, and caption what is heard.

`render_piece` is the entry point; the rest of this module holds its parts. One call goes through four stages.

1. **Choices.** Every random choice (texture, instruments, transposition, tempo, tuning, dynamics, mix
   levels, reverb, caption wording, humanisation) comes from its own generator seeded by
   ``_stable_int(piece id, seed, what)``. The same (piece, seed) therefore gives byte-identical audio in
   every process, and a choice does not move when another is added or changed: ``texture="mixed"`` renders
   exactly what naming its drawn texture would.
2. **Arrangement** (in the score's seconds, then stretched to the drawn tempo):
   - the melody, transposed by -5..+6 semitones, to a value that keeps it inside the melody instrument's
     playable range;
   - a chorale keeps Bach's own alto, tenor and bass, each on an instrument of one ensemble (strings,
     brass, winds, organ, piano, choir);
   - a single-line tune is harmonised. Each measure (each half measure when it has 4 or more quarter notes
     and an even number of beats: 4/4, 2/2, 12/8) gets the diatonic triad - major key: I ii iii IV V vi;
     minor key: i III iv v V VI VII, V with the raised 7th - scoring highest on: the melody's note duration
     on chord tones (a note struck on the downbeat counts 1.5x), minus half the duration of melody notes a
     semitone from a chord tone, twice the duration when that note is outside the natural scale (a raised
     6th or 7th, a chromatic note: this is what picks V over v and VII when the tune has the leading tone,
     and keeps a natural 7th in the chord from sounding against a raised one in the tune). Ties go
     to the more common chord (tonic, then dominant, subdominant, ...). The final segment is the tonic when
     the last note belongs to it; a segment without melody notes keeps the previous chord; the pickup
     before the first downbeat stays unaccompanied. The bass plays the root in E2..Eb3 (alternating with the
     fifth on even beat counts for plucked basses), the chord instrument a close-position triad in
     E3..G4 (down to C3 to stay under a low tune), moving to the nearest inversion, as block chords,
     strummed beats, oom-pah, or eighth-note arpeggios. Every accompaniment pitch is therefore in the key
     (the raised 7th only in V).
   - optionally a General MIDI drum kit with a pattern for the metre (kick/snare backbeat in 2/4, 4/4,
     2/2; a waltz in 3/4; jig feel in 6/8, 9/8, 12/8), only on measures of the metre's full length.
   - humanisation: onsets move by a few milliseconds (Gaussian, clipped), velocities by a few steps, the
     melody's notes are slightly detached; the melody returned is these notes exactly as played.
3. **Rendering.** Each part is rendered alone (a "stem"), with TinySoundFont and the General MIDI
   SoundFont that ships inside `pretty_midi` (TimGM6mb.sf2: offline, no other file), or with the additive
   synth of corpus.py. The stems are mixed by loudness (active RMS above 200 Hz): the accompanying parts
   at a drawn balance among themselves, and all of them together 4 to 9 dB (drawn) under the melody, so
   the tune is in front whatever the instruments, and the balance does not depend on how loud each
   SoundFont preset happens to be. An optional reverb convolves with a seeded, exponentially decaying
   noise impulse response. The mix is peak-normalised to -1 dBFS, so nothing clips.
4. **Caption.** Built from the same facts as the tags: form (from the score's metadata), key and mode after
   transposition, metre, tempo after the tempo change (quarter notes per minute), instruments, texture,
   drums, reverb, and mood words only where they follow from the mode (major: bright/cheerful, minor:
   melancholic/somber) or the beat tempo (fast: lively/upbeat, slow: calm/gentle). One of three sentence
   templates is drawn per rendering.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diamusic import corpus, pitch
from diamusic.corpus import MAX_SECONDS, Melody, _stable_int
from diamusic.errors import DiamusicError

RENDERERS = ("soundfont", "synth")
TEXTURES = ("solo", "accompanied", "mixed")
SAMPLE_RATE = 44100  # of render_piece's audio
OUTPUT_PEAK = 10 ** (-1.0 / 20.0)  # -1 dBFS
TRANSPOSE_RANGE = range(-5, 7)
TEMPO_SPREAD = 0.15  # tempo drawn within +-15% of the score's
ACCOMPANIED_SHARE = 2 / 3  # of texture="mixed": our users' music is mostly a melody over an accompaniment
DRUMS_SHARE = 0.5  # of accompanied single-line tunes in a metre with a drum pattern
REVERB_SHARE = 0.5
ACCOMPANIMENT_DB = (4.0, 9.0)  # the accompaniment together sits this many dB (drawn) under the melody
MAX_TUNING_CENTS = 5.0  # a whole band a little off A440, as real ones are


# ---------------------------------------------------------------------------------------------- instruments


@dataclass(frozen=True)
class Instrument:
    name: str  # what captions call it; no name is a word of another, so captions can be parsed back
    program: int  # General MIDI program, 0-based
    low: int  # playable MIDI range, for the melody
    high: int
    synth: str  # the corpus.INSTRUMENTS timbre that stands in for it with renderer="synth"


INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in (
        Instrument("flute", 73, 60, 96, "flute"),
        Instrument("recorder", 74, 60, 93, "flute"),
        Instrument("oboe", 68, 58, 91, "clarinet"),
        Instrument("clarinet", 71, 50, 91, "clarinet"),
        Instrument("violin", 40, 55, 100, "violin"),
        Instrument("fiddle", 110, 55, 93, "violin"),
        Instrument("trumpet", 56, 54, 84, "clarinet"),
        Instrument("piano", 0, 21, 108, "pluck"),
        Instrument("acoustic guitar", 24, 40, 84, "pluck"),
        Instrument("steel-string guitar", 25, 40, 84, "pluck"),
        Instrument("banjo", 105, 48, 84, "pluck"),
        Instrument("harp", 46, 24, 103, "pluck"),
        Instrument("string ensemble", 48, 28, 96, "organ"),
        Instrument("accordion", 21, 53, 89, "organ"),
        Instrument("acoustic bass", 32, 28, 67, "pluck"),
        Instrument("cello", 42, 36, 76, "violin"),
        Instrument("contrabass", 43, 28, 67, "violin"),
        Instrument("viola", 41, 48, 88, "violin"),
        Instrument("french horn", 60, 34, 77, "clarinet"),
        Instrument("trombone", 57, 34, 72, "clarinet"),
        Instrument("tuba", 58, 26, 62, "clarinet"),
        Instrument("bassoon", 70, 34, 75, "clarinet"),
        Instrument("church organ", 19, 24, 96, "organ"),
        Instrument("choir", 52, 40, 84, "organ"),
    )
}
# Melody instruments per collection. Left out on purpose: presets of TimGM6mb whose pitch a tracker cannot
# follow to 20 cents (the whistle's sample, the harmonica; the accordion's musette detuning above C5).
MELODY_INSTRUMENTS: dict[str, tuple[str, ...]] = {
    "essen": ("flute", "recorder", "oboe", "clarinet", "violin", "fiddle", "trumpet", "piano", "acoustic guitar"),
    "oneills": ("flute", "recorder", "fiddle", "violin", "banjo", "clarinet", "piano", "acoustic guitar"),
    "bach": ("flute", "recorder", "oboe", "clarinet", "violin", "trumpet", "piano"),
}
# Chord instrument -> the patterns it plays.
CHORD_INSTRUMENTS: dict[str, tuple[str, ...]] = {
    "piano": ("strum", "oompah", "arpeggio"),
    "acoustic guitar": ("strum", "arpeggio"),
    "steel-string guitar": ("strum",),
    "harp": ("arpeggio",),
    "string ensemble": ("block",),
    "accordion": ("block", "oompah"),
}
# Bass under a harmonised tune; None: the chord instrument plays its own bass (a pianist's left hand).
BASS_INSTRUMENTS: tuple[str | None, ...] = ("acoustic bass", "cello", "contrabass", None)
SUSTAINED_BASSES = frozenset({"cello", "contrabass"})  # bowed: one long root per segment
SELF_BASS = frozenset({"piano", "acoustic guitar", "steel-string guitar", "harp", "accordion"})
# A chorale's alto, tenor and bass.
ENSEMBLES: dict[str, tuple[str, str, str]] = {
    "strings": ("viola", "viola", "cello"),
    "brass": ("french horn", "trombone", "tuba"),
    "winds": ("clarinet", "bassoon", "bassoon"),
    "organ": ("church organ", "church organ", "church organ"),
    "piano": ("piano", "piano", "piano"),
    "choir": ("choir", "choir", "choir"),
}
DRUM_KITS = (0, 8)  # GM bank 128: Standard, Room
KICK, SIDE_STICK, SNARE, CLOSED_HAT = 36, 37, 38, 42


def _hats(count: int, step: float, factor: float) -> tuple[tuple[float, int, float], ...]:
    return tuple((k * step, CLOSED_HAT, factor) for k in range(count))


# metre -> (position in quarter notes within the measure, drum key, velocity factor)
DRUM_PATTERNS: dict[str, tuple[tuple[float, int, float], ...]] = {
    "2/4": ((0, KICK, 1.0), (1, SNARE, 0.8), *_hats(4, 0.5, 0.55)),
    "4/4": ((0, KICK, 1.0), (1, SNARE, 0.8), (2, KICK, 0.85), (3, SNARE, 0.8), *_hats(8, 0.5, 0.55)),
    "3/4": ((0, KICK, 1.0), (1, SIDE_STICK, 0.6), (2, SIDE_STICK, 0.6), *_hats(3, 1.0, 0.5)),
    "6/8": ((0, KICK, 1.0), (1.5, SNARE, 0.7), *_hats(6, 0.5, 0.5)),
    "9/8": ((0, KICK, 1.0), (1.5, SIDE_STICK, 0.6), (3, SNARE, 0.7), *_hats(9, 0.5, 0.5)),
    "12/8": ((0, KICK, 1.0), (1.5, SNARE, 0.7), (3, KICK, 0.85), (4.5, SNARE, 0.7), *_hats(12, 0.5, 0.5)),
}
DRUM_PATTERNS["2/2"] = DRUM_PATTERNS["4/4"]

# ---------------------------------------------------------------------------------------------- keys

_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
# (name, root in semitones above the tonic, chord tones above the root), most common first: ties go left
_TRIADS = {
    "major": (("I", 0, (0, 4, 7)), ("V", 7, (0, 4, 7)), ("IV", 5, (0, 4, 7)), ("vi", 9, (0, 3, 7)),
              ("ii", 2, (0, 3, 7)), ("iii", 4, (0, 3, 7))),
    "minor": (("i", 0, (0, 3, 7)), ("V", 7, (0, 4, 7)), ("iv", 5, (0, 3, 7)), ("VI", 8, (0, 4, 7)),
              ("III", 3, (0, 4, 7)), ("VII", 10, (0, 4, 7)), ("v", 7, (0, 3, 7))),
}  # fmt: skip


def transpose_key(key: str, semitones: int) -> str:
    """'D major' + 3 -> 'F major', spelled as the usual key signature (Bb major, F# minor)."""
    tonic, mode = pitch.parse_key(key)
    names = _MINOR_NAMES if mode == "minor" else _MAJOR_NAMES
    return f"{names[(tonic + semitones) % 12]} {mode}"


def _meter(meter: str) -> tuple[int, int] | None:
    try:
        num, den = (int(x) for x in meter.split("/"))
    except ValueError:
        return None
    return (num, den) if num > 0 and den > 0 else None


def beat_quarters(meter: str) -> float:
    """The felt beat in quarter notes: a dotted quarter in 6/8, 9/8, 12/8, else the metre's denominator."""
    nd = _meter(meter)
    if nd is None:
        return 1.0
    num, den = nd
    return 1.5 if den == 8 and num % 3 == 0 and num > 3 else 4.0 / den


# ---------------------------------------------------------------------------------------------- arrangement


@dataclass
class Part:
    """One instrument's line: (MIDI key, start s, duration s, velocity 1-127) per note."""

    role: str  # "melody", "chords", "bass", "alto", "tenor", "drums"
    instrument: Instrument | None  # None for drums
    notes: list[tuple[int, float, float, int]] = field(default_factory=list)
    level_db: float = 0.0  # balance within the accompaniment, dB (see render_arrangement)
    kit: int = 0  # GM drum kit (bank 128 preset), drums only


@dataclass
class Arrangement:
    parts: list[Part]  # the melody first
    tuning_cents: float
    accompaniment_db: float  # loudness of all accompanying parts together, relative to the melody
    reverb_wet: float  # 0 = dry
    reverb_rt60: float
    tags: dict[str, Any]


def _rng(melody: Melody, seed: int, what: str) -> np.random.Generator:
    return np.random.default_rng(_stable_int("piece", melody.id, seed, what))


def _collection_key(melody: Melody) -> str:
    prefix = melody.id.split("/")[0]
    if prefix in MELODY_INSTRUMENTS:
        return prefix
    for key, name in corpus.COLLECTIONS.items():
        if name == melody.collection:
            return key
    return "essen"


def _form(melody: Melody) -> str:
    if melody.form:
        return melody.form
    return {"essen": "folk song", "oneills": "Irish tune", "bach": "Bach chorale"}[_collection_key(melody)]


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


def harmonise(
    notes: Sequence[tuple[float, float, float]], segments: Sequence[tuple[float, float]], key: str
) -> list[tuple[int, tuple[int, ...]]]:
    """One diatonic triad per segment, as (root pitch class, chord pitch classes); see the module docstring."""
    tonic, mode = pitch.parse_key(key)
    triads = _TRIADS["minor" if mode == "minor" else "major"]
    chords = [((tonic + r) % 12, tuple((tonic + r + i) % 12 for i in tones)) for _, r, tones in triads]
    natural = {(tonic + i) % 12 for i in ((0, 2, 3, 5, 7, 8, 10) if mode == "minor" else (0, 2, 4, 5, 7, 9, 11))}
    # a melody note outside the natural scale (a raised 6th or 7th, a chromatic note) against its natural
    # neighbour in the chord is a false relation, not a passing dissonance
    clash_factor = np.array([0.5 if pc in natural else 2.0 for pc in range(12)])
    out: list[tuple[int, tuple[int, ...]]] = []
    for a, b in segments:
        weight = np.zeros(12)
        for p, s, d in notes:
            overlap = min(s + d, b) - max(s, a)
            if overlap > 1e-6:
                weight[int(round(p)) % 12] += overlap * (1.5 if abs(s - a) < 1e-3 else 1.0)
        if weight.sum() == 0:
            out.append(out[-1] if out else chords[0])
            continue
        best, best_score = chords[0], -np.inf
        for root, pcs in chords:
            cover = sum(weight[pc] for pc in pcs)
            score = cover - sum(
                w * clash_factor[pc] for pc, w in enumerate(weight) if any((pc - c) % 12 in (1, 11) for c in pcs)
            )
            if score > best_score + 1e-9:
                best, best_score = (root, pcs), score
        out.append(best)
    if out and notes:
        last = int(round(notes[-1][0])) % 12
        if last in chords[0][1]:  # end on the tonic when the tune does
            out[-1] = chords[0]
    return out


def _voicing(pcs: tuple[int, ...], previous: list[int] | None, ceiling: float) -> list[int]:
    """A close-position triad in E3..G4 (lower when the tune dips), the one nearest the previous chord.

    Voicings whose top stays below `ceiling` (the segment's lowest melody note) come first, so the chords
    do not cover the tune; a tune that sits low pushes them down as far as C3.
    """
    candidates = []
    for low_limit in (52, 48):
        for i in range(3):
            order = pcs[i:] + pcs[:i]
            low = next(p for p in range(low_limit, low_limit + 12) if p % 12 == order[0])
            voiced = [low]
            for pc in order[1:]:
                voiced.append(voiced[-1] + (pc - voiced[-1]) % 12)
            candidates.append(voiced)
    candidates = [v for v in candidates if v[-1] <= 67]
    below = [v for v in candidates if v[-1] < ceiling]
    target = previous or [55, 60, 64]
    return min(
        below or [min(candidates, key=lambda v: v[-1])],
        key=lambda v: (sum(abs(x - y) for x, y in zip(v, target, strict=True)), v),
    )


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


def _add(part: Part, key: int, start: float, dur: float, velocity: int, stop: float) -> None:
    """Add a note that ends by `stop`, the end of its chord's segment."""
    if start < stop - 1e-6:
        part.notes.append((key, start, min(dur, stop - start), velocity))


def _accompany(
    melody_notes: Sequence[tuple[float, float, float]],
    melody: Melody,
    key: str,
    chords_part: Part,
    bass_part: Part,
    pattern: str,
    velocity: int,
) -> None:
    """Fill the chord and bass parts of a harmonised tune (score seconds; humanised later)."""
    end = max(s + d for _, s, d in melody_notes)
    segments = _segments(melody, end)
    harmony = harmonise(melody_notes, [(a, b) for a, b, _ in segments], key)
    spq = 60.0 / melody.tempo_bpm
    beat = beat_quarters(melody.meter) * spq
    eighth = 0.5 * spq
    sustained_bass = bass_part.instrument is not None and bass_part.instrument.name in SUSTAINED_BASSES
    strum = chords_part.instrument is not None and "guitar" in chords_part.instrument.name
    previous: list[int] | None = None
    for (a, b, downbeat), (root, pcs) in zip(segments, harmony, strict=True):
        ceiling = min((p for p, s, d in melody_notes if s < b - 1e-6 and s + d > a + 1e-6), default=128.0)
        voiced = _voicing(pcs, previous, ceiling)
        previous = voiced
        accent = 8 if downbeat else 0
        beats = [a + k * beat for k in range(max(1, int(round((b - a) / beat))))]
        beats = [t for t in beats if t < b - 1e-6]

        bass_root = next(p for p in range(40, 52) if p % 12 == root)
        fifth = bass_root + 7
        if sustained_bass or pattern == "block":
            _add(bass_part, bass_root, a, (b - a) * 0.95, velocity + accent, b)
        elif len(beats) % 2 == 0:
            for k, t in enumerate(beats):
                _add(bass_part, bass_root if k % 2 == 0 else fifth, t, beat * 0.85, velocity + accent, b)
        else:
            _add(bass_part, bass_root, a, beat * 0.9 if pattern == "oompah" else (b - a) * 0.95, velocity, b)

        if pattern == "block":
            for p in voiced:
                _add(chords_part, p, a, (b - a) * 0.96, velocity + accent, b)
        elif pattern in ("strum", "oompah"):
            hits = beats if pattern == "strum" else (beats[1:] or [a + beat / 2])
            for k, t in enumerate(hits):
                v = velocity + (accent if k == 0 and pattern == "strum" else 0)
                for j, p in enumerate(voiced):  # a strum sounds the strings low to high
                    _add(chords_part, p, t + (0.012 * j if strum else 0.0), beat * 0.8, v, b)
        elif pattern == "arpeggio":
            tones = [*voiced, voiced[0] + 12]
            order = [0, 1, 2, 3, 2, 1]
            for k in range(max(1, int(round((b - a) / eighth)))):
                t = a + k * eighth
                if t >= b - 1e-6:
                    break
                # let the notes ring a little, not into mud
                _add(chords_part, tones[order[k % 6]], t, 4 * eighth, velocity + (accent if k == 0 else -6), b)


def _drums(melody: Melody, end: float, part: Part, velocity: int) -> None:
    """The metre's pattern on every measure of full length (not on a pickup or a shortened last measure)."""
    spq = 60.0 / melody.tempo_bpm
    for start, _, full in _measures(melody, end):
        if full:
            for q, key, factor in DRUM_PATTERNS[melody.meter]:
                part.notes.append((key, start + q * spq, min(0.2, spq / 2), int(velocity * factor)))


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


def arrange(melody: Melody, seed: int, texture: str, renderer: str) -> Arrangement:
    """Every choice of one rendering, and the parts to play; see the module docstring."""
    collection = _collection_key(melody)
    if texture == "mixed":
        texture = "accompanied" if _rng(melody, seed, "texture").random() < ACCOMPANIED_SHARE else "solo"
    chorale = texture == "accompanied" and bool(melody.accompaniment)
    lo = min(p for p, _, _ in melody.notes)
    hi = max(p for p, _, _ in melody.notes)

    rng = _rng(melody, seed, "instruments")
    ensemble = pattern = None
    chord_inst = bass_inst = None
    pool = list(MELODY_INSTRUMENTS[collection])
    if chorale:
        ensemble = sorted(ENSEMBLES)[int(rng.integers(len(ENSEMBLES)))]
        pool = [n for n in pool if n not in ENSEMBLES[ensemble]]
    mel_inst, transpositions = _choose_melody_instrument(rng, pool, lo, hi)
    if texture == "accompanied" and not chorale:
        chord_names = [n for n in CHORD_INSTRUMENTS if n != mel_inst.name]
        chord_inst = INSTRUMENTS[chord_names[int(rng.integers(len(chord_names)))]]
        patterns = CHORD_INSTRUMENTS[chord_inst.name]
        pattern = patterns[int(rng.integers(len(patterns)))]
        bass_names = [n for n in BASS_INSTRUMENTS if n != mel_inst.name and (n or chord_inst.name in SELF_BASS)]
        bass_name = bass_names[int(rng.integers(len(bass_names)))]
        bass_inst = INSTRUMENTS[bass_name] if bass_name else chord_inst

    transpose = int(_rng(melody, seed, "transpose").choice(transpositions))
    key = transpose_key(melody.key, transpose)
    tempo_rng = _rng(melody, seed, "tempo")
    tempo_bpm = int(round(melody.tempo_bpm * tempo_rng.uniform(1 - TEMPO_SPREAD, 1 + TEMPO_SPREAD)))
    factor = tempo_bpm / melody.tempo_bpm  # exactly the tempo the caption states
    tuning = float(_rng(melody, seed, "tuning").uniform(-MAX_TUNING_CENTS, MAX_TUNING_CENTS))
    dyn = _rng(melody, seed, "dynamics")
    velocity = int(dyn.integers(70, 111))
    acc_velocity = velocity - int(dyn.integers(10, 26))
    # the melody in front of the accompaniment as a whole (a melody-focused mix); within it, the balance
    # of the parts relative to each other
    accompaniment_db = -float(dyn.uniform(*ACCOMPANIMENT_DB))
    levels = {"chords": 0.0, "bass": dyn.uniform(-2, 1), "drums": dyn.uniform(-7, -4)}
    for role in ("alto", "tenor"):
        levels[role] = dyn.uniform(-1, 1)
    legato = dyn.uniform(0.86, 0.97)
    rev = _rng(melody, seed, "reverb")
    reverb = bool(rev.random() < REVERB_SHARE)
    reverb_wet = float(rev.uniform(0.1, 0.35)) if reverb else 0.0
    reverb_rt60 = float(rev.uniform(0.8, 2.0)) if reverb else 0.0

    # everything below is in the score's seconds until _humanise stretches it to the drawn tempo
    mel_notes = [(p + transpose, s, d) for p, s, d in melody.notes]
    kept = [n for n in mel_notes if (n[1] + n[2]) / factor <= MAX_SECONDS + 1e-6] or mel_notes[:1]
    end = max(s + d for _, s, d in kept)
    bars = {round(a, 4) for a, _ in melody.bars}
    melody_part = Part(
        "melody",
        mel_inst,
        [(int(round(p)), s, d, velocity + (6 if round(s, 4) in bars else 0)) for p, s, d in kept],
    )
    parts = [melody_part]
    drums = False
    if chorale:
        voices = melody.accompaniment[-3:]  # the lowest three: alto, tenor, bass in a chorale
        roles = ("alto", "tenor", "bass")[-len(voices) :]
        for role, name, voice in zip(roles, ENSEMBLES[ensemble][-len(voices) :], voices, strict=True):
            part = Part(role, INSTRUMENTS[name], level_db=levels.get(role, levels["bass"]))
            for p, s, d in voice:
                if s < end - 1e-6:
                    part.notes.append((int(round(p)) + transpose, s, min(d, end - s) * 0.97, acc_velocity))
            parts.append(part)
    elif texture == "accompanied":
        chords_part = Part("chords", chord_inst, level_db=levels["chords"])
        bass_part = Part("bass", bass_inst, level_db=levels["bass"])
        _accompany(kept, melody, key, chords_part, bass_part, pattern, acc_velocity)
        parts += [chords_part, bass_part]
        if melody.meter in DRUM_PATTERNS and _rng(melody, seed, "drums").random() < DRUMS_SHARE:
            drums = True
            kit = DRUM_KITS[int(_rng(melody, seed, "kit").integers(len(DRUM_KITS)))]
            drum_part = Part("drums", None, level_db=levels["drums"], kit=kit)
            _drums(melody, end, drum_part, acc_velocity)
            parts.append(drum_part)

    human = _rng(melody, seed, "humanise")
    for part in parts:
        sigma = {"melody": 0.004, "drums": 0.003}.get(part.role, 0.006)
        _humanise(part, human, sigma, factor, gate=legato if part.role == "melody" else 1.0)

    accompaniment: list[str] = []
    for part in parts[1:]:
        if part.instrument is not None:
            name = part.instrument.name if renderer == "soundfont" else synth_name(part.instrument)
            if name not in accompaniment:
                accompaniment.append(name)
    # the felt beat for the mood words: dotted quarters in 6/8, 9/8, 12/8, else quarters (also in 2/2,
    # whose half notes would make every reel "calm" at the collection's default tempo)
    beat_bpm = tempo_bpm / 1.5 if beat_quarters(melody.meter) == 1.5 else tempo_bpm
    tags: dict[str, Any] = {
        "id": melody.id,
        "seed": seed,
        "collection": melody.collection,
        "title": melody.title,
        "form": _form(melody),
        "key": key,
        "meter": melody.meter,
        "tempo_bpm": tempo_bpm,
        "beat_bpm": round(beat_bpm, 1),
        "texture": texture,
        "melody_instrument": mel_inst.name if renderer == "soundfont" else synth_name(mel_inst),
        "accompaniment": accompaniment,
        "ensemble": ensemble,
        "pattern": pattern,
        "drums": drums,
        "reverb": reverb,
        "reverb_wet": round(reverb_wet, 3),
        "renderer": renderer,
        "transpose": transpose,
        "tuning_cents": round(tuning, 2),
        "accompaniment_db": round(accompaniment_db, 2) if len(parts) > 1 else None,
        "velocity": velocity,
        "parts": len(parts) - int(drums),
        "mood": _mood(rng=_rng(melody, seed, "mood"), mode=pitch.parse_key(key)[1], beat_bpm=beat_bpm),
    }
    return Arrangement(parts, tuning, accompaniment_db, reverb_wet, reverb_rt60, tags)


def synth_name(inst: Instrument) -> str:
    """What a caption calls the additive-synth stand-in for `inst`."""
    return f"synth {inst.synth}"


# ---------------------------------------------------------------------------------------------- captions

MOODS = {"major": ("bright", "cheerful"), "minor": ("melancholic", "somber")}
FAST_WORDS, SLOW_WORDS = ("lively", "upbeat"), ("calm", "gentle")
FAST_BEAT_BPM, SLOW_BEAT_BPM = 120, 72
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def _mood(rng: np.random.Generator, mode: str, beat_bpm: float) -> list[str]:
    words = [MOODS[mode][int(rng.integers(2))]]
    if beat_bpm >= FAST_BEAT_BPM:
        words.append(FAST_WORDS[int(rng.integers(2))])
    elif beat_bpm <= SLOW_BEAT_BPM:
        words.append(SLOW_WORDS[int(rng.integers(2))])
    return words


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def describe(tags: dict[str, Any], rng: np.random.Generator) -> str:
    """The caption: every fact of `tags` that a listener could tell, in one of three sentence templates."""
    form = tags["form"] + (" melody" if tags["texture"] == "solo" and tags["form"] == "Bach chorale" else "")
    subject = _article(", ".join(tags["mood"]) + " " + form)
    meter = "free time" if tags["meter"] == "free" else f"{tags['meter']} time"
    mel, acc = tags["melody_instrument"], tags["accompaniment"]
    if tags["texture"] == "solo":
        verb, noun = f"played on solo {mel}", f"solo {mel}"
    elif tags["ensemble"] is not None:
        parts = _NUMBER_WORDS.get(tags["parts"], str(tags["parts"]))
        rest = f"the melody on {mel} over {_join(acc)}"
        verb, noun = f"arranged in {parts} parts, {rest}", f"{parts}-part arrangement, {rest}"
    else:
        style = "arpeggiated " if tags["pattern"] == "arpeggio" else ""
        rest = f"{mel} with {style}{_join(acc)} accompaniment"
        verb, noun = f"played on {rest}", rest
    drums = (" and light drums", " and a drum kit")[int(rng.integers(2))] if tags["drums"] else ""
    if tags["reverb"]:
        reverb = "with a touch of reverb" if tags["reverb_wet"] < 0.2 else "with noticeable reverb"
    else:
        reverb = ("dry recording", "dry, close sound")[int(rng.integers(2))]
    key, bpm = tags["key"], tags["tempo_bpm"]
    template = int(rng.integers(3))
    if template == 0:
        text = f"{subject} in {key}, {meter}, {bpm} bpm, {verb}{drums}, {reverb}."
    elif template == 1:
        text = f"{noun}{drums}: {subject} in {key} at {bpm} bpm, {meter}; {reverb}."
    else:
        text = f"{subject} ({key}, {meter}, {bpm} bpm), {verb}{drums}. {reverb[0].upper()}{reverb[1:]}."
    return text[0].upper() + text[1:]


# ---------------------------------------------------------------------------------------------- rendering


def soundfont_path() -> Path:
    """The General MIDI SoundFont inside the pretty_midi package: the one file rendering needs."""
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


@functools.cache
def _soundfont_bytes() -> bytes:
    return soundfont_path().read_bytes()


def _events(part: Part, sample_rate: int, n: int) -> list[tuple[int, int, int, int]]:
    """(sample, 0 = off / 1 = on, key, velocity), note-offs first at equal times."""
    events = []
    for key, start, dur, vel in part.notes:
        on = min(int(round(start * sample_rate)), n)
        off = min(max(on + 1, int(round((start + dur) * sample_rate))), n)
        events += [(on, 1, key, vel), (off, 0, key, 0)]
    return sorted(events)


def _stem_soundfont(part: Part, n: int, tuning_cents: float, sample_rate: int) -> np.ndarray:
    try:
        import tinysoundfont
    except ImportError as exc:
        raise RenderOptionError(
            "the soundfont renderer needs tinysoundfont: pip install --no-deps tinysoundfont (or use the synth)"
        ) from exc

    # a fresh synthesiser per stem: tsf's reset lets voices ring out, which would leak into the next stem
    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(_soundfont_bytes(), max_voices=128)
    drums = part.instrument is None
    chan = 9 if drums else 0
    synth.program_select(chan, sfid, 128 if drums else 0, part.kit if drums else part.instrument.program, drums)
    if not drums:
        synth.set_tuning(chan, tuning_cents / 100.0)
    stereo = np.zeros(2 * n, dtype=np.float32)  # interleaved left/right, rendered in place between events
    pos = 0
    for sample, kind, key, vel in [*_events(part, sample_rate, n), (n, -1, 0, 0)]:
        if sample > pos:
            synth.generate_simple(sample - pos, buffer=memoryview(stereo[2 * pos : 2 * sample]).cast("B"))
            pos = sample
        if kind == 1:
            synth.noteon(chan, key, min(vel, 127))
        elif kind == 0:
            synth.noteoff(chan, key)
    return 0.5 * (stereo[0::2].astype(np.float64) + stereo[1::2])


def _drum_hit(key: int, velocity: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.3 * sample_rate)) / sample_rate
    if key == KICK:
        freq = 45.0 + 65.0 * np.exp(-t / 0.04)
        hit = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / 0.12)
    elif key in (SNARE, SIDE_STICK):
        decay = 0.07 if key == SNARE else 0.03
        hit = 0.6 * rng.standard_normal(len(t)) * np.exp(-t / decay) + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(
            -t / 0.05
        )
    else:  # hi-hat: differenced noise is a cheap high-pass
        hit = 0.5 * np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / 0.025)
    return velocity * hit


def _stem_synth(part: Part, n: int, tuning_cents: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    if part.instrument is None:
        for key, start, _, vel in part.notes:
            hit = _drum_hit(key, vel / 127.0, sample_rate, rng)
            n0 = int(round(start * sample_rate))
            m = min(len(hit), n - n0)
            if m > 0:
                out[n0 : n0 + m] += hit[:m]
        return out
    timbre = corpus._TIMBRES[part.instrument.synth]
    perf = corpus.Performance(
        detune_cents=tuning_cents,
        vibrato_hz=float(rng.uniform(4.5, 6.5)),
        vibrato_cents=float(timbre.vibrato_cents * rng.uniform(0.6, 1.3)),
        brightness=float(rng.uniform(-0.3, 0.3)),
        gain=1.0,
    )
    notes = [(float(k), s, d) for k, s, d, _ in part.notes]
    corpus._synth_into(out, notes, sample_rate, part.instrument.synth, perf, rng, [v / 127.0 for *_, v in part.notes])
    return out


def loudness(wave: np.ndarray, sample_rate: int, frame: int = 2048) -> float:
    """RMS over the frames within 30 dB of the loudest, after a 200 Hz high-pass.

    Active frames: the level of the notes, not of the pauses. The high-pass stands in for the ear's low
    sensitivity to the lowest octaves, so a bass line is not turned down for energy nobody hears as loud.
    """
    from scipy.signal import butter, sosfilt

    wave = sosfilt(butter(2, 200.0, "highpass", fs=sample_rate, output="sos"), wave)
    frames = len(wave) // frame
    if frames == 0:
        return float(np.sqrt(np.mean(wave**2))) if len(wave) else 0.0
    energy = (wave[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
    active = energy > energy.max() * 1e-3
    return float(np.sqrt(energy[active].mean())) if active.any() else 0.0


def reverb(wave: np.ndarray, sample_rate: int, rt60: float, wet: float, seed: int) -> np.ndarray:
    """Add a seeded room: Gaussian noise decaying by 60 dB over `rt60` s, darkened, after a 12 ms pre-delay.

    The impulse response has unit energy, so `wet` is roughly the reverb's level relative to the dry sound.
    """
    from scipy.signal import fftconvolve, lfilter

    rng = np.random.default_rng(seed)
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    ir = rng.standard_normal(len(t)) * np.exp(-6.91 * t / rt60)
    ir = lfilter([0.35], [1.0, -0.65], ir)  # a one-pole low-pass: real rooms absorb the highs first
    ir = np.concatenate([np.zeros(int(0.012 * sample_rate)), ir])
    ir /= np.sqrt(np.sum(ir**2))
    return wave + wet * fftconvolve(wave, ir)[: len(wave)]


def render_arrangement(
    arrangement: Arrangement, renderer: str, melody: Melody, seed: int, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Render each part, mix at the drawn levels, add reverb, normalise to -1 dBFS peak (float32, mono)."""
    end = max((s + d for part in arrangement.parts for _, s, d, _ in part.notes), default=0.0)
    tail = 1.2 + min(arrangement.reverb_rt60, 1.5)
    n = int(np.ceil((end + tail) * sample_rate))
    stems = []
    for part in arrangement.parts:
        if renderer == "soundfont":
            stem = _stem_soundfont(part, n, arrangement.tuning_cents, sample_rate)
        else:
            stem = _stem_synth(part, n, arrangement.tuning_cents, sample_rate, _rng(melody, seed, f"synth-{part.role}"))
        level = loudness(stem, sample_rate)
        stems.append(stem * (10 ** (part.level_db / 20) / level) if level > 0 else stem)
    mix = stems[0]
    if len(stems) > 1:
        accompaniment = np.sum(stems[1:], axis=0)
        melody_level, accompaniment_level = loudness(mix, sample_rate), loudness(accompaniment, sample_rate)
        if accompaniment_level > 0:
            gain = 10 ** (arrangement.accompaniment_db / 20) * melody_level / accompaniment_level
            mix = mix + gain * accompaniment
    if arrangement.reverb_wet > 0:
        mix = reverb(
            mix, sample_rate, arrangement.reverb_rt60, arrangement.reverb_wet, _stable_int("ir", melody.id, seed)
        )
    fade = min(n, int(0.05 * sample_rate))
    mix[n - fade :] *= np.linspace(1.0, 0.0, fade)
    peak = np.abs(mix).max()
    if peak > 0:
        mix *= OUTPUT_PEAK / peak
    return mix.astype(np.float32)


class RenderOptionError(DiamusicError):
    """An unknown renderer or texture."""


@dataclass(frozen=True)
class Rendering:
    """One arranged, rendered and captioned piece."""

    wave: np.ndarray  # mono float32 at sample_rate, peak <= 1
    sample_rate: int
    caption: str
    # the melody as it sounds: (MIDI pitch including the tuning offset, start s, duration s) after
    # transposition, tempo change and humanised timing; duration is note-on to note-off (the release follows)
    melody: tuple[tuple[float, float, float], ...]
    # JSON-serialisable facts: form, key, meter, tempo_bpm, texture, melody_instrument, accompaniment,
    # drums, reverb, renderer, transpose, collection, and more (mood, pattern, ensemble, tuning_cents, ...)
    tags: dict[str, Any]


def check_options(renderer: str, texture: str) -> None:
    if renderer not in RENDERERS:
        raise RenderOptionError(f"unknown renderer {renderer!r}; choose one of {', '.join(RENDERERS)}")
    if texture not in TEXTURES:
        raise RenderOptionError(f"unknown texture {texture!r}; choose one of {', '.join(TEXTURES)}")


def render_piece(melody: Melody, seed: int, renderer: str = "soundfont", texture: str = "mixed") -> Rendering:
    """Arrange `melody` (solo, or over an accompaniment), render it at SAMPLE_RATE and caption it.

    Deterministic: the same (melody, seed, renderer, texture) gives byte-identical audio. texture="mixed"
    draws solo or accompanied per (melody, seed) and then renders exactly what that texture would.
    """
    check_options(renderer, texture)
    arrangement = arrange(melody, seed, texture, renderer)
    wave = render_arrangement(arrangement, renderer, melody, seed)
    tags = arrangement.tags
    caption = describe(tags, _rng(melody, seed, "caption"))
    tune = arrangement.tuning_cents / 100.0
    played = tuple((round(k + tune, 4), round(s, 6), round(d, 6)) for k, s, d, _ in arrangement.parts[0].notes)
    return Rendering(wave=wave, sample_rate=SAMPLE_RATE, caption=caption, melody=played, tags=tags)
