"""Seeds of the built-in music: pinned, because every rendered piece and the demo's numbers follow them."""

from diamusic.seeding import piece_rng, stable_int


def test_seeds_are_pinned_and_each_choice_has_its_own():
    assert stable_int("piece", "essen/x", 0, "texture") == 2299030113785316564  # the same in every process
    assert piece_rng("essen/x", 0, "texture").random() == piece_rng("essen/x", 0, "texture").random()
    assert piece_rng("essen/x", 0, "texture").random() != piece_rng("essen/x", 0, "tempo").random()
    assert piece_rng("essen/x", 0, "texture").random() != piece_rng("essen/x", 1, "texture").random()
