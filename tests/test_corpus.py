import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from diamusic import corpus, pitch

SR = 22050


@pytest.fixture(scope="module")
def melodies():
    return list(corpus.iter_melodies(limit=9, seed=0))


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


def test_caption_carries_the_metadata(melodies):
    for m in melodies:
        instrument = corpus.pick_instrument(m, seed=0)
        assert instrument in corpus.INSTRUMENTS
        assert instrument == corpus.pick_instrument(m, seed=0)
        text = corpus.caption(m, instrument)
        for part in (m.key, f"{round(m.tempo_bpm)} bpm", instrument, m.collection):
            assert part in text
        assert (m.meter if m.meter != "free" else "free meter") in text
    m = melodies[0]
    assert len({corpus.pick_instrument(m, seed) for seed in range(40)}) >= 4


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


@pytest.mark.parametrize("instrument", corpus.INSTRUMENTS)
def test_render_is_sane(melodies, instrument):
    m = melodies[1]
    wave = corpus.render(m, SR, instrument, seed=0)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert np.all(np.isfinite(wave))
    assert 0.1 < np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave**2)) > 0.02  # not silent
    assert m.duration < len(wave) / SR < m.duration + 1.0
    assert np.abs(wave[: int(0.5 * SR)]).max() > 0.05  # the first note sounds right away


def test_render_deterministic_and_seed_dependent(melodies):
    m = melodies[2]
    a = corpus.render(m, SR, "flute", seed=0)
    assert a.tobytes() == corpus.render(m, SR, "flute", seed=0).tobytes()
    b = corpus.render(m, SR, "flute", seed=1)
    assert a.tobytes() != b.tobytes()
    assert corpus.render(m, 44100, "flute", seed=0).shape[0] == pytest.approx(2 * len(a), abs=2)


def test_detuning_differs_across_seeds_and_is_audible(melodies):
    m = dataclasses.replace(melodies[0], notes=melodies[0].notes[:12])  # short: pyin is the slow part
    detunes = {seed: corpus.performance(m, "organ", seed).detune_cents for seed in range(20)}
    assert len({round(d, 3) for d in detunes.values()}) == 20
    assert all(abs(d) <= 8 for d in detunes.values())
    lo, hi = min(detunes, key=detunes.get), max(detunes, key=detunes.get)
    assert detunes[hi] - detunes[lo] > 10
    measured = {}
    for seed in (lo, hi):
        times, f0, voiced = pitch.pitch_track(corpus.render(m, SR, "organ", seed), SR)
        nominal = np.full(len(times), np.nan)
        for p, s, d in m.notes:
            nominal[(times > s + 0.05) & (times < s + 0.8 * d)] = p
        ok = voiced & np.isfinite(nominal)
        measured[seed] = 100 * float(np.median(pitch.hz_to_midi(f0[ok]) - nominal[ok]))
        assert measured[seed] == pytest.approx(detunes[seed], abs=6)  # pyin's 10-cent grid
    assert measured[hi] > measured[lo]


def test_render_rejects_unknown_instrument(melodies):
    with pytest.raises(ValueError):
        corpus.render(melodies[0], SR, "kazoo", seed=0)


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
    assert corpus._form(essen, "3/4") == "German folk ballad"
    chinese = dataclasses.replace(essen, abc="X:1\nO: China, Shaanxi\nR: Xiaodiao]\nK:G\n")
    assert corpus._form(chinese, "2/4") == "Chinese folk song"
    irish = corpus._Source("oneills/x", "oneills", Path("x"), "X:1\nT: THE MAID\nR:double jig\nK:D\n")
    assert corpus._form(irish, "6/8") == "Irish jig"
    assert (
        corpus._form(dataclasses.replace(irish, abc="X:1\nT: THE RAMBLER HORNPIPE\nK:D\n"), "2/2") == "Irish hornpipe"
    )
    assert corpus._form(dataclasses.replace(irish, abc="X:1\nT: FAIR ANNIE\nK:D\n"), "2/2") == "Irish tune"  # not "air"
    assert corpus._form(dataclasses.replace(irish, abc="X:1\nT: FAIR ANNIE\nK:D\n"), "6/8") == "Irish jig"
    assert corpus._form(dataclasses.replace(irish, abc="X:1\nT: FAIR ANNIE\nK:D\n"), "9/8") == "Irish slip jig"


def test_excerpt_cuts_everything_at_the_last_kept_note(melodies):
    chorale = melodies[2].excerpt(6.0)
    assert chorale.duration <= 6.0 and chorale.notes == melodies[2].notes[: len(chorale.notes)]
    assert all(s + d <= chorale.duration + 1e-6 for part in chorale.accompaniment for _, s, d in part)
    assert all(a < chorale.duration for a, _ in chorale.bars) and len(chorale.accompaniment) == 3
