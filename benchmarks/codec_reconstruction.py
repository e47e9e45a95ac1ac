"""How well does the offline spectral-RVQ codec keep a melody? Measured on held-out built-in melodies.

    .venv/bin/python benchmarks/codec_reconstruction.py                  # 300 train / 30 held out, ~6 min
    .venv/bin/python benchmarks/codec_reconstruction.py --train 60 --heldout 9 --rpa-levels 1,3,9
    .venv/bin/python benchmarks/codec_reconstruction.py --renderer soundfont --texture mixed

The first `--train` melodies of `corpus.iter_melodies(seed=...)` are rendered and fitted on; the next
`--heldout` ones (an equal share of each collection) are encoded, decoded and compared with their source
audio. `--renderer legacy` (the default, the figures of RESULTS.md section 1) plays the bare melody with
`synth.render_melody` and a timbre from `synth.pick_timbre`; `--renderer soundfont|synth` uses
`render.render_piece` with `--texture` (solo, accompanied, mixed), resampled to the codec's 22050 Hz.

- log-mel SNR per level (dB; signal = per-band variance of the held-out log-mel frames),
- raw pitch accuracy (pyin on both, mir_eval, 20 and 50 cents) and chroma cosine,
- the same for "oracle" audio: the unquantised log-mel through the same Griffin-Lim inversion, which
  separates what the VQ loses from what the mel inversion loses,
- with render_piece: melody pitch accuracy against the melody notes as rendered (raw pitch accuracy at
  20 cents, reference voiced where a melody note sounds; pyin limited to the melody's range +-3
  semitones) and raw chroma accuracy (octave errors forgiven), for the source audio and for the decoded
  audio, per texture. On a mix pyin loses the tune
  to the other voices on many frames, so the source figure is the ceiling and the codec's loss is the
  gap between the two,
- fit time and encode/decode speed (x real time).

Prints markdown tables. Timings depend on the machine and on whatever else it is running.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import librosa
import mir_eval
import numpy as np

from diamusic import codecs, corpus, pitch, render, synth

SR = 22050


def accuracy(ref_track, est_wave: np.ndarray, tolerances: tuple[float, ...]) -> list[float]:
    ref_t, ref_f, _ = ref_track
    est_t, est_f, _ = pitch.pitch_track(est_wave, SR)
    rv, rc, ev, ec = mir_eval.melody.to_cent_voicing(ref_t, ref_f, est_t, est_f)
    return [float(mir_eval.melody.raw_pitch_accuracy(rv, rc, ev, ec, cent_tolerance=tol)) for tol in tolerances]


def note_accuracy(notes, est_wave: np.ndarray, tolerance: float = 20.0, margin: float = 3.0) -> tuple[float, float]:
    """Raw pitch and raw chroma accuracy of `est_wave` against melody notes (pitch, start s, duration s).

    pyin searches only the melody's range (+-`margin` semitones): on a mix it otherwise follows the bass.
    Chroma accuracy forgives octave errors, which a mix invites: a chord tone an octave below the tune.
    """
    low, high = min(p for p, _, _ in notes) - margin, max(p for p, _, _ in notes) + margin
    est_t, est_f, _ = pitch.pitch_track(est_wave, SR, fmin=midi_hz(low), fmax=midi_hz(high))
    ref_f = np.zeros(len(est_t))
    for p, s, d in notes:
        ref_f[(est_t >= s) & (est_t < s + d)] = midi_hz(p)
    rv, rc, ev, ec = mir_eval.melody.to_cent_voicing(est_t, ref_f, est_t, est_f)
    return (
        float(mir_eval.melody.raw_pitch_accuracy(rv, rc, ev, ec, cent_tolerance=tolerance)),
        float(mir_eval.melody.raw_chroma_accuracy(rv, rc, ev, ec, cent_tolerance=tolerance)),
    )


def midi_hz(p: float) -> float:
    return 440.0 * 2 ** ((p - 69) / 12)


def render_all(melodies, renderer: str, texture: str, seed: int) -> tuple[list[np.ndarray], list[dict]]:
    """Waves at SR and, per piece, what the tables group by (and the melody notes for render_piece)."""
    waves, info = [], []
    for m in melodies:
        if renderer == "legacy":
            inst = synth.pick_timbre(m, seed)
            waves.append(synth.render_melody(m, SR, inst, seed))
            info.append({"instrument": inst, "texture": "solo", "notes": None})
        else:
            r = render.render_piece(m, seed, renderer, texture)
            waves.append(librosa.resample(r.wave, orig_sr=r.sample_rate, target_sr=SR))
            info.append({"instrument": r.tags["melody_instrument"], "texture": r.tags["texture"], "notes": r.melody})
    return waves, info


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
    parser.add_argument("--renderer", choices=("legacy", *render.RENDERERS), default="legacy")
    parser.add_argument("--texture", choices=render.TEXTURES, default="mixed", help="with --renderer soundfont|synth")
    args = parser.parse_args()
    rpa_levels = [int(x) for x in args.rpa_levels.split(",")]

    t0 = time.perf_counter()
    melodies = list(corpus.iter_melodies(limit=args.train + args.heldout, seed=args.seed))
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    waves, info = render_all(melodies, args.renderer, args.texture, args.seed)
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
    for m, piece, wave in zip(melodies[args.train :], info[args.train :], held, strict=True):
        inst = piece["instrument"]
        t0 = time.perf_counter()
        codes = codec.encode(wave, SR)
        enc_time += time.perf_counter() - t0
        audio_seconds += len(wave) / SR
        ref_track = pitch.pitch_track(wave, SR)
        row = {"id": m.id, "collection": m.collection, "instrument": inst, "texture": piece["texture"]}
        for n in rpa_levels:
            t0 = time.perf_counter()
            decoded = codec.decode(codes[:, :n])
            if n == args.levels:
                dec_time += time.perf_counter() - t0
                row["chroma"] = pitch.chroma_cosine(wave, decoded, SR)
            row[f"rpa{n}"] = accuracy(ref_track, decoded, tolerances)
        row["oracle"] = accuracy(ref_track, codec.invert(codec.features(wave, SR)), tolerances)
        if piece["notes"] is not None:
            row["notes_source"] = note_accuracy(piece["notes"], wave)
            row["notes_decoded"] = note_accuracy(piece["notes"], decoded)
        rows.append(row)
        scores = " ".join(f"{k}={v[0]:.3f}" for k, v in row.items() if k.startswith("rpa") or k == "oracle")
        if "notes_source" in row:
            scores += f" melody-notes source={row['notes_source'][0]:.3f} decoded={row['notes_decoded'][0]:.3f}"
        print(f"  {m.id:28s} {inst:16s} {scores}", flush=True)

    print(f"\n## Spectral-RVQ codec reconstruction ({args.levels} x {args.codebook_size}, {args.n_mels} mels)\n")
    print(f"- melodies: {args.train} train ({train_minutes:.1f} min of audio), {len(held)} held out, seed {args.seed}")
    texture = f", texture {args.texture}" if args.renderer != "legacy" else ""
    print(f"- renderer {args.renderer}{texture}")
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

    if any("notes_source" in r for r in rows):
        last = rpa_levels[-1]
        print("\nMelody vs the rendered notes, 20 cents (pitch / chroma = octave errors forgiven):\n")
        print(f"| texture | n | source: pitch | chroma | decoded (levels 1-{last}): pitch | chroma |")
        print("|---|---:|---:|---:|---:|---:|")
        for texture in ("solo", "accompanied"):
            group = [r for r in rows if r["texture"] == texture]
            if group:
                src = np.mean([r["notes_source"] for r in group], axis=0)
                dec = np.mean([r["notes_decoded"] for r in group], axis=0)
                print(f"| {texture} | {len(group)} | {src[0]:.4f} | {src[1]:.4f} | {dec[0]:.4f} | {dec[1]:.4f} |")

    full = f"rpa{args.levels}" if args.levels in rpa_levels else f"rpa{max(rpa_levels)}"
    for group in ("collection", "instrument", "texture"):
        buckets = defaultdict(list)
        for r in rows:
            buckets[r[group]].append(r[full][0])
        print(f"\n| {group} | n | raw pitch acc. @20 c |")
        print("|---|---:|---:|")
        for name, values in sorted(buckets.items()):
            print(f"| {name} | {len(values)} | {np.mean(values):.4f} |")


if __name__ == "__main__":
    main()
