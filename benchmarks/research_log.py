"""The research log's ablation model (`research-log` preset) on stereo DAC codes (9 codebooks x 1024
per side, 18 streams): its parameters, and on CPU the time and peak memory of one optimizer step of
the log's 600-frame crops at small batches (fp32; the GPU figure comes with benchmarks/gpu.sh).

Random codes and captions stand in for data: a step's cost does not depend on the values.

    .venv/bin/python benchmarks/research_log.py --batches 1 2
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from record import add_results_option, report

from diamusic.metrics import token_stats
from diamusic.model import build_model, count_parameters
from diamusic.patterns import DelayPattern
from diamusic.tokens import AudioVocab, build_decoder_batch, encode_text

CROP = 600  # the log's crop, in frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per batch size (after one)")
    add_results_option(parser)
    args = parser.parse_args()
    vocab = AudioVocab(1024, 9, audio_channels=2)
    pattern = DelayPattern.parse("musicgen", num_codebooks=9, audio_channels=2)
    model = build_model("research-log", pattern, vocab)
    embedding_and_head = model.model.decoder.embeddings.embed.weight.numel() + model.logits_dense.weight.numel()
    rows = {"parameters": count_parameters(model), "embedding_and_head": embedding_and_head}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    for batch in args.batches:
        codes = [torch.randint(0, 1024, (CROP, 18), generator=g) for _ in range(batch)]
        inputs, labels = build_decoder_batch(codes, pattern, vocab)
        ids, mask = encode_text(["piano, strings, calm, 90 bpm"] * batch)
        times = []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=inputs).logits
            loss_sum, stats = token_stats(logits, labels, vocab.codebook_size)
            (loss_sum / stats.count.sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
            if step:  # the first step allocates the optimizer state
                times.append(time.perf_counter() - start)
        rows[f"batch {batch}: seconds per step"] = round(sum(times) / len(times), 2)
        rows[f"batch {batch}: peak RSS GiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v:,} |\n" for k, v in rows.items())
    report("The research log's ablation model on stereo DAC codes (CPU, fp32)", "cpu", table, args.results)


if __name__ == "__main__":
    main()
