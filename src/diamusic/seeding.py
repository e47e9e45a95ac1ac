"""Seeds that are the same in every process, for the built-in music's random choices.

Each choice of a rendering (texture, instruments, tempo, ...) has its own generator, seeded by the piece,
the seed and the choice's name, so adding or changing one choice never moves another, and the same
(piece, seed) sounds the same everywhere.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_int(*parts: object) -> int:
    """A 64-bit seed from `parts` (Python's hash() is salted per process, so it cannot serve)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def piece_rng(piece_id: str, seed: int, what: str) -> np.random.Generator:
    """The generator of one named choice (`what`) of a piece's rendering for `seed`."""
    return np.random.default_rng(stable_int("piece", piece_id, seed, what))
