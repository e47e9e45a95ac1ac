"""Playback: the synth's stand-ins and drums, and the seeded room."""

import numpy as np

from diamusic import instruments, playback
from diamusic.arrangement import Part

SR = playback.SAMPLE_RATE


def test_synth_stand_ins_sound():
    """renderer="synth": every timbre an instrument maps to, and the synthesised drums, make sound."""
    rng = np.random.default_rng(0)
    for timbre in sorted({i.timbre for i in instruments.INSTRUMENTS.values()}):
        inst = next(i for i in instruments.INSTRUMENTS.values() if i.timbre == timbre)
        stem = playback.synth_stem(Part("chords", inst, [(60, 0.05, 0.8, 100)]), SR, 0.0, SR, rng)
        assert np.sqrt(np.mean(stem**2)) > 0.01, timbre
    drums = (instruments.KICK, instruments.SNARE, instruments.CLOSED_HAT)
    hits = [(k, 0.1 + 0.2 * i, 0.1, 100) for i, k in enumerate(drums)]
    stem = playback.synth_stem(Part("drums", None, hits), SR, 0.0, SR, rng)
    for _, start, _, _ in hits:
        assert np.sqrt(np.mean(stem[int(start * SR) : int((start + 0.1) * SR)] ** 2)) > 0.01


def test_reverb_is_a_seeded_decaying_tail():
    impulse = np.zeros(SR * 2)
    impulse[0] = 1.0
    a = playback.reverb(impulse, SR, rt60=1.0, wet=0.3, seed=1)
    assert a.tobytes() == playback.reverb(impulse, SR, rt60=1.0, wet=0.3, seed=1).tobytes()
    assert a.tobytes() != playback.reverb(impulse, SR, rt60=1.0, wet=0.3, seed=2).tobytes()
    tail = a[1:] ** 2
    early, late = tail[: SR // 10].sum(), tail[int(0.8 * SR) : int(0.9 * SR)].sum()
    assert 10 * np.log10(early / late) > 30  # decays towards -60 dB at rt60
    assert tail[: int(0.011 * SR)].max() < 1e-12  # pre-delay
