"""Generation speed: our decode loop (dynamic cache, static cache, compiled step) against transformers'
`DiaForConditionalGeneration.generate`, per delay pattern and batch size, with CFG on.

Randomly initialised models (no downloads), DAC's vocabulary (9 x 1024). A decode step emits one
frame column per sample, so frames/s = batch x decode steps / s (a random model may stop early,
so steps are counted, not calls); real-time factor = frames/s / 86.13 (DAC's frame rate). "bare
step" times the decoder and head alone on a static cache at the same batch (CFG doubles its rows):
the floor our loop's sampling and token rules add to. The bandwidth share is decoder weight bytes
read per step / step time / the device's memory bandwidth (``--bandwidth-gbs``, by default the data
sheet's for known GPUs). After one warm-up call each (compilation happens there).

    .venv/bin/python benchmarks/decode_speed.py --presets tiny --threads 1
    python benchmarks/decode_speed.py --presets dia-1.6b --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from record import add_results_option, report

from diamusic.generate import DecodeOptions, SamplingConfig, decoder_step, generate_codes, new_cache
from diamusic.model import build_model, count_parameters
from diamusic.patterns import DelayPattern
from diamusic.tokens import AudioVocab, encode_text

VOCAB = AudioVocab(codebook_size=1024, num_codebooks=9)
FRAME_RATE = 44100 / 512
# data-sheet memory bandwidth, GB/s, matched in order against the device name
BANDWIDTH_GBS = (("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0), ("H200", 4800.0),
                 ("A100-SXM4-80GB", 2039.0), ("A100", 1555.0), ("L40S", 864.0), ("RTX 4090", 1008.0))  # fmt: skip
OPTIONS = {
    "dynamic": DecodeOptions(static_cache=False),
    "static": DecodeOptions(static_cache=True),
    "compiled": DecodeOptions(static_cache=True, compile=True),
}


def hf_generate(model, texts: list[str], pattern: DelayPattern, frames: int) -> int:
    """transformers' generate set up like DiaProcessor's generation mode; returns the steps it ran."""
    device = model.device
    input_ids, attention_mask = (t.to(device) for t in encode_text(texts))
    first = torch.full((len(texts), 1, VOCAB.num_codebooks), VOCAB.bos, dtype=torch.long)
    delay_mask = pattern.apply(first, bos=VOCAB.bos, pad=VOCAB.pad).to(device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=delay_mask,
        decoder_attention_mask=torch.ones(delay_mask.shape[:2], dtype=torch.long, device=device),
        max_new_tokens=pattern.decode_steps(frames),
        do_sample=True,
        guidance_scale=3.0,
        top_k=45,
    )
    return out.shape[1] - 1


def ours(model, texts, pattern, sampling, options) -> Callable[[], int]:
    return lambda: generate_codes(model, texts, pattern, VOCAB, sampling, options).decode_steps


def theirs(model, texts, pattern, frames) -> Callable[[], int]:
    return lambda: hf_generate(model, texts, pattern, frames)


def timed(run: Callable[[], int], repeats: int) -> float:
    """Seconds per step of the fastest of ``repeats`` calls, after a warm-up call (the bare step is
    timed the same way: the best pass, so a noisy machine's slow passes do not skew the ratio)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        steps = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


@torch.no_grad()
def bare_step_seconds(model, texts: list[str], steps: int) -> float:
    """The decoder and head alone, CFG's doubled rows, a static cache: seconds per step."""
    device = model.device
    input_ids, mask = (t.to(device) for t in encode_text(list(texts) + [None] * len(texts)))
    hidden = model.get_encoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
    column = torch.full((input_ids.shape[0], 1, VOCAB.num_codebooks), 7, dtype=torch.long, device=device)
    best = float("inf")
    for _ in range(3):  # the first pass warms up
        cache = new_cache(model, steps, input_ids.shape[1], static=True)
        start = time.perf_counter()
        for s in range(steps):
            position = torch.full((1, 1), s, dtype=torch.long, device=device)
            decoder_step(model, column, position, hidden, mask, cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny"])
    parser.add_argument("--patterns", nargs="+", default=["dia", "musicgen", "compressed"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--frames", type=int, default=172, help="max frames per clip (172 = 2 s of DAC)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--bandwidth-gbs", type=float, help="device memory bandwidth (default: known GPUs')")
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers' generate")
    add_results_option(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.bandwidth_gbs is None and args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(args.device)
        args.bandwidth_gbs = next((gbs for key, gbs in BANDWIDTH_GBS if key in name), None)

    rows = []
    for preset in args.presets:
        for name in args.patterns:
            pattern = DelayPattern.parse(name)
            with torch.device(args.device):  # initialised where it runs (Dia-1.6B initialises slowly on a CPU)
                model = build_model(preset, pattern, VOCAB).to(dtype).eval()
            decoder_bytes = sum(p.numel() * p.element_size() for p in model.get_decoder().parameters())
            decoder_bytes += sum(p.numel() * p.element_size() for p in model.logits_dense.parameters())
            for batch in args.batches:
                # a fresh compiler per cell, as a `diamusic generate --compile` process has: one process
                # collecting shapes would reach dynamo's recompile limit and fall back to eager
                torch._dynamo.reset()
                texts = [f"a folk tune number {i} in G major, 6/8, flute" for i in range(batch)]
                sampling = SamplingConfig(max_frames=args.frames)  # Dia's defaults: CFG 3, filter top-k 45
                step_s = {
                    label: timed(ours(model, texts, pattern, sampling, OPTIONS[label]), args.repeats)
                    for label in args.options
                }
                if not args.no_transformers:
                    step_s["transformers"] = timed(theirs(model, texts, pattern, args.frames), 1)
                bare = bare_step_seconds(model, texts, pattern.decode_steps(args.frames))
                params = count_parameters(model) / 1e6
                for label, seconds in step_s.items():
                    fps = batch / seconds
                    share = f"{decoder_bytes / seconds / (args.bandwidth_gbs * 1e9):.1%}" if args.bandwidth_gbs else "-"
                    rows.append(
                        f"| {preset} ({params:.1f}M) | {name} | {batch} | {label} | {fps:.1f} | "
                        f"{fps / FRAME_RATE:.2f} | {seconds / bare:.2f} | {share} |"
                    )
                    print(rows[-1], flush=True)  # a run stopped at a time limit keeps what it measured

    bandwidth = f", bandwidth {args.bandwidth_gbs:g} GB/s" if args.bandwidth_gbs else ""
    lines = [
        f"{args.dtype}, CFG 3 + top-k 45, up to {args.frames} frames, {args.repeats} timed call(s) per cell"
        f"{bandwidth}.",
        "",
        "| preset | pattern | batch | loop | frames/s | x real time | step / bare step | bandwidth share |",
        "|---|---|---:|---|---:|---:|---:|---:|",
        *rows,
    ]
    report(f"Generation speed, {args.device}", args.device, "\n".join(lines), args.results)


if __name__ == "__main__":
    main()
