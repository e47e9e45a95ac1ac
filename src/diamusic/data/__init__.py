"""Datasets of codec tokens: `prepare` (audio + captions -> shards on disk, once), reading them back
as training batches, and `inspect`.

A dataset directory holds::

    job.json               the prepare settings (a re-run with other settings is refused)
    codec/                 the codec's codec.json (+ weights for the offline codec)
    shards/00012.npy       uint16 codes (frames, C) of every clip in shard 12, concatenated
    shards/00012.jsonl     one line per clip (id, text, frames, offset, source, split, final) or rejection
    index.jsonl            all clips, in shard order
    rejected.jsonl         every skipped input with its reason
    card.json              format, counts, hours, codec, frame rate, fingerprint

A *clip* is one piece of a source cut at most ``max_seconds`` long; ``final`` marks the last
piece of its source, the only one whose end is the end of the music (and so the only place EOS
may be learnt). Modules: ``sources`` (inputs and captions), ``prepare`` (sharded encoding),
``dataset`` (reading clips, crops and batches), ``inspect`` (a report on a dataset).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diamusic.errors import DiamusicError
from diamusic.patterns import AUDIO_CHANNELS

# 2: clips carry ``final``; a dataset without it would put EOS at every cut
FORMAT = 2
CARD_FILE = "card.json"
CODEC_KEYS = ("name", "fingerprint", "sample_rate", "frame_rate", "num_codebooks", "codebook_size")


class DataError(DiamusicError):
    """A dataset problem the user can fix; the message is one line."""


def read_json(path: Path) -> Any:
    """One of a dataset's JSON files; a damaged one (edited, or cut short by a full disk) is a DataError."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({type(exc).__name__})") from exc


def read_card(dataset: str | Path) -> dict[str, Any]:
    """A prepared dataset's card, checked for what readers of the dataset use."""
    path = Path(dataset) / CARD_FILE
    if not path.exists():
        raise DataError(f"{dataset} is not a prepared dataset (no {CARD_FILE}): prepare it first")
    card = read_json(path)
    if not isinstance(card, dict):
        raise DataError(f"{path}: expected a JSON object, got a {type(card).__name__}")
    if card.get("format", 1) != FORMAT:
        # older datasets do not say which clip ends its source: training would put EOS at every cut
        raise DataError(
            f"{dataset} was prepared by an older diamusic (dataset format {card.get('format', 1)}, "
            f"need {FORMAT}): run the same prepare again to update it"
        )
    codec = card.get("codec")
    missing = [k for k in ("fingerprint", "codec") if k not in card]
    missing += [f"codec.{k}" for k in CODEC_KEYS if isinstance(codec, dict) and k not in codec]
    if missing or not isinstance(codec, dict):
        raise DataError(f"{path}: no {', '.join(missing) or 'codec object'}: run the same prepare again")
    return card


def shard_file(dataset: Path, number: int, suffix: str = ".npy") -> Path:
    """Shard `number`'s codes (``.npy``) or rows (``.jsonl``) in a dataset directory."""
    return dataset / "shards" / f"{number:05d}{suffix}"


def fingerprint(codec_fingerprint: str, shards: Iterable[Path], rows: Iterable[dict[str, Any]]) -> str:
    """A dataset's fingerprint: its codec, every byte of its shards in order, and what each clip is."""
    digest = hashlib.sha256(codec_fingerprint.encode())
    for shard in shards:
        with shard.open("rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    for row in rows:
        digest.update(f"{row['id']}|{row['text']}|{row['frames']}|{row['split']}|{row['final']}\n".encode())
    return digest.hexdigest()[:16]


def card_layout(dataset: str | Path) -> tuple[int, int] | None:
    """(codebooks, audio channels) as a dataset's card records them; None where there is no card (yet)."""
    if not (Path(dataset) / CARD_FILE).exists():
        return None
    card = read_json(Path(dataset) / CARD_FILE)
    codec = card.get("codec") if isinstance(card, dict) else None
    codebooks = codec.get("num_codebooks") if isinstance(codec, dict) else None
    if isinstance(codebooks, bool) or not isinstance(codebooks, int):
        raise DataError(f"{Path(dataset) / CARD_FILE}: no codebook count (codec.num_codebooks)")
    channels = codec.get("audio_channels", 1)
    if channels not in AUDIO_CHANNELS.values() or isinstance(channels, bool):
        raise DataError(f"{Path(dataset) / CARD_FILE}: codec.audio_channels is {channels!r}, expected 1 or 2")
    return codebooks, channels
