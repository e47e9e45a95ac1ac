"""How often `prepare --captions auto` tags the built-in corpus with the tempo and key it was rendered at.

Each piece is rendered as `prepare` renders it (its tags say the tempo and the key from its notes), tagged
from the audio alone, and scored: tempo within 8 % (MIREX's tolerance; also allowing a factor of 2 or 3, the
beat tracker's usual octave error) and the MIREX weighted key score (1 same key, 0.5 a fifth, 0.3 relative,
0.2 parallel).

    .venv/bin/python benchmarks/tag_accuracy.py --pieces 40
"""

from __future__ import annotations

import argparse

import mir_eval
import numpy as np
from record import add_results_option, report

from diamusic import corpus, render
from diamusic.audio_metrics import estimate_key, estimate_tempo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=40)
    parser.add_argument("--seed", type=int, default=5)
    add_results_option(parser)
    args = parser.parse_args()
    tempo, octave, keys = [], [], []
    for i, melody in enumerate(corpus.iter_melodies(limit=args.pieces, seed=args.seed)):
        piece = render.render_piece(melody, seed=i)
        ratio = estimate_tempo(piece.wave, piece.sample_rate) / piece.tags["tempo_bpm"]
        tempo.append(abs(ratio - 1) <= 0.08)
        octave.append(any(abs(ratio / k - 1) <= 0.08 for k in (1 / 3, 0.5, 1, 2, 3)))
        key = estimate_key(piece.wave, piece.sample_rate)
        keys.append(mir_eval.key.weighted_score(piece.tags["key"], key) if key else 0.0)
    keys = np.array(keys)
    table = "| pieces | tempo within 8 % | within 8 % of x1/3, 1/2, 2, 3 | key exact | MIREX key score |\n"
    table += "|---:|---:|---:|---:|---:|\n"
    shares = [np.mean(tempo), np.mean(octave), np.mean(keys == 1), keys.mean()]
    table += f"| {len(keys)} | " + " | ".join(f"{v:.2f}" for v in shares) + " |\n"
    report("automatic tags against the rendered tempo and key (built-in corpus)", "cpu", table, args.results)


if __name__ == "__main__":
    main()
