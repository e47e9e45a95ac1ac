"""Decode speed: our `generate_codes` loop vs transformers' `DiaForConditionalGeneration.generate`.

Randomly initialised models (no downloads), DAC's vocabulary (9 x 1024) and Dia's delay pattern.
Both sides run the same number of decoder steps per call (a random model may stop early, so the
rate is steps/s, not calls/s), after one warm-up call each. Prints a markdown table.

    .venv/bin/python benchmarks/decode_speed.py --threads 1
    .venv/bin/python benchmarks/decode_speed.py --presets tiny --frames 172 --batch 4
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from diamusic.generate import SamplingConfig, generate_codes
from diamusic.model import build_model, count_parameters
from diamusic.patterns import DelayPattern
from diamusic.tokens import AudioVocab, encode_text

VOCAB = AudioVocab(codebook_size=1024, num_codebooks=9)


def hf_generate(model, texts: list[str], pattern: DelayPattern, frames: int, cfg: bool) -> int:
    """transformers' generate set up like DiaProcessor's generation mode; returns the steps it ran."""
    device = model.device
    input_ids, attention_mask = (t.to(device) for t in encode_text(texts))
    first = torch.full((len(texts), 1, VOCAB.num_codebooks), VOCAB.bos, dtype=torch.long)
    delay_mask = pattern.apply(first, bos=VOCAB.bos, pad=VOCAB.pad).to(device)
    sampling = {"do_sample": True, "guidance_scale": 3.0, "top_k": 45} if cfg else {"do_sample": False}
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=delay_mask,
        decoder_attention_mask=torch.ones(delay_mask.shape[:2], dtype=torch.long, device=device),
        max_new_tokens=pattern.decode_steps(frames),
        **sampling,
    )
    return out.shape[1] - 1


def steps_per_second(run: Callable[[], int], repeats: int) -> float:
    run()  # warm-up: first-call allocations and lazy imports
    steps, start = 0, time.perf_counter()
    for _ in range(repeats):
        steps += run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--frames", type=int, default=86, help="max frames per clip (86 = 1 s of DAC)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pattern = DelayPattern.parse("dia")
    texts = [f"a folk tune number {i} in G major, 6/8, flute" for i in range(args.batch)]

    rows = []
    for preset in args.presets:
        model = build_model(preset, pattern, VOCAB).to(args.device).eval()
        params = count_parameters(model) / 1e6
        for cfg in (False, True):
            sampling = (
                SamplingConfig(max_frames=args.frames)  # Dia's defaults: CFG 3, filter top-k 45
                if cfg
                else SamplingConfig(max_frames=args.frames, cfg_scale=1.0, temperature=0.0)
            )

            runs = {
                "ours": lambda m=model, s=sampling: generate_codes(m, texts, pattern, VOCAB, s).decode_steps,
                "transformers": lambda m=model, c=cfg: hf_generate(m, texts, pattern, args.frames, c),
            }
            rates = {name: steps_per_second(fn, args.repeats) for name, fn in runs.items()}
            rows.append((preset, params, "3.0 + top-k 45" if cfg else "off (greedy)", rates))

    print(
        f"\nDecode speed, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}; batch {args.batch}, up to {args.frames} frames, "
        f"pattern {pattern}, vocab 9 x 1028\n"
    )
    print("| preset | params | CFG | ours steps/s | transformers steps/s | ours / transformers |")
    print("|---|---:|---|---:|---:|---:|")
    for preset, params, cfg, rates in rows:
        ratio = rates["ours"] / rates["transformers"]
        print(
            f"| {preset} | {params:.1f}M | {cfg} | {rates['ours']:.1f} | {rates['transformers']:.1f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
