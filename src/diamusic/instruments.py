"""The instruments the built-in pieces are played on: General MIDI programs, ranges, roles, synth stand-ins.

Every name is what captions call the instrument, and no name is a word of another, so a caption can be
parsed back into the instruments it names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Instrument:
    name: str  # what captions call it
    program: int  # General MIDI program, 0-based
    low: int  # playable MIDI range, for the melody
    high: int
    timbre: str  # the diamusic.synth timbre that stands in for it with renderer="synth"

    @property
    def synth_name(self) -> str:
        """What a caption calls the additive-synth stand-in for this instrument."""
        return f"synth {self.timbre}"


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
# Chord instrument -> the accompaniment figures it plays (see diamusic.arrangement).
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
KICK, SIDE_STICK, SNARE, CLOSED_HAT = 36, 37, 38, 42  # General MIDI percussion keys
