"""Built-in music from music21's bundled corpus: melodies, their arrangement, rendering and captions.

Three collections ship with music21 and need no download: the Essen folksong collection and O'Neill's
Music of Ireland (many tunes per .abc file) and the Bach chorales (one MusicXML file each: the soprano is
the melody, the alto, tenor and bass are kept as its accompaniment). They are for non-commercial research
use, like the corpus itself. Each melody carries what its score says about it: key, metre, tempo, the
measures, and a form for captions taken from the file's own metadata (Essen's origin "O:" and genre "R:"
fields, O'Neill's rhythm "R:" field or title, else the metre; "Bach chorale").

Parsing with music21 is the slow part (see benchmarks/RESULTS.md), so we index the
.abc files with a cheap text scan, parse only the tunes a caller actually iterates over, and memoise
the parsed melodies in memory.

`diamusic.render.render_piece` is what datasets use: it arranges a melody (solo, or over a harmonised
accompaniment / the chorale's own voices, optionally with drums), renders it offline with the General
MIDI SoundFont that ships in `pretty_midi` (or with the additive synth below), and captions it; every
choice is drawn deterministically from (piece, seed). The design is in its module docstring.

The additive synth (`render`) plays a melody alone with a little human imperfection (a per-render detuning
of a few cents, vibrato, per-note velocity, timing and intonation jitter, attack/release envelopes, a
per-render tweak of the timbre) so that a codec or language model cannot treat the audio as a lookup table
of 12 pitches. It stays as it was, for the codec benchmarks and tests that were measured with it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLLECTIONS = {
    "essen": "Essen folksongs",
    "oneills": "O'Neill's Music of Ireland",
    "bach": "Bach chorales (soprano)",
}
# Quarter notes per minute when the score gives no tempo (Essen never does, most O'Neill tunes don't).
DEFAULT_TEMPO = {"essen": 96.0, "oneills": 120.0, "bach": 80.0}
MAX_SECONDS = 30.0  # longer pieces are cut at a note boundary; Dia's context is ~35.7 s
MIN_SECONDS = 5.0
MIN_NOTES = 10
INSTRUMENTS: tuple[str, ...] = ("flute", "clarinet", "violin", "organ", "pluck")


@dataclass(frozen=True)
class Melody:
    id: str  # e.g. "essen/altdeu10-0012", "oneills/0101-0200-0105", "bach/bwv10.7"
    notes: tuple[tuple[float, float, float], ...]  # (midi pitch, start s, duration s), monophonic, sorted
    key: str  # e.g. "G major", "Bb minor"
    meter: str  # e.g. "3/4", or "free" when the score has no time signature
    tempo_bpm: float  # quarter notes per minute
    collection: str  # a value of COLLECTIONS
    title: str
    # What a listener would call the piece, from the score's own metadata where it has any: "German love
    # song", "Irish jig", "Bach chorale". Empty for hand-made melodies (render.py then falls back on the
    # collection).
    form: str = ""
    # (start s, length s) of every full measure on the notes' clock; an opening pickup measure is left out,
    # so the first entry is the first downbeat. The harmoniser and drum patterns follow these.
    bars: tuple[tuple[float, float], ...] = ()
    # The other voices of a multi-part score (a chorale's alto, tenor and bass), same clock and format as
    # `notes` except that a part may hold chords; empty for single-line tunes.
    accompaniment: tuple[tuple[tuple[float, float, float], ...], ...] = ()

    @property
    def duration(self) -> float:
        return max(start + dur for _, start, dur in self.notes)

    def excerpt(self, seconds: float) -> Melody:
        """The opening: melody notes that end by `seconds` (at least one), and the measures and accompaniment
        up to the last of them."""
        notes = tuple(n for n in self.notes if n[1] + n[2] <= seconds + 1e-9) or self.notes[:1]
        end = max(s + d for _, s, d in notes)
        parts = tuple(
            tuple((p, s, round(min(d, end - s), 6)) for p, s, d in part if s < end - 1e-6)
            for part in self.accompaniment
        )
        return dataclasses.replace(
            self,
            notes=notes,
            bars=tuple(b for b in self.bars if b[0] < end - 1e-6),
            accompaniment=tuple(p for p in parts if p),
        )


# ---------------------------------------------------------------------------------------------- index


def _corpus_dir() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


@dataclass(frozen=True)
class _Source:
    id: str
    collection: str  # key of COLLECTIONS
    path: Path
    abc: str | None = None  # the single tune's ABC text; None for MusicXML files


def _abc_sources(folder: str, prefix: str, dedupe_numbers: bool) -> list[_Source]:
    sources, seen = [], set()
    for path in sorted((_corpus_dir() / folder).glob("*.abc")):
        if path.stem.startswith("test"):  # music21's own parser test files, not songs
            continue
        for chunk in re.split(r"(?m)^(?=X:)", path.read_text(encoding="utf-8", errors="replace")):
            m = re.match(r"X:\s*(\d+)", chunk)
            if m is None:
                continue
            number = int(m.group(1))
            # O'Neill's tunes are numbered across the book and a few files overlap (alternative
            # transcriptions); keep the first copy so one tune can't land in both train and held-out
            if dedupe_numbers:
                if number in seen:
                    continue
                seen.add(number)
            sources.append(_Source(f"{prefix}/{path.stem}-{number:04d}", prefix, path, chunk))
    return sources


@functools.cache
def _index() -> dict[str, list[_Source]]:
    bach, seen = [], set()
    for path in sorted((_corpus_dir() / "bach").iterdir()):
        # "bwv18.5-lz" and "bwv18.5-w" are versions of one chorale: keep one per BWV number
        base = path.stem.split("-")[0]
        if path.suffix in (".mxl", ".xml", ".musicxml") and base not in seen:
            seen.add(base)
            bach.append(_Source(f"bach/{base}", "bach", path))
    return {
        "essen": _abc_sources("essenFolksong", "essen", dedupe_numbers=False),
        "oneills": _abc_sources("oneills1850", "oneills", dedupe_numbers=True),
        "bach": bach,
    }


# ---------------------------------------------------------------------------------------------- parse

# Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")


def estimate_key(notes: tuple[tuple[float, float, float], ...], sharps: int | None) -> str:
    """Krumhansl-Schmuckler key finding on the duration-weighted pitch-class histogram.

    With a key signature (`sharps`, negative for flats) only its relative major and minor compete: the
    .abc files of the Essen collection give a signature but no mode, so "K: G" may be E minor.
    """
    hist = np.zeros(12)
    for pitch, _, dur in notes:
        hist[int(round(pitch)) % 12] += dur
    candidates = [(t, mode) for t in range(12) for mode in ("major", "minor")]
    if sharps is not None:
        major = (7 * sharps) % 12
        candidates = [(major, "major"), ((major + 9) % 12, "minor")]

    def score(tonic: int, mode: str) -> float:
        profile = np.roll(_KK_MAJOR if mode == "major" else _KK_MINOR, tonic)
        return float(np.corrcoef(hist, profile)[0, 1]) if hist.std() > 0 else 0.0

    tonic, mode = max(candidates, key=lambda c: score(*c))
    names = _FLAT_NAMES if (sharps is not None and sharps < 0) else _SHARP_NAMES
    return f"{names[tonic]} {mode}"


def _timed_notes(part, origin: float, sec_per_quarter: float, end: float) -> tuple[tuple[float, float, float], ...]:
    """A voice of the score as (midi pitch, start s, duration s), every pitch of a chord kept, cut at `end`."""
    out = []
    for n in part.stripTies().flatten().notes:
        start, dur = (float(n.offset) - origin) * sec_per_quarter, float(n.quarterLength) * sec_per_quarter
        if dur <= 0 or start < -1e-6 or start >= end - 1e-6:
            continue
        dur = min(dur, end - start)
        out.extend((float(p.midi), round(start, 6), round(dur, 6)) for p in n.pitches)
    return tuple(sorted(out, key=lambda r: (r[1], r[0])))


def _bars(part, origin: float, sec_per_quarter: float, end: float) -> tuple[tuple[float, float], ...]:
    bars = []
    for m in part.getElementsByClass("Measure"):
        if float(m.paddingLeft) > 0:  # an anacrusis: its first beat is not a downbeat
            continue
        start, length = (float(m.offset) - origin) * sec_per_quarter, float(m.duration.quarterLength) * sec_per_quarter
        if length > 0 and start >= -1e-6 and start < end - 1e-6:
            bars.append((round(start, 6), round(length, 6)))
    return tuple(bars)


def _melody_from_part(part, source: _Source, title: str, score, others: tuple = ()) -> Melody | None:
    from music21 import chord, key, meter, tempo

    flat = part.stripTies().flatten()
    if any(isinstance(n, chord.Chord) for n in flat.notes):
        return None  # double stops / chords: not a monophonic line
    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    bpm = marks[0].getQuarterBPM() if marks else None
    if bpm is None or not 40.0 <= bpm <= 220.0:  # missing or implausible -> collection default
        bpm = DEFAULT_TEMPO[source.collection]
    sec_per_quarter = 60.0 / bpm

    raw = [(float(n.pitch.midi), float(n.offset), float(n.quarterLength)) for n in flat.notes]
    raw = [r for r in raw if r[2] > 0]  # grace notes have zero length
    if not raw:
        return None
    raw.sort(key=lambda r: r[1])
    origin = raw[0][1]
    notes = []
    for pitch, offset, ql in raw:
        start, dur = (offset - origin) * sec_per_quarter, ql * sec_per_quarter
        if notes and start < notes[-1][1] + notes[-1][2] - 1e-6:
            return None  # overlapping notes (several voices in one part)
        if start + dur > MAX_SECONDS:
            break
        notes.append((pitch, round(start, 6), round(dur, 6)))
    notes = tuple(notes)
    if len(notes) < MIN_NOTES or notes[-1][1] + notes[-1][2] < MIN_SECONDS:
        return None
    end = notes[-1][1] + notes[-1][2]

    signatures = list(part.recurse().getElementsByClass(key.KeySignature))
    sharps = signatures[0].sharps if signatures else None
    meters = list(part.recurse().getElementsByClass(meter.TimeSignature))
    accompaniment = tuple(v for v in (_timed_notes(p, origin, sec_per_quarter, end) for p in others) if v)
    return Melody(
        id=source.id,
        notes=notes,
        key=estimate_key(notes, sharps),
        meter=meters[0].ratioString if meters else "free",
        tempo_bpm=float(round(bpm, 2)),
        collection=COLLECTIONS[source.collection],
        title=title,
        bars=_bars(part, origin, sec_per_quarter, end),
        accompaniment=accompaniment,
    )


# Essen "O:" (origin) fields name regions from the continent down; the first token we know names the piece.
_ESSEN_ORIGINS = {
    "Deutschland": "German",
    "China": "Chinese",
    "Lothringen": "Lorraine",
    "Luxemburg": "Luxembourgish",
    "Elsass": "Alsatian",
    "Oesterreich": "Austrian",
    "Schweiz": "Swiss",
    "Niederlande": "Dutch",
    "Irland": "Irish",
    "Island": "Icelandic",
    "Ungarn": "Hungarian",
    "Jugoslawien": "Yugoslav",
    "Tschechoslowakei": "Czech",
    "Polen": "Polish",
    "Frankreich": "French",
    "Daenemark": "Danish",
    "Schweden": "Swedish",
    "Rumaenien": "Romanian",
}
# Essen "R:" (genre) fields are German keyword lists; the earliest keyword wins ("Romanze, Ballade, Lied,
# religioeses Lied" is a ballad).
_ESSEN_GENRES = (
    ("ballade", "folk ballad"),
    ("romanze", "folk ballad"),
    ("wiegen", "lullaby"),
    ("kinder", "children's song"),
    ("religi", "sacred folk song"),
    ("geistlich", "sacred folk song"),
    ("liebe", "love song"),
    ("tanz", "dance song"),
    ("soldaten", "soldiers' song"),
    ("kriegs", "soldiers' song"),
    ("shange", "mountain song"),
)
# O'Neill's "R:" (rhythm) field, then words of the title; both are the transcriber's own classification.
_IRISH_FORMS = (
    ("slip jig", "slip jig"),
    ("slipjig", "slip jig"),
    ("double jig", "jig"),
    ("jig", "jig"),
    ("reel", "reel"),
    ("hornpipe", "hornpipe"),
    ("highland", "highland fling"),
    ("slide", "slide"),
    ("polka", "polka"),
    ("waltz", "waltz"),
    ("march", "march"),
    ("lament", "lament"),
    ("air", "air"),
)


def _abc_field(abc: str, name: str) -> str:
    m = re.search(rf"(?m)^{name}:[ \t]*(.*)$", abc)
    return m.group(1).strip() if m else ""


def _form(source: _Source, meter: str) -> str:
    """The genre words a caption uses, from the score's metadata; see the tables above."""
    if source.collection == "bach":
        return "Bach chorale"
    abc = source.abc or ""
    if source.collection == "essen":
        nation = ""
        for token in re.split(r"[,;/]", _abc_field(abc, "O")):
            nation = _ESSEN_ORIGINS.get(token.split("(")[0].strip(), "")
            if nation:
                break
        rhythm = _abc_field(abc, "R").lower()
        hits = [(rhythm.find(word), genre) for word, genre in _ESSEN_GENRES if word in rhythm]
        genre = min(hits)[1] if hits else "folk song"
        return f"{nation} {genre}".strip()
    for text in (_abc_field(abc, "R").lower(), _abc_field(abc, "T").lower()):
        for word, form in _IRISH_FORMS:
            if re.search(rf"\b{word}\b", text):
                return f"Irish {form}"
    # the metre alone tells only the jigs; a 4/4 or 2/2 tune may be a reel, hornpipe, march or song air
    return {"6/8": "Irish jig", "9/8": "Irish slip jig"}.get(meter, "Irish tune")


def _title(score, source: _Source) -> str:
    if source.collection == "bach":  # the chorale files carry no title, only the file name
        return f"Chorale BWV {source.id.removeprefix('bach/bwv')}"
    title = str((score.metadata.title if score.metadata else None) or source.id).strip()
    # Some Essen titles went through a DOS code page before UTF-8: 'ä' survives as the C1 control U+0084
    return "".join(bytes([ord(c)]).decode("cp437") if 0x80 <= ord(c) < 0xA0 else c for c in title)


@functools.lru_cache(maxsize=4096)
def _parse(source: _Source) -> Melody | None:
    """Parse one source into a Melody, or None when it is unusable (polyphonic, unparsable, too short)."""
    from music21 import converter, corpus

    try:
        others: tuple = ()
        if source.abc is not None:
            score = converter.parse(source.abc, format="abc")
            if len(score.parts) != 1:
                return None
            part = score.parts[0]
        else:
            score = corpus.parse(source.path)
            voices = {(p.partName or "").strip(): p for p in reversed(score.parts)}  # first of a name wins
            if "Soprano" not in voices:  # not a four-part chorale (instrumental works, analyses)
                return None
            part = voices["Soprano"]
            others = tuple(voices[name] for name in ("Alto", "Tenor", "Bass") if name in voices)
        melody = _melody_from_part(part, source, _title(score, source), score, others=others)
        return None if melody is None else dataclasses.replace(melody, form=_form(source, melody.meter))
    except Exception:  # music21 raises many types on malformed scores; an unusable piece is just skipped
        return None


def iter_melodies(limit: int | None = None, seed: int = 0) -> Iterator[Melody]:
    """Yield usable melodies in a deterministic order for `seed`, cycling essen -> oneills -> bach.

    Each collection is shuffled by the seed; unusable pieces are skipped without breaking the rotation, and
    a collection that runs out simply drops out. Only the yielded pieces are parsed.
    """
    index = _index()
    streams = []
    for i, name in enumerate(COLLECTIONS):
        order = np.random.default_rng([seed, i]).permutation(len(index[name]))
        streams.append(iter([index[name][j] for j in order]))
    count = 0
    while streams and (limit is None or count < limit):
        for stream in list(streams):
            melody = None
            for source in stream:
                melody = _parse(source)
                if melody is not None:
                    break
            if melody is None:
                streams.remove(stream)
                continue
            yield melody
            count += 1
            if limit is not None and count >= limit:
                return


# ---------------------------------------------------------------------------------------------- synth


@dataclass(frozen=True)
class _Timbre:
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


_TIMBRES = {
    "flute": _Timbre((1.0, 0.45, 0.22, 0.1, 0.06, 0.03), 0.06, 0.08, 0.85, 12.0, 0.92, noise=0.02),
    "clarinet": _Timbre(_odd_heavy(15), 0.03, 0.06, 0.9, 4.0, 0.94),
    "violin": _Timbre(
        tuple((1.0 / k) * (1.6 if 3 <= k <= 6 else 1.0) for k in range(1, 21)), 0.08, 0.12, 0.8, 18.0, 0.95
    ),
    "organ": _Timbre((1.0, 0.7, 0.5, 0.35, 0.0, 0.25, 0.0, 0.2), 0.01, 0.04, 1.0, 0.0, 0.9),
    "pluck": _Timbre(
        tuple(1.0 / k**1.2 for k in range(1, 21)), 0.004, 0.05, 1.0, 0.0, 1.0, decay=0.45, dull=(1.0, 0.3, 0.1)
    ),
}
_TABLE = 2048  # wavetable length; partials are band-limited per note, so linear lookup is clean enough


def _stable_int(*parts: object) -> int:
    """A seed that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def pick_instrument(melody: Melody, seed: int) -> str:
    """The instrument a (melody, seed) pair is rendered with: deterministic, roughly uniform."""
    return INSTRUMENTS[_stable_int("instrument", melody.id, seed) % len(INSTRUMENTS)]


@dataclass(frozen=True)
class Performance:
    """The random choices of one rendering, exposed so tests and reports can see them."""

    detune_cents: float
    vibrato_hz: float
    vibrato_cents: float
    brightness: float  # spectral tilt exponent applied to the partials
    gain: float


def performance(melody: Melody, instrument: str, seed: int) -> Performance:
    rng = np.random.default_rng(_stable_int("performance", melody.id, instrument, seed))
    timbre = _TIMBRES[instrument]
    return Performance(
        detune_cents=float(rng.uniform(-8.0, 8.0)),
        vibrato_hz=float(rng.uniform(4.5, 6.5)),
        vibrato_cents=float(timbre.vibrato_cents * rng.uniform(0.6, 1.3)),
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


def _synth_into(
    out: np.ndarray,
    notes: Iterable[tuple[float, float, float]],
    sample_rate: int,
    instrument: str,
    perf: Performance,
    rng: np.random.Generator,
    velocities: Sequence[float] | None = None,
) -> None:
    """Add the additive-synth rendering of `notes` to `out`.

    Without `velocities` the synth humanises the notes itself (onset jitter, gate, velocity), which is what
    `render` wants; with them (0-1, one per note) the notes play exactly as given, because render.py has
    already humanised them and reports the timing it chose.
    """
    timbre = _TIMBRES[instrument]
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

        velocity = rng.uniform(0.65, 1.0)
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


def render(melody: Melody, sample_rate: int, instrument: str, seed: int) -> np.ndarray:
    """Render a melody to float32 mono audio at `sample_rate`, peak <= 1, with the additive synth.

    Deterministic for (melody, sample_rate, instrument, seed); different seeds give a different detuning,
    vibrato, dynamics and timing. The audio lasts until the last note's release has died away. Plays only
    `melody.notes`; `diamusic.render.render_piece` is the arranged, captioned rendering.
    """
    if instrument not in _TIMBRES:
        raise ValueError(f"unknown instrument {instrument!r}; choose from {INSTRUMENTS}")
    timbre = _TIMBRES[instrument]
    perf = performance(melody, instrument, seed)
    rng = np.random.default_rng(_stable_int("notes", melody.id, instrument, seed))
    tail = timbre.release + 0.25
    out = np.zeros(int(np.ceil((melody.duration + tail + 0.05) * sample_rate)), dtype=np.float64)
    _synth_into(out, melody.notes, sample_rate, instrument, perf, rng)
    peak = np.abs(out).max()
    if peak > 0:
        out *= perf.gain / peak
    return out.astype(np.float32)


def caption(melody: Melody, instrument: str) -> str:
    """A text prompt built from the piece's metadata, e.g.
    'A folk melody in G major, 3/4, 96 bpm, played on flute. From the Essen folksongs collection.'"""
    kind = {
        COLLECTIONS["essen"]: "A folk melody",
        COLLECTIONS["oneills"]: "An Irish folk tune",
        COLLECTIONS["bach"]: "A chorale melody",
    }.get(melody.collection, "A melody")
    meter = "free meter" if melody.meter == "free" else melody.meter
    return (
        f"{kind} in {melody.key}, {meter}, {round(melody.tempo_bpm)} bpm, played on {instrument}. "
        f"From the {melody.collection} collection."
    )
