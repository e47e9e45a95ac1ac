"""Inputs of `prepare`: the built-in melodies or a folder of audio with captions (Hugging Face
datasets are `diamusic.data.hf`'s, read by the same rules), the train/eval split, and the cutting of
long audio into clips."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diamusic.data import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MIN_CLIP_SECONDS = 0.5
SILENCE_RMS = 1e-3  # about -60 dBFS


class Rejected(Exception):
    """An input that is skipped, with the reason recorded in rejected.jsonl."""


Note = tuple[float, float, float]  # (midi pitch, start s, duration s)


@dataclass(frozen=True)
class Loaded:
    """One input as audio: a wave, (samples,) or (samples, audio channels), and its caption; the
    built-in corpus also knows the melody it played (the reference for melody metrics) and what it
    rendered (tags for inspection)."""

    wave: np.ndarray
    sample_rate: int
    caption: str
    melody: tuple[Note, ...] | None = None
    tags: dict[str, Any] | None = None
    caption_derived: bool = False  # made from the file's path: it had none of its own
    auto_tags: tuple[str, ...] = ()  # tags `prepare` added from the audio (diamusic.tagging)


@dataclass(frozen=True)
class SourceItem:
    """One input (a file or a built-in melody), loaded on demand."""

    id: str
    load: Callable[[], Loaded]


def melody_items(
    limit: int | None, seed: int, renderer: str, texture: str, audio_channels: int = 1
) -> list[SourceItem]:
    from diamusic import corpus, render

    render.check_options(renderer, texture)  # before any melody is parsed or anything written

    def loader(melody: corpus.Melody) -> Callable[[], Loaded]:
        def load() -> Loaded:
            r = render.render_piece(melody, seed, renderer, texture, audio_channels)
            return Loaded(r.wave, r.sample_rate, r.caption, r.melody, r.tags)

        return load

    return [SourceItem(m.id, loader(m)) for m in corpus.iter_melodies(limit=limit, seed=seed)]


FILE_COLUMNS = ("file", "file_name")  # ours, and Hugging Face's audiofolder's


def _read_captions(folder: Path, text_column: str = "text") -> tuple[dict[str, str], int]:
    """file name (relative to folder) -> caption, from metadata.jsonl or metadata.csv (the file in a
    FILE_COLUMNS column, the caption in ``text_column``), and how many rows repeat a file named before
    (the last one counts)."""
    rows: list[tuple[str, str]] = []
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    expected = f"'file' (or 'file_name') and {text_column!r}"
    if jsonl.exists():
        for n, line in enumerate(jsonl.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                name = next(row[c] for c in FILE_COLUMNS if c in row)
                rows.append((str(name), str(row[text_column])))
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, StopIteration) as exc:
                raise DataError(f"{jsonl}:{n}: expected a JSON object with {expected} ({exc!r})") from exc
    elif table.exists():
        try:
            with table.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    name = next((row[c] for c in FILE_COLUMNS if c in row), None)
                    if name is None or text_column not in row:
                        raise DataError(f"{table}: needs the columns {expected}")
                    if row[text_column] is not None:  # a short row: no caption here, maybe a sidecar
                        rows.append((name, row[text_column]))
        except UnicodeDecodeError as exc:
            raise DataError(f"{table}: not UTF-8") from exc
    captions = dict(rows)
    return captions, len(rows) - len(captions)


def path_caption(relative: str) -> str:
    """Tags from a file's place in its folder, for a file without a caption: ``jazz/solo piano/take_3.wav``
    gives "jazz, solo piano, take". Words with digits (track numbers, takes, dates) are left out."""
    tags = []
    for part in Path(relative).with_suffix("").parts:
        words = [w for w in re.split(r"[\s_\-.]+", part.lower()) if w and not any(c.isdigit() for c in w)]
        if words and " ".join(words) not in tags:
            tags.append(" ".join(words))
    return ", ".join(tags)


def caption_of(text: Any, path: str | None, require_caption: bool, where: str) -> tuple[str, bool]:
    """An input's caption and whether it came from its ``path`` (it had none of its own, and captions
    are not required); Rejected when there is none either way (``where``: where its own would be)."""
    derived = text is None or not str(text).strip()
    if derived:
        text = "" if require_caption or not path else path_caption(path)
    if not text:
        raise Rejected(f"no caption ({where})" + ("" if require_caption else " and no words in its path"))
    return str(text).strip(), derived


def read_wave(audio: Path | bytes) -> tuple[np.ndarray, int]:
    """A file's audio, or the bytes of one (as a Hugging Face dataset holds it): (samples,) for mono,
    else (samples, audio channels), and its sample rate; Rejected when it cannot be used."""
    if (len(audio) if isinstance(audio, bytes) else audio.stat().st_size) == 0:
        raise Rejected("empty file")
    import soundfile as sf

    try:
        wave, rate = sf.read(io.BytesIO(audio) if isinstance(audio, bytes) else str(audio), dtype="float32",
                             always_2d=True)  # fmt: skip
    except Exception as exc:  # libsndfile raises several types for non-audio input
        raise Rejected(f"unreadable audio ({type(exc).__name__})") from exc
    if not np.isfinite(wave).all():  # float files can hold NaN/inf: they would poison a codec fit
        raise Rejected("non-finite samples (NaN or inf)")
    return (wave if wave.shape[1] > 1 else wave[:, 0]), int(rate)


def folder_items(folder: Path, require_caption: bool = False, text_column: str = "text") -> list[SourceItem]:
    """A folder's audio files (any depth), each with its caption: a metadata.jsonl/csv row (its
    ``text_column``; a Hugging Face audiofolder is one) or a sidecar .txt, else tags from its path
    (`path_caption`) unless ``require_caption``."""
    if not folder.is_dir():
        raise DataError(f"source {str(folder)!r} is neither 'melodies' nor a folder")
    captions, repeated = _read_captions(folder, text_column)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    orphans = len(captions.keys() - {str(p.relative_to(folder)) for p in files})
    if repeated or orphans:  # likely a metadata file out of step with the folder: say so, keep going
        print(
            f"warning: {folder}'s metadata: {repeated} rows repeat a file named before (the last one counts), "
            f"{orphans} name no audio file in the folder",
            file=sys.stderr,
        )

    def loader(path: Path, rel: str) -> Callable[[], Loaded]:
        def load() -> Loaded:
            text = captions.get(rel)
            sidecar = path.with_suffix(".txt")
            if text is None and sidecar.exists():
                try:
                    text = sidecar.read_bytes().decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise Rejected("caption file is not UTF-8") from exc
            caption, derived = caption_of(text, rel, require_caption, "metadata.jsonl/csv entry or sidecar .txt")
            wave, rate = read_wave(path)
            return Loaded(wave, rate, caption, caption_derived=derived)

        return load

    return [SourceItem(str(p.relative_to(folder)), loader(p, str(p.relative_to(folder)))) for p in files]


CORPUS_DEFAULTS = {"renderer": "soundfont", "texture": "mixed"}


def corpus_options(source: str, corpus: dict[str, str] | None) -> dict[str, str] | None:
    """How the built-in melodies are rendered (defaults filled in); None for a folder of audio."""
    if source == "melodies":
        return {**CORPUS_DEFAULTS, **(corpus or {})}
    if corpus:
        raise DataError(f"{' and '.join(corpus)} only apply to the built-in melodies, not to a folder of audio")
    return None


def source_items(
    source: str,
    limit: int | None,
    seed: int,
    corpus: dict[str, str] | None,
    audio_channels: int = 1,
    require_caption: bool = False,
    text_column: str = "text",
) -> list[SourceItem]:
    """'melodies' (the built-in corpus, rendered as ``corpus`` says, in the dataset's audio channels) or
    a folder of audio files with captions."""
    if corpus is not None:
        items = melody_items(limit, seed, **corpus, audio_channels=audio_channels)
    else:
        items = folder_items(Path(source), require_caption, text_column)
    items = items[:limit] if limit is not None else items
    if not items:
        raise DataError(f"source {source!r} has no inputs")
    return items


def to_audio_channels(wave: np.ndarray, audio_channels: int) -> tuple[np.ndarray, bool]:
    """A wave laid out for a dataset: (samples,) for mono (several audio channels averaged), (samples,
    2) for stereo (a mono wave copied to both sides, as the research log does); and whether it was
    copied."""
    if audio_channels == 1:
        return (wave.mean(axis=1) if wave.ndim == 2 else wave), False
    if wave.ndim == 1:
        return np.stack([wave, wave], axis=1), True
    if wave.shape[1] != 2:
        raise Rejected(f"{wave.shape[1]} audio channels: a stereo dataset takes mono or stereo audio")
    return wave, False


def split_of(ids: Sequence[str], seed: int, eval_fraction: float) -> dict[str, str]:
    """Deterministic train/eval split by hash, over inputs (clips of one file never straddle it)."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    # at least one eval input whatever the fraction, so eval loss and the train/eval gap always exist
    n_eval = max(1, round(eval_fraction * len(ids))) if len(ids) > 1 else 0
    eval_ids = set(ranked[:n_eval])
    return {i: ("eval" if i in eval_ids else "train") for i in ids}


def clip_samples(max_seconds: float, rate: int) -> int:
    return max(1, int(max_seconds * rate))


def clips_of(wave: np.ndarray, rate: int, max_seconds: float) -> Iterator[tuple[int, np.ndarray | str]]:
    """Split into clips of at most max_seconds; yields (k, clip) or (k, rejection reason)."""
    step = clip_samples(max_seconds, rate)
    for k, start in enumerate(range(0, max(len(wave), 1), step)):
        clip = wave[start : start + step]
        if len(clip) < MIN_CLIP_SECONDS * rate:
            yield k, f"too short ({len(clip) / rate:.2f} s < {MIN_CLIP_SECONDS} s)"
        elif not np.isfinite(clip).all():
            yield k, "non-finite samples"
        elif float(np.sqrt(np.mean(clip.astype(np.float64) ** 2))) < SILENCE_RMS:
            yield k, "silent"
        else:
            yield k, clip


def notes_in(notes: Sequence[Note], start: float, end: float) -> list[list[float]]:
    """The notes sounding in [start, end), cut to it, with times relative to ``start``."""
    out = []
    for pitch, onset, duration in notes:
        a, b = max(onset, start), min(onset + duration, end)
        if b > a:
            out.append([round(pitch, 3), round(a - start, 4), round(b - a, 4)])
    return out
