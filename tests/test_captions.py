"""Captions: they state what the arrangement's tags say, in words a listener would use."""

import dataclasses
import re

import pytest

from diamusic import captions, instruments, pitch, render, synth
from diamusic.seeding import piece_rng

ALL_NAMES = sorted(set(instruments.INSTRUMENTS) | {f"synth {t}" for t in synth.TIMBRES})


def named(caption: str) -> set[str]:
    return {n for n in ALL_NAMES if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", caption, re.IGNORECASE)}


@pytest.mark.parametrize("renderer", render.RENDERERS)
def test_captions_agree_with_the_rendering(melodies, renderer, arrangements):
    templates = set()
    for m, seed, arr in arrangements(melodies, range(8), renderer=renderer):
        tags = arr.tags
        text = captions.describe(tags, piece_rng(m.id, seed, "caption"))
        assert len(text.encode()) < 300
        key = re.search(r"\b([A-G][#b]?) (major|minor)\b", text)
        assert key and f"{key[1]} {key[2]}" == tags["key"]
        assert int(re.search(r"(\d+) bpm", text)[1]) == tags["tempo_bpm"]
        meter = re.search(r"(\d+/\d+|free) time", text)[1]
        assert meter == tags["meter"]
        assert tags["form"] in text
        names = named(text)
        if renderer == "synth":  # "synth flute" also contains "flute"
            names = {n for n in names if n.startswith("synth ")}
        assert names == {tags["melody_instrument"], *tags["accompaniment"]}, (text, tags)
        if tags["texture"] == "solo":
            assert (
                "solo" in text.lower()
                and "accompaniment" not in text
                and "part" not in text
                and not tags["accompaniment"]
            )
        else:
            assert "solo" not in text.lower() and tags["accompaniment"]
            lower = text.lower()
            assert ("four-part" in lower or "four parts" in lower) if tags["ensemble"] else "accompaniment" in lower
        assert ("drum" in text) == tags["drums"]
        assert ("reverb" in text) == tags["reverb"] and ("dry" in text.lower()) != tags["reverb"]
        mode = pitch.parse_key(tags["key"])[1]
        assert tags["mood"][0] in captions.MOODS[mode] and all(w in text for w in tags["mood"])
        fast, slow = tags["beat_bpm"] >= captions.FAST_BEAT_BPM, tags["beat_bpm"] <= captions.SLOW_BEAT_BPM
        assert any(w in text for w in captions.FAST_WORDS) == fast
        assert any(w in text for w in captions.SLOW_WORDS) == slow
        templates.add(2 if "(" in text else 1 if ": " in text else 0)
    assert len(templates) >= 3  # the wording varies by seed


def test_forms_in_captions_come_from_the_score(melodies):
    forms = {m.id: captions.caption_form(m) for m in melodies}
    assert all(f == "Bach chorale" for i, f in forms.items() if i.startswith("bach/"))
    assert all(f.startswith("Irish ") for i, f in forms.items() if i.startswith("oneills/"))
    hand_made = dataclasses.replace(melodies[0], form="")
    assert captions.caption_form(hand_made) == "folk song"
