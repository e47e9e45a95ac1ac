"""How well does the offline spectral-RVQ codec keep a melody? Measured on held-out built-in melodies.

    .venv/bin/python benchmarks/codec_reconstruction.py                  # 300 train / 30 held out, ~6 min
    .venv/bin/python benchmarks/codec_reconstruction.py --train 60 --heldout 9 --rpa-levels 1,3,9

The first `--train` melodies of `corpus.iter_melodies(seed=...)` are rendered (instrument from
`pick_instrument`) and fitted on; the next `--heldout` ones (an equal share of each collection) are
encoded, decoded and compared with their source audio:

- log-mel SNR per level (dB; signal = per-band variance of the held-out log-mel frames),
- raw pitch accuracy (pyin on both, mir_eval, 20 and 50 cents) and chroma cosine,
- the same for "oracle" audio: the unquantised log-mel through the same Griffin-Lim inversion, which
  separates what the VQ loses from what the mel inversion loses,
- fit time and encode/decode speed (x real time).

Prints markdown tables. Timings depend on the machine and on whatever else it is running.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import mir_eval
import numpy as np

from diamusic import codecs, corpus, pitch

SR = 22050


def accuracy(ref_track, est_wave: np.ndarray, tolerances: tuple[float, ...]) -> list[float]:
    ref_t, ref_f, _ = ref_track
    est_t, est_f, _ = pitch.pitch_track(est_wave, SR)
    rv, rc, ev, ec = mir_eval.melody.to_cent_voicing(ref_t, ref_f, est_t, est_f)
    return [float(mir_eval.melody.raw_pitch_accuracy(rv, rc, ev, ec, cent_tolerance=tol)) for tol in tolerances]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--heldout", type=int, default=30)
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--n-mels", type=int, default=128)
    parser.add_argument("--levels", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rpa-levels", default="9", help="comma list: decode with this many levels, e.g. 1,3,9")
    parser.add_argument("--save", type=Path, default=None, help="save the fitted codec to this directory")
    args = parser.parse_args()
    rpa_levels = [int(x) for x in args.rpa_levels.split(",")]

    t0 = time.perf_counter()
    melodies = list(corpus.iter_melodies(limit=args.train + args.heldout, seed=args.seed))
    t_parse = time.perf_counter() - t0
    instruments = [corpus.pick_instrument(m, args.seed) for m in melodies]
    t0 = time.perf_counter()
    waves = [corpus.render(m, SR, i, args.seed) for m, i in zip(melodies, instruments, strict=True)]
    t_render = time.perf_counter() - t0
    train, held = waves[: args.train], waves[args.train :]
    train_minutes = sum(len(w) for w in train) / SR / 60

    t0 = time.perf_counter()
    codec = codecs.SpectralRVQCodec.fit(
        train, SR, levels=args.levels, codebook_size=args.codebook_size, n_mels=args.n_mels, seed=args.seed
    )
    t_fit = time.perf_counter() - t0
    if args.save:
        codec.save(args.save)

    snr_held = codec.snr_per_level(held, SR)
    snr_train = codec.snr_per_level(train[: len(held)], SR)

    tolerances = (20.0, 50.0)
    rows: list[dict] = []
    enc_time = dec_time = audio_seconds = 0.0
    for m, inst, wave in zip(melodies[args.train :], instruments[args.train :], held, strict=True):
        t0 = time.perf_counter()
        codes = codec.encode(wave, SR)
        enc_time += time.perf_counter() - t0
        audio_seconds += len(wave) / SR
        ref_track = pitch.pitch_track(wave, SR)
        row = {"id": m.id, "collection": m.collection, "instrument": inst}
        for n in rpa_levels:
            t0 = time.perf_counter()
            decoded = codec.decode(codes[:, :n])
            if n == args.levels:
                dec_time += time.perf_counter() - t0
                row["chroma"] = pitch.chroma_cosine(wave, decoded, SR)
            row[f"rpa{n}"] = accuracy(ref_track, decoded, tolerances)
        row["oracle"] = accuracy(ref_track, codec.invert(codec.features(wave, SR)), tolerances)
        rows.append(row)
        scores = " ".join(f"{k}={v[0]:.3f}" for k, v in row.items() if k.startswith("rpa") or k == "oracle")
        print(f"  {m.id:28s} {inst:9s} {scores}", flush=True)

    print(f"\n## Spectral-RVQ codec reconstruction ({args.levels} x {args.codebook_size}, {args.n_mels} mels)\n")
    print(f"- melodies: {args.train} train ({train_minutes:.1f} min of audio), {len(held)} held out, seed {args.seed}")
    print(f"- parse {t_parse:.1f} s, render {t_render:.1f} s, **fit {t_fit:.1f} s**")
    print(
        f"- encode {audio_seconds / enc_time:.0f}x real time, decode (Griffin-Lim "
        f"{codec.config.griffin_lim_iters} iters) {audio_seconds / dec_time:.1f}x real time\n"
    )

    print("| levels | log-mel SNR held-out (dB) | log-mel SNR train (dB) |")
    print("|---:|---:|---:|")
    for level, (h, t) in enumerate(zip(snr_held, snr_train, strict=True), start=1):
        print(f"| {level} | {h:.2f} | {t:.2f} |")

    print("\n| audio | raw pitch acc. @20 c | @50 c |")
    print("|---|---:|---:|")
    for key, label in [*((f"rpa{n}", f"decoded, levels 1-{n}") for n in rpa_levels), ("oracle", "oracle (no VQ)")]:
        values = np.array([r[key] for r in rows])
        print(f"| {label} | {values[:, 0].mean():.4f} (min {values[:, 0].min():.3f}) | {values[:, 1].mean():.4f} |")
    chroma = np.array([r["chroma"] for r in rows])
    print(f"\nchroma cosine, decoded vs source: {chroma.mean():.4f} (min {chroma.min():.3f})")

    full = f"rpa{args.levels}" if args.levels in rpa_levels else f"rpa{max(rpa_levels)}"
    for group in ("collection", "instrument"):
        buckets = defaultdict(list)
        for r in rows:
            buckets[r[group]].append(r[full][0])
        print(f"\n| {group} | n | raw pitch acc. @20 c |")
        print("|---|---:|---:|")
        for name, values in sorted(buckets.items()):
            print(f"| {name} | {len(values)} | {np.mean(values):.4f} |")


if __name__ == "__main__":
    main()
