"""The instrument table: every General MIDI program and drum kit it names sounds, and the melody ones in tune."""

import numpy as np
import pytest

from diamusic import corpus, instruments, pitch, playback
from diamusic.arrangement import DRUM_GROOVES, Arrangement, Part

SR = playback.SAMPLE_RATE
TINY = corpus.Melody("test/tiny", ((60.0, 0.0, 1.0),), "C major", "4/4", 120.0, "test", "tiny")


def pinned_run(wave: np.ndarray, length: int = 3) -> bool:
    """Whether `length` consecutive samples sit at full scale: the signature of clipping."""
    at_rail = np.abs(wave) >= 0.999
    return bool(np.convolve(at_rail, np.ones(length), mode="valid").max(initial=0) >= length)


@pytest.mark.parametrize("name", sorted(instruments.INSTRUMENTS))
def test_every_instrument_sounds_unclipped(name):
    inst = instruments.INSTRUMENTS[name]
    mid = int(np.clip(62, inst.low + 7, inst.high - 7))
    notes = [(mid, 0.05, 0.6, 127), (mid + 4, 0.05, 0.6, 127), (mid + 7, 0.05, 0.6, 127), (mid + 2, 0.7, 0.5, 100)]
    stem = playback.soundfont_stem(Part("chords", inst, notes), int(1.6 * SR), 0.0, SR)
    assert np.all(np.isfinite(stem))  # float all the way: a stem over 1 is fine, the mix is normalised
    assert np.sqrt(np.mean(stem[: int(1.2 * SR)] ** 2)) > 0.005, name  # not silent
    arrangement = Arrangement([Part("melody", inst, notes)], 0.0, -6.0, 0.0, 0.0, {})
    wave = playback.render_arrangement(arrangement, "soundfont", TINY, 0)
    assert not pinned_run(wave) and np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave[: int(1.2 * SR)] ** 2)) > 0.05, name  # sustained sound, not a click


@pytest.mark.parametrize("kit", instruments.DRUM_KITS)
def test_drum_kits_sound(kit):
    part = Part(
        "drums",
        None,
        [
            (key, 0.1 + 0.3 * i, 0.2, 110)
            for i, key in enumerate(sorted({k for groove in DRUM_GROOVES.values() for _, k, _ in groove}))
        ],
        kit=kit,
    )
    stem = playback.soundfont_stem(part, int(1.6 * SR), 0.0, SR)
    assert np.all(np.isfinite(stem))
    for i in range(len(part.notes)):  # every drum the grooves use makes a sound
        hit = stem[int((0.1 + 0.3 * i) * SR) : int((0.3 + 0.3 * i) * SR)]
        assert np.sqrt(np.mean(hit**2)) > 0.005, (kit, part.notes[i][0])


def melody_instruments() -> list[str]:
    return sorted({n for pool in instruments.MELODY_INSTRUMENTS.values() for n in pool})


def fundamental_cents(wave: np.ndarray, key: int) -> float:
    """Cents from `key` of the strongest spectral peak near its fundamental (a 0.8 s window, zero-padded FFT,
    parabolic interpolation): finer than pyin's 10-cent grid."""
    segment = wave[int(0.3 * SR) : int(1.1 * SR)] * np.hanning(int(0.8 * SR))
    spectrum = np.abs(np.fft.rfft(segment, 1 << 20))
    freqs = np.fft.rfftfreq(1 << 20, 1 / SR)
    nominal = 440.0 * 2 ** ((key - 69) / 12)
    band = np.flatnonzero((freqs > nominal * 0.94) & (freqs < nominal * 1.06))
    i = band[np.argmax(spectrum[band])]
    a, b, c = np.log(spectrum[i - 1 : i + 2])
    return float(1200 * np.log2((i + 0.5 * (a - c) / (a - 2 * b + c)) * SR / (1 << 20) / nominal))


@pytest.mark.parametrize("name", melody_instruments())
def test_melody_instruments_are_in_tune(name):
    """A long note's pitch is within 20 cents of its MIDI pitch, and the tuning offset moves it."""
    inst = instruments.INSTRUMENTS[name]
    for key, tuning in ((64, 0.0), (71, 0.0), (71, 50.0)):
        stem = playback.soundfont_stem(Part("melody", inst, [(key, 0.0, 1.2, 100)]), int(1.3 * SR), tuning, SR)
        times, f0, voiced = pitch.pitch_track(stem, SR)
        middle = voiced & (times > 0.3) & (times < 1.0)
        assert middle.sum() > 10, name  # pyin follows it: voiced throughout
        by_pyin = 100 * (np.median(pitch.hz_to_midi(f0[middle])) - key)
        assert by_pyin == pytest.approx(tuning, abs=25), (name, key, tuning)  # 20 + half of pyin's 10-cent bin
        assert fundamental_cents(stem, key) == pytest.approx(tuning, abs=20), (name, key, tuning)
