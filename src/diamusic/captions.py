"""Captions of the built-in pieces: the words for what a listener can hear, from an arrangement's tags.

A caption is built from the same facts as the tags: form (from the score's metadata), key and mode after
transposition, metre, tempo after the tempo change (quarter notes per minute), instruments, texture,
drums, reverb, and mood words only where they follow from the mode (major: bright/cheerful, minor:
melancholic/somber) or the beat tempo (fast: lively/upbeat, slow: calm/gentle). One of three sentence
templates is drawn per rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from diamusic.corpus import Melody, collection_key

MOODS: dict[str, tuple[str, str]] = {"major": ("bright", "cheerful"), "minor": ("melancholic", "somber")}
FAST_WORDS: tuple[str, str] = ("lively", "upbeat")
SLOW_WORDS: tuple[str, str] = ("calm", "gentle")
FAST_BEAT_BPM, SLOW_BEAT_BPM = 120, 72
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
_COLLECTION_FORMS = {"essen": "folk song", "oneills": "Irish tune", "bach": "Bach chorale"}


def caption_form(melody: Melody) -> str:
    """The form a caption names: the score's own (`Melody.form`), else its collection's usual one."""
    if melody.form:
        return melody.form
    return _COLLECTION_FORMS[collection_key(melody)]


def draw_mood(rng: np.random.Generator, mode: str, beat_bpm: float) -> list[str]:
    """Mood words that follow from the mode, and from the beat tempo when it is fast or slow."""
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
        style = "arpeggiated " if tags["figure"] == "arpeggio" else ""
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
