"""The additive synth: render_melody and the timbre and performance it draws."""

import dataclasses

import numpy as np
import pytest

from diamusic import pitch, synth

SR = 22050


def test_timbre_is_drawn_per_melody_and_seed(melodies):
    for m in melodies:
        timbre = synth.pick_timbre(m, seed=0)
        assert timbre in synth.TIMBRES
        assert timbre == synth.pick_timbre(m, seed=0)
    m = melodies[0]
    assert len({synth.pick_timbre(m, seed) for seed in range(40)}) >= 4


@pytest.mark.parametrize("timbre", synth.TIMBRES)
def test_render_is_sane(melodies, timbre):
    m = melodies[1]
    wave = synth.render_melody(m, SR, timbre, seed=0)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert np.all(np.isfinite(wave))
    assert 0.1 < np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave**2)) > 0.02  # not silent
    assert m.duration < len(wave) / SR < m.duration + 1.0
    assert np.abs(wave[: int(0.5 * SR)]).max() > 0.05  # the first note sounds right away


def test_render_deterministic_and_seed_dependent(melodies):
    m = melodies[2]
    a = synth.render_melody(m, SR, "flute", seed=0)
    assert a.tobytes() == synth.render_melody(m, SR, "flute", seed=0).tobytes()
    b = synth.render_melody(m, SR, "flute", seed=1)
    assert a.tobytes() != b.tobytes()
    assert synth.render_melody(m, 44100, "flute", seed=0).shape[0] == pytest.approx(2 * len(a), abs=2)


def test_detuning_differs_across_seeds_and_is_audible(melodies):
    m = dataclasses.replace(melodies[0], notes=melodies[0].notes[:12])  # short: pyin is the slow part
    detunes = {seed: synth.performance(m, "organ", seed).detune_cents for seed in range(20)}
    assert len({round(d, 3) for d in detunes.values()}) == 20
    assert all(abs(d) <= 8 for d in detunes.values())
    lo, hi = min(detunes, key=detunes.get), max(detunes, key=detunes.get)
    assert detunes[hi] - detunes[lo] > 10
    measured = {}
    for seed in (lo, hi):
        times, f0, voiced = pitch.pitch_track(synth.render_melody(m, SR, "organ", seed), SR)
        nominal = np.full(len(times), np.nan)
        for p, s, d in m.notes:
            nominal[(times > s + 0.05) & (times < s + 0.8 * d)] = p
        ok = voiced & np.isfinite(nominal)
        measured[seed] = 100 * float(np.median(pitch.hz_to_midi(f0[ok]) - nominal[ok]))
        assert measured[seed] == pytest.approx(detunes[seed], abs=6)  # pyin's 10-cent grid
    assert measured[hi] > measured[lo]


def test_render_rejects_unknown_timbre(melodies):
    expected = r"^unknown timbre 'kazoo'; choose one of flute, clarinet, violin, organ, pluck$"
    with pytest.raises(synth.UnknownTimbreError, match=expected):
        synth.render_melody(melodies[0], SR, "kazoo", seed=0)
