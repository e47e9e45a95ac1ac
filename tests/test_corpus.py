"""The built-in melodies: finding, parsing, keys, measures, forms."""

import dataclasses
import re
from pathlib import Path

import numpy as np

from diamusic import corpus, pitch


def test_iteration_is_deterministic_and_seeded(melodies):
    corpus._parse.cache_clear()  # re-parse from the files, not from the memo
    again = list(corpus.iter_melodies(limit=9, seed=0))
    assert again == melodies
    other = [m.id for m in corpus.iter_melodies(limit=9, seed=1)]
    assert other != [m.id for m in melodies]
    assert len({m.id for m in melodies}) == len(melodies)


def test_three_collections_mixed(melodies):
    assert [m.collection for m in melodies[:3]] == list(corpus.COLLECTIONS.values())
    assert {m.collection for m in melodies} == set(corpus.COLLECTIONS.values())


def test_melodies_are_monophonic_and_well_formed(melodies):
    for m in melodies:
        starts = np.array([s for _, s, _ in m.notes])
        ends = np.array([s + d for _, s, d in m.notes])
        assert starts[0] == 0.0 and np.all(np.diff(starts) > 0)
        assert np.all(ends[:-1] <= starts[1:] + 1e-6), m.id  # no overlapping notes
        assert corpus.MIN_SECONDS <= m.duration <= corpus.MAX_SECONDS
        assert len(m.notes) >= corpus.MIN_NOTES
        assert all(40 <= p <= 96 and d > 0 for p, _, d in m.notes)
        pitch.parse_key(m.key)  # a key the metrics understand
        assert m.meter == "free" or re.fullmatch(r"\d+/\d+", m.meter)
        assert 40 <= m.tempo_bpm <= 220
        assert m.title and m.id.split("/")[0] in corpus.COLLECTIONS


def test_estimate_key():
    c_major = tuple((float(p), i * 0.5, 0.5) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60]))
    assert corpus.estimate_key(c_major, sharps=0) == "C major"
    assert corpus.estimate_key(c_major, sharps=None) == "C major"
    a_minor = tuple((float(p), i * 0.5, 0.5) for i, p in enumerate([69, 72, 76, 69, 71, 72, 74, 76, 72, 69, 64, 69]))
    assert corpus.estimate_key(a_minor, sharps=0) == "A minor"
    g_major = tuple((p + 7.0, s, d) for p, s, d in c_major)
    assert corpus.estimate_key(g_major, sharps=1) == "G major"
    f_major = tuple((p + 5.0, s, d) for p, s, d in c_major)
    assert corpus.estimate_key(f_major, sharps=-1) == "F major"
    assert corpus.estimate_key(tuple((p + 10.0, s, d) for p, s, d in c_major), sharps=-2) == "Bb major"


def test_measures_and_chorale_voices(melodies):
    for m in melodies:
        starts = [a for a, _ in m.bars]
        assert m.bars and starts == sorted(starts) and starts[0] >= 0 and starts[-1] < m.duration
        assert all(length > 0 for _, length in m.bars)
        onsets = {round(s, 4) for _, s, _ in m.notes}
        assert sum(round(a, 4) in onsets for a in starts) >= 0.6 * len(starts)  # downbeats carry notes
        if m.id.startswith("bach/"):
            assert len(m.accompaniment) == 3  # alto, tenor, bass
            means = [np.mean([p for p, _, _ in part]) for part in (m.notes, *m.accompaniment)]
            assert means == sorted(means, reverse=True), m.id  # soprano above alto above tenor above bass
            assert all(s + d <= m.duration + 1e-6 for part in m.accompaniment for _, s, d in part)
        else:
            assert m.accompaniment == ()


def test_forms_come_from_the_files_metadata(melodies):
    forms = {m.id.split("/")[0]: m.form for m in melodies}
    assert forms["bach"] == "Bach chorale"
    assert forms["oneills"].startswith("Irish ") and forms["essen"]
    essen = corpus._Source(
        "essen/x",
        "essen",
        Path("x"),
        "X:1\nT:t\nO: Europa, Mitteleuropa, Deutschland, Hessen\nR: Romanze, Ballade, Lied\nK:G\n",
    )
    assert corpus._form_from_metadata(essen, "3/4") == "German folk ballad"
    chinese = dataclasses.replace(essen, abc="X:1\nO: China, Shaanxi\nR: Xiaodiao]\nK:G\n")
    assert corpus._form_from_metadata(chinese, "2/4") == "Chinese folk song"
    irish = corpus._Source("oneills/x", "oneills", Path("x"), "X:1\nT: THE MAID\nR:double jig\nK:D\n")
    assert corpus._form_from_metadata(irish, "6/8") == "Irish jig"
    hornpipe = dataclasses.replace(irish, abc="X:1\nT: THE RAMBLER HORNPIPE\nK:D\n")
    assert corpus._form_from_metadata(hornpipe, "2/2") == "Irish hornpipe"
    annie = dataclasses.replace(irish, abc="X:1\nT: FAIR ANNIE\nK:D\n")
    assert corpus._form_from_metadata(annie, "2/2") == "Irish tune"  # not "air"
    assert corpus._form_from_metadata(annie, "6/8") == "Irish jig"
    assert corpus._form_from_metadata(annie, "9/8") == "Irish slip jig"


def test_excerpt_cuts_everything_at_the_last_kept_note(melodies):
    chorale = melodies[2].excerpt(6.0)
    assert chorale.duration <= 6.0 and chorale.notes == melodies[2].notes[: len(chorale.notes)]
    assert all(s + d <= chorale.duration + 1e-6 for part in chorale.accompaniment for _, s, d in part)
    assert all(a < chorale.duration for a, _ in chorale.bars) and len(chorale.accompaniment) == 3
