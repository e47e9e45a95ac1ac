"""`prepare` throughput per codec: seconds of audio encoded per second, by the encoder alone and for
the whole job (rendering the built-in melodies, fitting the spectral-RVQ codec, writing shards).

DAC is transformers' `DacModel` with `descript/dac_44khz`'s architecture and random weights, saved to
a temporary directory and loaded through the same path as the real one (`--dac-model` names real
weights instead: a hub id in the local cache or a directory). Encoding time does not depend on the
weights' values. The encoder runs on the GPU when there is one.

    .venv/bin/python benchmarks/prepare_speed.py --melodies 12
    python benchmarks/prepare_speed.py --melodies 60      # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from record import add_results_option, report

from diamusic.data.prepare import prepare


def random_dac(directory: Path) -> Path:
    from transformers import DacConfig, DacModel

    torch.manual_seed(0)
    DacModel(DacConfig()).save_pretrained(directory)  # DacConfig's defaults are dac_44khz's shape
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--melodies", type=int, default=12)
    parser.add_argument("--codecs", nargs="+", default=["spectral-rvq", "dac"], choices=["spectral-rvq", "dac"])
    parser.add_argument("--dac-model", help="real DAC weights (default: random ones of dac_44khz's shape)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    add_results_option(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    lines = [
        f"{args.melodies} built-in melodies (SoundFont, mixed texture), clips up to 30 s; encoder on {device}.",
        "",
        "| codec | audio | encode | encoder x real time | whole job | job x real time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for codec in args.codecs:
            options = {"codebook_size": 1024} if codec == "spectral-rvq" else {}
            if codec == "dac":
                options["dac_model"] = args.dac_model or str(random_dac(Path(tmp) / "dac"))
            result = prepare("melodies", codec, Path(tmp) / codec, limit=args.melodies, codec_options=options,
                             progress=False)  # fmt: skip
            audio = result.audio_seconds_encoded
            lines.append(
                f"| {codec} | {audio:.0f} s | {result.encode_seconds:.1f} s | {audio / result.encode_seconds:.1f} | "
                f"{result.seconds:.1f} s | {audio / result.seconds:.1f} |"
            )
    report(f"prepare throughput, {device}", device, "\n".join(lines), args.results)


if __name__ == "__main__":
    main()
