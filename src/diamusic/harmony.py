"""Harmony for a single-line tune: key spelling, one diatonic triad per segment, close-position voicing.

`harmonise` gives each segment (a measure, or half a measure in 4/4, 2/2, 12/8) the diatonic triad -
major key: I ii iii IV V vi; minor key: i III iv v V VI VII, V with the raised 7th - scoring highest on:
the melody's note duration on chord tones (a note struck on the segment's start counts 1.5x), minus half
the duration of melody notes a semitone from a chord tone, twice the duration when that note is outside
the natural scale (a raised 6th or 7th, a chromatic note: this is what picks V over v and VII when the
tune has the leading tone, and keeps a natural 7th in the chord from sounding against a raised one in the
tune). Ties go to the more common chord (tonic, then dominant, subdominant, ...). The final segment is
the tonic when the last note belongs to it; a segment without melody notes keeps the previous chord.
Every chord pitch is therefore in the key (the raised 7th only in V).

`close_voicing` places a chord as a close-position triad in E3..G4 (down to C3 to stay under a low
tune), moving to the inversion nearest the previous chord.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diamusic import pitch

_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
# (name, root in semitones above the tonic, chord tones above the root), most common first: ties go left
_TRIADS = {
    "major": (("I", 0, (0, 4, 7)), ("V", 7, (0, 4, 7)), ("IV", 5, (0, 4, 7)), ("vi", 9, (0, 3, 7)),
              ("ii", 2, (0, 3, 7)), ("iii", 4, (0, 3, 7))),
    "minor": (("i", 0, (0, 3, 7)), ("V", 7, (0, 4, 7)), ("iv", 5, (0, 3, 7)), ("VI", 8, (0, 4, 7)),
              ("III", 3, (0, 4, 7)), ("VII", 10, (0, 4, 7)), ("v", 7, (0, 3, 7))),
}  # fmt: skip

Chord = tuple[int, tuple[int, ...]]  # (root pitch class, chord pitch classes)


def transpose_key(key: str, semitones: int) -> str:
    """'D major' + 3 -> 'F major', spelled as the usual key signature (Bb major, F# minor)."""
    tonic, mode = pitch.parse_key(key)
    names = _MINOR_NAMES if mode == "minor" else _MAJOR_NAMES
    return f"{names[(tonic + semitones) % 12]} {mode}"


def harmonise(
    notes: Sequence[tuple[float, float, float]], segments: Sequence[tuple[float, float]], key: str
) -> list[Chord]:
    """One diatonic triad per (start, end) segment of `notes` (pitch, start, duration); see the module docstring."""
    tonic, mode = pitch.parse_key(key)
    triads = _TRIADS["minor" if mode == "minor" else "major"]
    chords = [((tonic + r) % 12, tuple((tonic + r + i) % 12 for i in tones)) for _, r, tones in triads]
    natural = {(tonic + i) % 12 for i in ((0, 2, 3, 5, 7, 8, 10) if mode == "minor" else (0, 2, 4, 5, 7, 9, 11))}
    # a melody note outside the natural scale (a raised 6th or 7th, a chromatic note) against its natural
    # neighbour in the chord is a false relation, not a passing dissonance
    clash_factor = np.array([0.5 if pc in natural else 2.0 for pc in range(12)])
    out: list[Chord] = []
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


def close_voicing(pcs: tuple[int, ...], previous: list[int] | None, ceiling: float) -> list[int]:
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
