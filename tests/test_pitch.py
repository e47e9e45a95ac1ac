import numpy as np
import pytest

from diamusic import pitch

SR = 22050


def tone(freqs: list[float], seconds: float = 0.5, sr: int = SR, vibrato_cents: float = 0.0) -> np.ndarray:
    """Harmonic tones (3 partials), one per frequency, back to back; optional 6 Hz vibrato."""
    n = int(seconds * sr)
    t = np.arange(n * len(freqs)) / sr
    f = np.repeat(np.asarray(freqs, dtype=np.float64), n) * 2 ** (vibrato_cents * np.sin(2 * np.pi * 6 * t) / 1200)
    phase = 2 * np.pi * np.cumsum(f) / sr
    wave = sum(a * np.sin(k * phase) for k, a in ((1, 0.6), (2, 0.25), (3, 0.1)))
    return (0.8 * wave).astype(np.float32)


def midi_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]
CHROMATIC = list(range(60, 72))


@pytest.mark.parametrize("freq", [440.0, 300.0, 1000.0])
def test_pure_tone_f0_within_a_few_cents(freq):
    times, f0, voiced = pitch.pitch_track(tone([freq], seconds=1.0), SR)
    assert len(times) == len(f0) == len(voiced)
    core = voiced & (times > 0.1) & (times < 0.9)
    assert core.sum() > 30
    cents = 1200 * np.log2(np.median(f0[core]) / freq)
    assert abs(cents) < 6  # pyin's 10-cent grid: at most 5 cents off
    assert np.all(f0[~voiced] == 0)


def test_melody_track_follows_notes_and_sample_rate():
    notes = [midi_hz(m) for m in (60, 64, 67, 72)]
    for sr in (SR, 44100):  # analysis happens at 22050 whatever the input rate
        times, f0, voiced = pitch.pitch_track(tone(notes, seconds=0.4, sr=sr), sr)
        assert times[-1] == pytest.approx(1.6, abs=0.05)
        for i, expected in enumerate(notes):
            seg = voiced & (times > 0.4 * i + 0.08) & (times < 0.4 * (i + 1) - 0.08)
            assert seg.sum() >= 5
            assert abs(1200 * np.log2(np.median(f0[seg]) / expected)) < 6


def test_silence_is_unvoiced():
    _, f0, voiced = pitch.pitch_track(np.zeros(SR, dtype=np.float32), SR)
    assert not voiced.any() and np.all(f0 == 0)


def test_raw_pitch_accuracy_self_and_shifted():
    notes = [midi_hz(m) for m in C_MAJOR[:5]]
    ref = tone(notes, seconds=0.3)
    assert pitch.raw_pitch_accuracy(ref, ref, SR) > 0.99
    semitone_up = tone([f * 2 ** (1 / 12) for f in notes], seconds=0.3)
    assert pitch.raw_pitch_accuracy(ref, semitone_up, SR) < 0.1
    # 30 cents off: outside a 20-cent tolerance, inside a 50-cent one
    off = tone([f * 2 ** (30 / 1200) for f in notes], seconds=0.3)
    assert pitch.raw_pitch_accuracy(ref, off, SR, cent_tolerance=20) < 0.2
    assert pitch.raw_pitch_accuracy(ref, off, SR, cent_tolerance=50) > 0.9
    assert np.isnan(pitch.raw_pitch_accuracy(np.zeros(SR, dtype=np.float32), ref, SR))


def test_in_key_ratio_scale_vs_chromatic():
    # pyin's HMM glides through ~4 frames between notes, so even a clean scale is not 100 % in key
    scale = tone([midi_hz(m) for m in C_MAJOR], seconds=0.5)
    chromatic = tone([midi_hz(m) for m in CHROMATIC], seconds=0.5)
    in_key = pitch.melody_stats(scale, SR, key="C major")["in_key_ratio"]
    assert in_key > 0.9
    assert pitch.melody_stats(scale, SR, key="A minor")["in_key_ratio"] > 0.9  # relative minor: same notes
    assert pitch.melody_stats(scale, SR, key="F# major")["in_key_ratio"] < 0.5
    chrom = pitch.melody_stats(chromatic, SR, key="C major")["in_key_ratio"]
    assert 0.45 < chrom < 0.7 and chrom < in_key - 0.25  # 7 of 12 pitch classes


def test_melody_stats_voicing_and_stability():
    steady = np.concatenate([tone([midi_hz(69)], seconds=1.0), np.zeros(SR, dtype=np.float32)])
    wobbly = tone([midi_hz(69)], seconds=1.0, vibrato_cents=80.0)
    s = pitch.melody_stats(steady, SR)
    assert set(s) == {"voiced_ratio", "pitch_stability"}  # no key -> no in_key_ratio
    assert 0.4 < s["voiced_ratio"] < 0.6
    assert s["pitch_stability"] < 0.05
    assert pitch.melody_stats(wobbly, SR)["pitch_stability"] > 2 * max(s["pitch_stability"], 0.05)


def test_chroma_cosine():
    ref = tone([midi_hz(m) for m in (60, 64, 67, 64)], seconds=0.5)
    assert pitch.chroma_cosine(ref, ref, SR) > 0.999
    same_notes_other_order = tone([midi_hz(m) for m in (67, 60, 64, 64)], seconds=0.5)
    tritone = tone([midi_hz(m + 6) for m in (60, 64, 67, 64)], seconds=0.5)
    assert pitch.chroma_cosine(ref, same_notes_other_order, SR) > 0.98
    assert pitch.chroma_cosine(ref, tritone, SR) < 0.7
    assert pitch.chroma_cosine(ref, np.zeros_like(ref), SR) == 0.0


@pytest.mark.parametrize(
    ("key", "expected"),
    [("G major", {7, 9, 11, 0, 2, 4, 6}), ("Bb major", {10, 0, 2, 3, 5, 7, 9}), ("B- major", {10, 0, 2, 3, 5, 7, 9})],
)
def test_scale_pitch_classes(key, expected):
    assert pitch.scale_pitch_classes(key) == expected


def test_parse_key_rejects_nonsense():
    assert pitch.parse_key("f# minor") == (6, "minor")
    with pytest.raises(pitch.KeyNameError):
        pitch.parse_key("H major")
    with pytest.raises(pitch.KeyNameError):
        pitch.parse_key("C bogus")
