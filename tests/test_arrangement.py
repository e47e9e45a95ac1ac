"""arrange: the choices of a rendering and the parts it plays (no audio)."""


from diamusic import arrangement, corpus, instruments, pitch


def test_tempo_change_keeps_pieces_within_max_seconds(melodies, arrangements):
    for m, seed, arr in arrangements(melodies, range(8)):
        end = max(s + d for part in arr.parts for _, s, d, _ in part.notes)
        assert end <= corpus.MAX_SECONDS + 0.05, (m.id, seed)


def test_transposition_key_tempo_and_range(melodies, arrangements):
    seen_transpositions = set()
    for m, seed, arr in arrangements(melodies, range(10)):
        tags = arr.tags
        t = tags["transpose"]
        seen_transpositions.add(t)
        assert t in arrangement.TRANSPOSE_RANGE
        tonic, mode = pitch.parse_key(m.key)
        assert pitch.parse_key(tags["key"]) == ((tonic + t) % 12, mode)
        assert abs(tags["tempo_bpm"] / m.tempo_bpm - 1) <= arrangement.TEMPO_SPREAD + 0.01
        inst = instruments.INSTRUMENTS[tags["melody_instrument"]]
        keys = [k for k, *_ in arr.parts[0].notes]
        assert inst.low <= min(keys) and max(keys) <= inst.high, (m.id, seed)
    assert len(seen_transpositions) >= 6


def test_chorale_keeps_bachs_voices(melodies):
    chorale = melodies[2]
    assert len(chorale.accompaniment) == 3
    arr = arrangement.arrange(chorale, 0, "accompanied", "soundfont")
    assert [p.role for p in arr.parts] == ["melody", "alto", "tenor", "bass"]
    assert arr.tags["ensemble"] in instruments.ENSEMBLES and arr.tags["parts"] == 4
    t = arr.tags["transpose"]
    for part, voice in zip(arr.parts[1:], chorale.accompaniment, strict=True):
        assert sorted(k for k, *_ in part.notes) == sorted(int(p) + t for p, s, _ in voice if s < chorale.duration)
        assert arr.parts[0].instrument.name != part.instrument.name
    solo = arrangement.arrange(chorale, 0, "solo", "soundfont")
    assert [p.role for p in solo.parts] == ["melody"] and solo.tags["accompaniment"] == []


def test_harmonised_accompaniment_stays_in_key(melodies, arrangements):
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


def test_drums_follow_the_metre(melodies, arrangements):
    with_drums = 0
    for m, _, arr in arrangements([m for m in melodies if not m.accompaniment], range(12), texture="accompanied"):
        drums = [p for p in arr.parts if p.role == "drums"]
        assert arr.tags["drums"] == bool(drums)
        if not drums:
            continue
        with_drums += 1
        factor = arr.tags["tempo_bpm"] / m.tempo_bpm
        end = max(s + d for _, s, d in m.notes if (s + d) / factor <= corpus.MAX_SECONDS)  # cut as arrange does
        full = [a / factor for a, _, full in arrangement._measures(m, end) if full]
        groove = arrangement.DRUM_GROOVES[m.meter]
        kicks = sorted(s for k, s, *_ in drums[0].notes if k == instruments.KICK)
        assert len(kicks) == len(full) * sum(k == instruments.KICK for _, k, _ in groove)
        assert abs(kicks[0] - full[0]) < 0.01  # on the first full measure's downbeat, give or take humanising
        assert len(drums[0].notes) == len(full) * len(groove)
    assert with_drums >= 3
