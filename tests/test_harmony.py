"""harmonise: one diatonic triad per segment."""

from diamusic import harmony


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
    roots = [root for root, _ in harmony.harmonise(tune, segments, "C major")]
    assert roots == [0, 5, 7, 0]
    # A minor with the leading tone G# -> E major (V), with G natural -> not V
    leading = [(69, 0, 1), (72, 1, 1), (76, 2, 1), (76, 3, 1), (68, 4, 1), (71, 5, 1), (69, 6, 3)]
    chords = harmony.harmonise(leading, [(0, 3), (3, 6), (6, 9)], "A minor")
    assert chords[1] == (4, (4, 8, 11)) and chords[0][0] == 9 and chords[2][0] == 9
    natural = [(76, 0, 1), (74, 1, 1), (67, 2, 1), (71, 3, 1)]
    assert 8 not in harmony.harmonise(natural, [(0, 4)], "A minor")[0][1]
