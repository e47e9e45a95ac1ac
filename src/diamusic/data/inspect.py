"""`inspect`: what a prepared dataset holds (counts, durations, per-codebook code usage, and for the
built-in corpus the mix of instruments, textures, keys and tempos)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diamusic.data import shard_file
from diamusic.data.dataset import CodesDataset, check_code_range, verify


def inspect(path: str | Path, png: str | None = None, check: bool = False) -> dict[str, Any]:
    """Counts, duration histogram and per-codebook code usage (perplexity of the code histogram).

    With ``check``, every byte is verified first (`verify`: the fingerprint recomputed from the shards).
    """
    if check:
        verify(path)
    data = CodesDataset(path, split=None)
    card, vocab = data.card, data.vocab
    frame_rate = card["codec"]["frame_rate"]
    seconds = data.frames / frame_rate
    counts = np.zeros((vocab.num_streams, vocab.codebook_size), dtype=np.int64)
    for shard in range(card["shards"]):
        codes = np.load(shard_file(data.path, shard), mmap_mode="r")
        check_code_range(shard_file(data.path, shard), codes, vocab.codebook_size)
        for c in range(vocab.num_streams):
            counts[c] += np.bincount(codes[:, c], minlength=vocab.codebook_size)
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)
    edges = np.array([0, 2, 5, 10, 20, 30, 60, np.inf])
    hist, _ = np.histogram(seconds, bins=edges)
    report = {
        "clips": card["clips"],
        "train_clips": card["train_clips"],
        "eval_clips": card["eval_clips"],
        "hours": card["hours"],
        "rejected": card["rejected"],
        "codec": card["codec"]["name"],
        "fingerprint": card["fingerprint"],
        "verified": check,
        "duration_histogram": {
            f"{lo:g}-{hi:g}s" if np.isfinite(hi) else f">{lo:g}s": int(n)
            for lo, hi, n in zip(edges[:-1], edges[1:], hist, strict=True)
        },
        "codebook_perplexity": [float(np.exp(h)) for h in entropy],
        "codebook_used": [int((counts[c] > 0).sum()) for c in range(vocab.num_streams)],
        "audio_channels": vocab.audio_channels,
        "mix": mix(data.rows()),
    }
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
        a.hist(seconds, bins=30, color="#4477aa")
        a.set_xlabel("clip seconds")
        a.set_ylabel("clips")
        b.bar(range(vocab.num_streams), report["codebook_perplexity"], color="#aa7744")
        b.set_xlabel("codebook")
        b.set_ylabel(f"code perplexity (max {vocab.codebook_size})")
        fig.suptitle(f"{data.path.name}: {card['clips']} clips, {card['hours']:.2f} h, codec {card['codec']['name']}")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
    return report


TEMPO_BINS = (0, 70, 90, 110, 130, 160, 1000)  # bpm


def mix(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Clips per caption source (given, from the path, with tags from the audio), and per texture, melody
    instrument, accompaniment instrument, key and tempo band (from the tags the built-in corpus records;
    empty for a folder of audio), most common first."""
    rows = list(rows)
    tagged = [r["tags"] for r in rows if "tags" in r]
    counts: dict[str, Counter] = {
        "captions": Counter(_caption_source(r) for r in rows),
        "texture": Counter(t["texture"] for t in tagged),
        "melody_instrument": Counter(t["melody_instrument"] for t in tagged),
        "accompaniment": Counter(a for t in tagged for a in t["accompaniment"]),
        "key": Counter(t["key"] for t in tagged),
        "tempo_bpm": Counter(_band(t["tempo_bpm"]) for t in tagged),
    }
    return {name: dict(c.most_common()) for name, c in counts.items() if c}


def _caption_source(row: dict[str, Any]) -> str:
    source = "from the path" if row.get("caption_derived") else "given"
    return source + (" + tags from the audio" if row.get("auto_tags") else "")


def _band(bpm: float) -> str:
    for lo, hi in zip(TEMPO_BINS[:-1], TEMPO_BINS[1:], strict=True):
        if lo <= bpm < hi:
            return f"{lo}-{hi}" if hi < TEMPO_BINS[-1] else f">={lo}"
    return f">={TEMPO_BINS[-1]}"
