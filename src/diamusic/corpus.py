"""Built-in melodies from music21's bundled corpus: finding, parsing and describing them.

Three collections ship with music21 and need no download: the Essen folksong collection and O'Neill's
Music of Ireland (many tunes per .abc file) and the Bach chorales (one MusicXML file each: the soprano is
the melody, the alto, tenor and bass are kept as its accompaniment). They are for non-commercial research
use, like the corpus itself. Each melody carries what its score says about it: key, metre, tempo, the
measures, and a form for captions taken from the file's own metadata (Essen's origin "O:" and genre "R:"
fields, O'Neill's rhythm "R:" field or title, else the metre; "Bach chorale").

Parsing with music21 is the slow part (see benchmarks/RESULTS.md), so we index the
.abc files with a cheap text scan, parse only the tunes a caller actually iterates over, and memoise
the parsed melodies in memory.

`diamusic.render.render_piece` turns a melody into a captioned piece of audio.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diamusic import pitch

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
    # song", "Irish jig", "Bach chorale". Empty for hand-made melodies (captions then fall back on the
    # collection's).
    form: str = ""
    # (start s, length s) of every full measure on the notes' clock; an opening pickup measure is left out,
    # so the first entry is the first downbeat. The harmoniser and the drum grooves follow these.
    bars: tuple[tuple[float, float], ...] = ()
    # The other voices of a multi-part score (a chorale's alto, tenor and bass), same clock and format as
    # `notes` except that a part may hold chords; empty for single-line tunes.
    accompaniment: tuple[tuple[tuple[float, float, float], ...], ...] = ()

    @property
    def duration(self) -> float:
        """Seconds from the first note's start to the last note's end."""
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


def collection_key(melody: Melody) -> str:
    """The key of COLLECTIONS a melody comes from; a hand-made melody counts as a folk song (Essen's)."""
    prefix = melody.id.split("/")[0]
    if prefix in COLLECTIONS:
        return prefix
    for key, name in COLLECTIONS.items():
        if name == melody.collection:
            return key
    return "essen"


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

def estimate_key(notes: tuple[tuple[float, float, float], ...], sharps: int | None) -> str:
    """Krumhansl-Schmuckler key finding on the duration-weighted pitch-class histogram.

    With a key signature (`sharps`, negative for flats) only its relative major and minor compete: the
    .abc files of the Essen collection give a signature but no mode, so "K: G" may be E minor.
    """
    hist = np.zeros(12)
    for midi, _, dur in notes:
        hist[int(round(midi)) % 12] += dur
    candidates = None
    if sharps is not None:
        major = (7 * sharps) % 12
        candidates = [(major, "major"), ((major + 9) % 12, "minor")]
    return pitch.key_of_histogram(hist, candidates, flats=sharps is not None and sharps < 0)


def _timed_notes(part, origin: float, sec_per_quarter: float, end: float) -> tuple[tuple[float, float, float], ...]:
    """A voice of the score as (midi pitch, start s, duration s), every pitch of a chord kept, cut at `end`."""
    out = []
    part.stripTies(inPlace=True)  # a copy would cost a deep copy of the score's spanners, most of a parse
    for n in part.flatten().notes:
        start, dur = (float(n.offset) - origin) * sec_per_quarter, float(n.quarterLength) * sec_per_quarter
        if dur <= 0 or start < -1e-6 or start >= end - 1e-6:
            continue
        dur = min(dur, end - start)
        out.extend((float(p.midi), round(start, 6), round(dur, 6)) for p in n.pitches)
    return tuple(sorted(out, key=lambda r: (r[1], r[0])))


def _bars(
    measures: list[tuple[float, float, float]], origin: float, sec_per_quarter: float, end: float
) -> tuple[tuple[float, float], ...]:
    """(start s, length s) of each full bar from the measures' (left padding, offset, length) in quarters."""
    bars = []
    for padding, offset, quarters in measures:
        if padding > 0:  # an anacrusis: its first beat is not a downbeat
            continue
        start, length = (offset - origin) * sec_per_quarter, quarters * sec_per_quarter
        if length > 0 and start >= -1e-6 and start < end - 1e-6:
            bars.append((round(start, 6), round(length, 6)))
    return tuple(bars)


def _melody_from_part(part, source: _Source, title: str, score, others: tuple = ()) -> Melody | None:
    from music21 import chord, key, meter, tempo

    # Merging tied notes in place lengthens the measures that hold them, so the bars are read first
    measures = [
        (float(m.paddingLeft), float(m.offset), float(m.duration.quarterLength))
        for m in part.getElementsByClass("Measure")
    ]
    part.stripTies(inPlace=True)  # a copy would cost a deep copy of the score's spanners, most of a parse
    flat = part.flatten()
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
    for midi, offset, ql in raw:
        start, dur = (offset - origin) * sec_per_quarter, ql * sec_per_quarter
        if notes and start < notes[-1][1] + notes[-1][2] - 1e-6:
            return None  # overlapping notes (several voices in one part)
        if start + dur > MAX_SECONDS:
            break
        notes.append((midi, round(start, 6), round(dur, 6)))
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
        bars=_bars(measures, origin, sec_per_quarter, end),
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


def _form_from_metadata(source: _Source, meter: str) -> str:
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
        return None if melody is None else dataclasses.replace(melody, form=_form_from_metadata(source, melody.meter))
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
