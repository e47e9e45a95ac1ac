"""How fast does the built-in corpus render? CPU seconds per second of audio, per renderer and texture.

    .venv/bin/python benchmarks/render_speed.py                      # 60 pieces per row, ~3 min on 2 cores
    .venv/bin/python benchmarks/render_speed.py --pieces 20 --renderers soundfont

The first `--pieces` melodies of `corpus.iter_melodies(seed=...)` are parsed once (parse time reported on
its own: it is music21's cost, not the renderer's), then each (renderer, texture) renders all of them with
`render.render_piece` in this process, one after the other. "CPU s / audio s" is process CPU time over
the seconds of audio produced; the 300-piece column scales the row's wall time linearly.

Prints a markdown table. Timings depend on the machine and on whatever else it is running.
"""

from __future__ import annotations

import argparse
import platform
import time

from diamusic import corpus, playback, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--renderers", default=",".join(render.RENDERERS), help="comma list")
    parser.add_argument("--textures", default=",".join(render.TEXTURES), help="comma list")
    parser.add_argument("--extrapolate", type=int, default=300, help="report the wall time for this many pieces")
    args = parser.parse_args()

    t0 = time.perf_counter()
    melodies = list(corpus.iter_melodies(limit=args.pieces, seed=args.seed))
    t_parse = time.perf_counter() - t0
    render.render_piece(melodies[0].excerpt(2.0), 0)  # imports and the SoundFont's first load, outside the timing

    rows = []
    for renderer in args.renderers.split(","):
        for texture in args.textures.split(","):
            audio = 0.0
            accompanied = 0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for m in melodies:
                r = render.render_piece(m, args.seed, renderer, texture)
                audio += len(r.wave) / r.sample_rate
                accompanied += r.tags["texture"] == "accompanied"
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            rows.append((renderer, texture, accompanied, audio, cpu, wall))
            print(f"  {renderer} {texture}: {wall:.1f} s", flush=True)

    print(f"\n## Render speed ({platform.processor() or platform.machine()}, one process)\n")
    print(f"- pieces: {len(melodies)} per row, seed {args.seed}; parse (music21, once) {t_parse:.1f} s")
    print(f"- audio: {playback.SAMPLE_RATE} Hz mono float32\n")
    print(
        f"| renderer | texture | accompanied | audio (min) | CPU s / audio s | wall s | wall s per "
        f"{args.extrapolate} pieces |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for renderer, texture, accompanied, audio, cpu, wall in rows:
        per = wall / len(melodies) * args.extrapolate
        print(
            f"| {renderer} | {texture} | {accompanied}/{len(melodies)} | {audio / 60:.1f} | {cpu / audio:.4f} | "
            f"{wall:.1f} | {per:.0f} |"
        )


if __name__ == "__main__":
    main()
