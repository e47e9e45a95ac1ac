"""A LoRA fine-tune of Dia-1.6B's exact shape on CPU: checkpoint size and peak memory of training
(2 optimizer steps, batch 1, 32-frame crops, rank 16) and of loading the checkpoint to generate.

Random weights saved locally stand in for the pretrained model and go through the same
`model.pretrained` path; the data are built-in melodies encoded with a 9 x 1024 spectral-RVQ codec,
so the vocabulary is DAC's. Each phase runs in its own process so its peak RSS is its own.

    .venv/bin/python benchmarks/lora_checkpoint.py --work /tmp/lora16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def phase(name: str, work: Path) -> dict[str, float]:
    start = time.perf_counter()
    if name == "data":
        from diamusic.data.prepare import prepare

        prepare("melodies", "spectral-rvq", work / "data", limit=12, max_seconds=4.0,
                codec_options={"codebook_size": 1024}, progress=False)  # fmt: skip
    elif name == "base":
        from diamusic.data.dataset import CodesDataset
        from diamusic.model import build_model
        from diamusic.patterns import DelayPattern

        vocab = CodesDataset(work / "data").vocab
        build_model("dia-1.6b", DelayPattern.parse("musicgen"), vocab).save_pretrained(work / "base")
    elif name == "train":
        from diamusic.config import load_config
        from diamusic.train import train

        overrides = {"data.path": str(work / "data"), "model.pretrained": str(work / "base"), "steps": 2,
                     "batch_size": 1, "data.crop_frames": 32, "model.lora_rank": 16, "precision": "fp32",
                     "model.gradient_checkpointing": False, "eval.every": 2, "eval.clips": 1,
                     "checkpoints.every": 2, "samples.every": 0, "data.num_workers": 0,
                     "tracking.backends": []}  # fmt: skip
        train(load_config("dia-1.6b-music", overrides=overrides), work / "run", progress=False)
    elif name == "generate":
        from diamusic.generate import SamplingConfig, generate_codes
        from diamusic.runs import load_run

        run = load_run(work / "run", device="cpu")
        generate_codes(run.model, ["a jig"], run.pattern, run.vocab, SamplingConfig.for_seconds(0.5, 86.13))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": time.perf_counter() - start, "peak_rss_gb": peak_gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a scratch directory (about 7 GB)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.work)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    report = {}
    for name in ("data", "base", "train", "generate"):
        if name in ("data", "base") and (args.work / name).exists():
            continue
        done = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--phase", name],
                              capture_output=True, text=True, check=True)  # fmt: skip
        report[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, report[name], flush=True)
    checkpoint = sorted((args.work / "run" / "checkpoints").glob("step_*"))[-1]
    sizes = {p.name: p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()}
    report["checkpoint_bytes"] = sum(sizes.values())
    report["model_safetensors_bytes"] = sizes.get("model.safetensors", 0)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
