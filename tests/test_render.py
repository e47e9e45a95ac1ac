"""render_piece: arrangement, SoundFont and synth rendering, captions. Short excerpts keep this file fast."""

import dataclasses
import json
import re

import numpy as np
import pytest

from diamusic import corpus, pitch, render
from diamusic.errors import DiamusicError

SR = render.SAMPLE_RATE
TINY = corpus.Melody("test/tiny", ((60.0, 0.0, 1.0),), "C major", "4/4", 120.0, "test", "tiny")


@pytest.fixture(scope="module")
def melodies():
    return list(corpus.iter_melodies(limit=9, seed=0))  # three of each collection, essen/oneills/bach in turn


@pytest.fixture(scope="module")
def excerpts(melodies):
    return [m.excerpt(6.0) for m in melodies]


def arrangements(melodies, seeds, texture="mixed", renderer="soundfont"):
    for m in melodies:
        for seed in seeds:
            yield m, seed, render.arrange(m, seed, texture, renderer)


def pinned_run(wave: np.ndarray, length: int = 3) -> bool:
    """Whether `length` consecutive samples sit at full scale: the signature of clipping."""
    at_rail = np.abs(wave) >= 0.999
    return bool(np.convolve(at_rail, np.ones(length), mode="valid").max(initial=0) >= length)


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("renderer", render.RENDERERS)
def test_deterministic_per_seed_and_different_across_seeds(excerpts, renderer):
    for m in (excerpts[0], excerpts[2]):  # a harmonised tune and a chorale
        a = render.render_piece(m, 3, renderer, "accompanied")
        b = render.render_piece(m, 3, renderer, "accompanied")
        assert a.wave.tobytes() == b.wave.tobytes()
        assert (a.caption, a.melody, a.tags) == (b.caption, b.melody, b.tags)
        c = render.render_piece(m, 4, renderer, "accompanied")
        assert a.wave.tobytes() != c.wave.tobytes()
        assert a.tags != c.tags


def test_mixed_renders_exactly_its_drawn_texture(excerpts):
    m = excerpts[1]
    drawn = {seed: render.render_piece(m, seed) for seed in range(6)}
    assert {r.tags["texture"] for r in drawn.values()} == {"solo", "accompanied"}
    for seed in (0, 1):
        explicit = render.render_piece(m, seed, texture=drawn[seed].tags["texture"])
        assert explicit.wave.tobytes() == drawn[seed].wave.tobytes()
        assert explicit.caption == drawn[seed].caption


def test_output_format(excerpts):
    for m in excerpts[:3]:
        r = render.render_piece(m, 0, texture="accompanied")
        assert r.sample_rate == SR == 44100
        assert r.wave.dtype == np.float32 and r.wave.ndim == 1 and np.all(np.isfinite(r.wave))
        assert np.abs(r.wave).max() == pytest.approx(render.OUTPUT_PEAK, rel=1e-4)  # -1 dBFS, never clipped
        assert not pinned_run(r.wave)
        assert len(r.wave) / SR > r.melody[-1][1] + r.melody[-1][2]  # the last note and its release fit
        json.dumps(r.tags)  # the tags go into dataset manifests


def test_tempo_change_keeps_pieces_within_max_seconds(melodies):
    for m, seed, arr in arrangements(melodies, range(8)):
        end = max(s + d for part in arr.parts for _, s, d, _ in part.notes)
        assert end <= corpus.MAX_SECONDS + 0.05, (m.id, seed)


def test_bad_renderer_or_texture_is_a_one_line_user_error(excerpts):
    with pytest.raises(DiamusicError, match=r"unknown renderer 'fluidsynth'; choose one of soundfont, synth$"):
        render.render_piece(excerpts[0], 0, renderer="fluidsynth")
    with pytest.raises(
        render.RenderOptionError, match=r"unknown texture 'duet'; choose one of solo, accompanied, mixed$"
    ):
        render.render_piece(excerpts[0], 0, texture="duet")


# ------------------------------------------------------------------------------------------ instruments


@pytest.mark.parametrize("name", sorted(render.INSTRUMENTS))
def test_every_instrument_sounds_unclipped(name):
    inst = render.INSTRUMENTS[name]
    mid = int(np.clip(62, inst.low + 7, inst.high - 7))
    notes = [(mid, 0.05, 0.6, 127), (mid + 4, 0.05, 0.6, 127), (mid + 7, 0.05, 0.6, 127), (mid + 2, 0.7, 0.5, 100)]
    stem = render._stem_soundfont(render.Part("chords", inst, notes), int(1.6 * SR), 0.0, SR)
    assert np.all(np.isfinite(stem))  # float all the way: a stem over 1 is fine, the mix is normalised
    assert np.sqrt(np.mean(stem[: int(1.2 * SR)] ** 2)) > 0.005, name  # not silent
    arrangement = render.Arrangement([render.Part("melody", inst, notes)], 0.0, -6.0, 0.0, 0.0, {})
    wave = render.render_arrangement(arrangement, "soundfont", TINY, 0)
    assert not pinned_run(wave) and np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave[: int(1.2 * SR)] ** 2)) > 0.05, name  # sustained sound, not a click


@pytest.mark.parametrize("kit", render.DRUM_KITS)
def test_drum_kits_sound(kit):
    part = render.Part(
        "drums",
        None,
        [
            (key, 0.1 + 0.3 * i, 0.2, 110)
            for i, key in enumerate(sorted({k for pattern in render.DRUM_PATTERNS.values() for _, k, _ in pattern}))
        ],
        kit=kit,
    )
    stem = render._stem_soundfont(part, int(1.6 * SR), 0.0, SR)
    assert np.all(np.isfinite(stem))
    for i in range(len(part.notes)):  # every drum the patterns use makes a sound
        hit = stem[int((0.1 + 0.3 * i) * SR) : int((0.3 + 0.3 * i) * SR)]
        assert np.sqrt(np.mean(hit**2)) > 0.005, (kit, part.notes[i][0])


def test_synth_stand_ins_sound():
    """renderer="synth": every timbre an instrument maps to, and the synthesised drums, make sound."""
    rng = np.random.default_rng(0)
    for timbre in sorted({i.synth for i in render.INSTRUMENTS.values()}):
        inst = next(i for i in render.INSTRUMENTS.values() if i.synth == timbre)
        stem = render._stem_synth(render.Part("chords", inst, [(60, 0.05, 0.8, 100)]), SR, 0.0, SR, rng)
        assert np.sqrt(np.mean(stem**2)) > 0.01, timbre
    hits = [(k, 0.1 + 0.2 * i, 0.1, 100) for i, k in enumerate((render.KICK, render.SNARE, render.CLOSED_HAT))]
    stem = render._stem_synth(render.Part("drums", None, hits), SR, 0.0, SR, rng)
    for _, start, _, _ in hits:
        assert np.sqrt(np.mean(stem[int(start * SR) : int((start + 0.1) * SR)] ** 2)) > 0.01


def melody_instruments() -> list[str]:
    return sorted({n for pool in render.MELODY_INSTRUMENTS.values() for n in pool})


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
    inst = render.INSTRUMENTS[name]
    for key, tuning in ((64, 0.0), (71, 0.0), (71, 50.0)):
        stem = render._stem_soundfont(render.Part("melody", inst, [(key, 0.0, 1.2, 100)]), int(1.3 * SR), tuning, SR)
        times, f0, voiced = pitch.pitch_track(stem, SR)
        middle = voiced & (times > 0.3) & (times < 1.0)
        assert middle.sum() > 10, name  # pyin follows it: voiced throughout
        by_pyin = 100 * (np.median(pitch.hz_to_midi(f0[middle])) - key)
        assert by_pyin == pytest.approx(tuning, abs=25), (name, key, tuning)  # 20 + half of pyin's 10-cent bin
        assert fundamental_cents(stem, key) == pytest.approx(tuning, abs=20), (name, key, tuning)


# ------------------------------------------------------------------------------------------ arrangement


def test_transposition_key_tempo_and_range(melodies):
    seen_transpositions = set()
    for m, seed, arr in arrangements(melodies, range(10)):
        tags = arr.tags
        t = tags["transpose"]
        seen_transpositions.add(t)
        assert t in render.TRANSPOSE_RANGE
        tonic, mode = pitch.parse_key(m.key)
        assert pitch.parse_key(tags["key"]) == ((tonic + t) % 12, mode)
        assert abs(tags["tempo_bpm"] / m.tempo_bpm - 1) <= render.TEMPO_SPREAD + 0.01
        inst = render.INSTRUMENTS[tags["melody_instrument"]]
        keys = [k for k, *_ in arr.parts[0].notes]
        assert inst.low <= min(keys) and max(keys) <= inst.high, (m.id, seed)
    assert len(seen_transpositions) >= 6


def test_rendered_melody_is_the_score_transposed_stretched_and_humanised(excerpts):
    for m in excerpts[:3]:
        for seed in (0, 1):
            r = render.render_piece(m, seed, texture="accompanied")
            t = r.tags
            factor = t["tempo_bpm"] / m.tempo_bpm
            assert len(r.melody) == len(m.notes)
            for (p, s, d), (p0, s0, d0) in zip(r.melody, m.notes, strict=True):
                assert p == pytest.approx(p0 + t["transpose"] + t["tuning_cents"] / 100, abs=1e-3)
                assert abs(s - s0 / factor) <= 0.013  # a few ms of timing humanisation, clipped at 3 sigma
                assert 0 < d <= d0 / factor
            starts = np.array([s for _, s, _ in r.melody])
            ends = starts + np.array([d for *_, d in r.melody])
            assert np.all(ends[:-1] <= starts[1:])  # still one line: a note ends before the next
            assert abs(t["tuning_cents"]) <= render.MAX_TUNING_CENTS


def test_reference_melody_matches_the_audio(excerpts):
    """pyin on a solo rendering agrees with the returned melody notes on almost every frame."""
    r = render.render_piece(excerpts[0], 0, texture="solo")
    times, f0, voiced = pitch.pitch_track(r.wave, r.sample_rate)
    expected = np.full(len(times), np.nan)
    for p, s, d in r.melody:
        expected[(times > s + 0.06) & (times < s + d - 0.03)] = p
    frames = np.isfinite(expected)
    assert frames.sum() > 50
    hit = voiced[frames] & (np.abs(pitch.hz_to_midi(np.where(voiced, f0, 1.0))[frames] - expected[frames]) < 0.2)
    assert hit.mean() > 0.9


def test_chorale_keeps_bachs_voices(melodies):
    chorale = melodies[2]
    assert len(chorale.accompaniment) == 3
    arr = render.arrange(chorale, 0, "accompanied", "soundfont")
    assert [p.role for p in arr.parts] == ["melody", "alto", "tenor", "bass"]
    assert arr.tags["ensemble"] in render.ENSEMBLES and arr.tags["parts"] == 4
    t = arr.tags["transpose"]
    for part, voice in zip(arr.parts[1:], chorale.accompaniment, strict=True):
        assert sorted(k for k, *_ in part.notes) == sorted(int(p) + t for p, s, _ in voice if s < chorale.duration)
        assert arr.parts[0].instrument.name != part.instrument.name
    solo = render.arrange(chorale, 0, "solo", "soundfont")
    assert [p.role for p in solo.parts] == ["melody"] and solo.tags["accompaniment"] == []


def test_harmonised_accompaniment_stays_in_key(melodies):
    tunes = [m for m in melodies if not m.accompaniment]
    checked = 0
    for m, seed, arr in arrangements(tunes, range(6), texture="accompanied"):
        scale = pitch.scale_pitch_classes(arr.tags["key"])  # minor: natural minor plus the raised 7th
        for part in arr.parts[1:]:
            if part.role in ("chords", "bass"):
                assert part.notes, (m.id, seed, part.role)
                outside = {k % 12 for k, *_ in part.notes} - scale
                assert not outside, (m.id, seed, arr.tags["key"], part.role, outside)
                checked += len(part.notes)
            if part.role == "bass":
                assert all(40 <= k <= 58 for k, *_ in part.notes)  # root in E2..Eb3, or its fifth
    assert checked > 1000


def test_harmoniser_picks_the_obvious_chords():
    # C major: C-E-G | F-A-C | G-B-D | C ; one segment per bar
    tune = [
        (60, 0, 1),
        (64, 1, 1),
        (67, 2, 1),
        (65, 3, 1),
        (69, 4, 1),
        (72, 5, 1),
        (67, 6, 1),
        (71, 7, 1),
        (74, 8, 1),
        (72, 9, 3),
    ]
    segments = [(0, 3), (3, 6), (6, 9), (9, 12)]
    roots = [root for root, _ in render.harmonise(tune, segments, "C major")]
    assert roots == [0, 5, 7, 0]
    # A minor with the leading tone G# -> E major (V), with G natural -> not V
    leading = [(69, 0, 1), (72, 1, 1), (76, 2, 1), (76, 3, 1), (68, 4, 1), (71, 5, 1), (69, 6, 3)]
    chords = render.harmonise(leading, [(0, 3), (3, 6), (6, 9)], "A minor")
    assert chords[1] == (4, (4, 8, 11)) and chords[0][0] == 9 and chords[2][0] == 9
    natural = [(76, 0, 1), (74, 1, 1), (67, 2, 1), (71, 3, 1)]
    assert 8 not in render.harmonise(natural, [(0, 4)], "A minor")[0][1]


def test_drums_follow_the_metre(melodies):
    with_drums = 0
    for m, _, arr in arrangements([m for m in melodies if not m.accompaniment], range(12), texture="accompanied"):
        drums = [p for p in arr.parts if p.role == "drums"]
        assert arr.tags["drums"] == bool(drums)
        if not drums:
            continue
        with_drums += 1
        factor = arr.tags["tempo_bpm"] / m.tempo_bpm
        end = max(s + d for _, s, d in m.notes if (s + d) / factor <= corpus.MAX_SECONDS)  # cut as arrange does
        full = [a / factor for a, _, full in render._measures(m, end) if full]
        pattern = render.DRUM_PATTERNS[m.meter]
        kicks = sorted(s for k, s, *_ in drums[0].notes if k == render.KICK)
        assert len(kicks) == len(full) * sum(k == render.KICK for _, k, _ in pattern)
        assert abs(kicks[0] - full[0]) < 0.01  # on the first full measure's downbeat, give or take humanising
        assert len(drums[0].notes) == len(full) * len(pattern)
    assert with_drums >= 3


def test_reverb_is_a_seeded_decaying_tail():
    impulse = np.zeros(SR * 2)
    impulse[0] = 1.0
    a = render.reverb(impulse, SR, rt60=1.0, wet=0.3, seed=1)
    assert a.tobytes() == render.reverb(impulse, SR, rt60=1.0, wet=0.3, seed=1).tobytes()
    assert a.tobytes() != render.reverb(impulse, SR, rt60=1.0, wet=0.3, seed=2).tobytes()
    tail = a[1:] ** 2
    early, late = tail[: SR // 10].sum(), tail[int(0.8 * SR) : int(0.9 * SR)].sum()
    assert 10 * np.log10(early / late) > 30  # decays towards -60 dB at rt60
    assert tail[: int(0.011 * SR)].max() < 1e-12  # pre-delay


# ------------------------------------------------------------------------------------------ captions

ALL_NAMES = sorted(set(render.INSTRUMENTS) | {f"synth {t}" for t in corpus.INSTRUMENTS})


def named(caption: str) -> set[str]:
    return {n for n in ALL_NAMES if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", caption, re.IGNORECASE)}


@pytest.mark.parametrize("renderer", render.RENDERERS)
def test_captions_agree_with_the_rendering(melodies, renderer):
    templates = set()
    for m, seed, arr in arrangements(melodies, range(8), renderer=renderer):
        tags = arr.tags
        text = render.describe(tags, render._rng(m, seed, "caption"))
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
        assert tags["mood"][0] in render.MOODS[mode] and all(w in text for w in tags["mood"])
        fast, slow = tags["beat_bpm"] >= render.FAST_BEAT_BPM, tags["beat_bpm"] <= render.SLOW_BEAT_BPM
        assert any(w in text for w in render.FAST_WORDS) == fast
        assert any(w in text for w in render.SLOW_WORDS) == slow
        templates.add(2 if "(" in text else 1 if ": " in text else 0)
    assert len(templates) >= 3  # the wording varies by seed


def test_render_piece_caption_and_tags_match(excerpts):
    r = render.render_piece(excerpts[4], 2, "synth", "accompanied")
    assert r.caption == render.describe(r.tags, render._rng(excerpts[4], 2, "caption"))
    required = {"form", "key", "meter", "tempo_bpm", "texture", "melody_instrument", "accompaniment", "drums"}
    assert required | {"reverb", "renderer", "transpose", "collection"} <= set(r.tags)
    assert r.tags["renderer"] == "synth" and r.tags["melody_instrument"].startswith("synth ")
    assert r.tags["collection"] == excerpts[4].collection


def test_forms_in_captions_come_from_the_score(melodies):
    forms = {m.id: render._form(m) for m in melodies}
    assert all(f == "Bach chorale" for i, f in forms.items() if i.startswith("bach/"))
    assert all(f.startswith("Irish ") for i, f in forms.items() if i.startswith("oneills/"))
    hand_made = dataclasses.replace(melodies[0], form="")
    assert render._form(hand_made) == "folk song"
