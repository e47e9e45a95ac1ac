"""Datasets of codec tokens: `prepare` (audio + captions -> shards on disk, once), reading them
back, and the collate that turns frames into Dia's delayed decoder layout.

A dataset directory holds::

    codec/                 the codec's codec.json (+ weights for the offline codec)
    shards/00012.npy       uint16 codes (frames, C) of every clip in shard 12, concatenated
    shards/00012.jsonl     one line per clip (id, text, frames, offset, source, split) or rejection
    index.jsonl            all clips, in shard order
    rejected.jsonl         every skipped input with its reason
    card.json              counts, hours, codec, frame rate, fingerprint

A shard is committed by renaming its .jsonl into place after its .npy, so a killed run never
leaves a shard that looks finished, and a re-run skips every committed shard.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diamusic.model import MAX_TEXT_BYTES, AudioVocab, encode_text
from diamusic.patterns import DelayPattern

IGNORE_INDEX = -100
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
ITEMS_PER_SHARD = 32
MIN_CLIP_SECONDS = 0.5
SILENCE_RMS = 1e-3  # about -60 dBFS
OPEN_SHARDS = 64  # memory maps kept open per dataset object
SPECTRAL_FIT_SECONDS = 1800.0  # audio the offline codec is fitted on, at most


class DataError(ValueError):
    """A dataset problem the user can fix; the message is one line."""


class Rejected(Exception):
    """An input that is skipped, with the reason recorded in rejected.jsonl."""


# --- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceItem:
    """One input (a file or a built-in melody); ``load`` returns (mono wave, sample rate, caption)."""

    id: str
    load: Callable[[], tuple[np.ndarray, int, str]]


def melody_items(limit: int | None, seed: int) -> list[SourceItem]:
    from diamusic import corpus

    render_rate = 22050  # the synth's partials stay far below 11 kHz

    def loader(melody: corpus.Melody) -> Callable[[], tuple[np.ndarray, int, str]]:
        def load() -> tuple[np.ndarray, int, str]:
            instrument = corpus.pick_instrument(melody, seed)
            wave = corpus.render(melody, render_rate, instrument, seed)
            return wave, render_rate, corpus.caption(melody, instrument)

        return load

    return [SourceItem(m.id, loader(m)) for m in corpus.iter_melodies(limit=limit, seed=seed)]


def _read_captions(folder: Path) -> dict[str, str]:
    """file name (relative to folder) -> caption, from metadata.jsonl or metadata.csv."""
    captions: dict[str, str] = {}
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.exists():
        for n, line in enumerate(jsonl.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                captions[str(row["file"])] = str(row["text"])
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{jsonl}:{n}: expected a JSON object with 'file' and 'text' ({exc})") from exc
    elif table.exists():
        try:
            with table.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    if "file" not in row or "text" not in row:
                        raise DataError(f"{table}: needs the columns 'file' and 'text'")
                    if row["text"] is not None:  # a short row: no caption here, maybe a sidecar
                        captions[row["file"]] = row["text"]
        except UnicodeDecodeError as exc:
            raise DataError(f"{table}: not UTF-8") from exc
    return captions


def folder_items(folder: Path) -> list[SourceItem]:
    if not folder.is_dir():
        raise DataError(f"source {str(folder)!r} is neither 'melodies' nor a folder")
    captions = _read_captions(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")

    def loader(path: Path, rel: str) -> Callable[[], tuple[np.ndarray, int, str]]:
        def load() -> tuple[np.ndarray, int, str]:
            text = captions.get(rel)
            sidecar = path.with_suffix(".txt")
            if text is None and sidecar.exists():
                try:
                    text = sidecar.read_bytes().decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise Rejected("caption file is not UTF-8") from exc
            if text is None or not str(text).strip():
                raise Rejected("no caption (metadata.jsonl/csv entry or sidecar .txt)")
            if path.stat().st_size == 0:
                raise Rejected("empty file")
            import soundfile as sf

            try:
                wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
            except Exception as exc:  # libsndfile raises several types for non-audio input
                raise Rejected(f"unreadable audio ({type(exc).__name__})") from exc
            return wave.mean(axis=1), int(rate), str(text).strip()

        return load

    return [SourceItem(str(p.relative_to(folder)), loader(p, str(p.relative_to(folder)))) for p in files]


def split_of(ids: Sequence[str], seed: int, eval_fraction: float) -> dict[str, str]:
    """Deterministic train/eval split by hash, over inputs (clips of one file never straddle it)."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    # at least one eval input whatever the fraction, so eval loss and the train/eval gap always exist
    n_eval = max(1, round(eval_fraction * len(ids))) if len(ids) > 1 else 0
    eval_ids = set(ranked[:n_eval])
    return {i: ("eval" if i in eval_ids else "train") for i in ids}


def clips_of(wave: np.ndarray, rate: int, max_seconds: float) -> Iterator[tuple[int, np.ndarray | str]]:
    """Split into clips of at most max_seconds; yields (k, clip) or (k, rejection reason)."""
    step = max(1, int(max_seconds * rate))
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


# --- prepare ------------------------------------------------------------------------------------


@dataclass
class PrepareResult:
    clips: int
    hours: float
    rejected: int
    seconds: float
    audio_seconds_encoded: float
    complete: bool
    captions_truncated: int = 0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _codec_for(
    codec_name: str, out: Path, items: list[SourceItem], split: dict[str, str], options: dict[str, Any]
) -> Any:
    from diamusic import codecs

    codec_dir = out / "codec"
    if (codec_dir / "codec.json").exists():
        return codecs.load_codec(codec_dir)
    if codec_name == "dac":
        codec = codecs.DacCodec(model=options.get("dac_model", "descript/dac_44khz"))
    elif codec_name == "spectral-rvq":
        # fitted on training inputs only, so eval reconstruction stays honest
        waves, rate, total = [], None, 0.0
        for item in items:
            if split[item.id] != "train" or total >= SPECTRAL_FIT_SECONDS:
                continue
            try:
                wave, sr, _ = item.load()
            except Rejected:
                continue
            if rate is not None and sr != rate:
                import librosa

                wave = librosa.resample(wave, orig_sr=sr, target_sr=rate)
            rate = rate or sr
            waves.append(wave)
            total += len(wave) / rate
        if not waves:
            raise DataError("no readable training audio to fit the spectral-rvq codec on")
        print(f"fitting spectral-rvq codec on {total / 60:.1f} min of training audio...", file=sys.stderr)
        codec = codecs.SpectralRVQCodec.fit(
            waves, rate, codebook_size=options.get("codebook_size", 1024), seed=options.get("seed", 0)
        )
    else:
        raise DataError(f"unknown codec {codec_name!r} (choose dac or spectral-rvq)")
    # several --shard processes may race here; the fit is deterministic, so any winner is correct
    tmp = out / f"codec.tmp{os.getpid()}"
    codec.save(tmp)
    try:
        os.rename(tmp, codec_dir)
        return codec
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return codecs.load_codec(codec_dir)


def _encode_shard(
    shard: int, items: list[SourceItem], split: dict[str, str], codec: Any, max_seconds: float
) -> tuple[np.ndarray, list[dict[str, Any]], float]:
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], np.ndarray, int]] = []
    for item in items:
        try:
            wave, rate, text = item.load()
        except Rejected as reason:
            rows.append({"id": item.id, "rejected": str(reason)})
            continue
        raw = text.encode("utf-8")
        truncated = len(raw) > MAX_TEXT_BYTES
        if truncated:
            text = raw[:MAX_TEXT_BYTES].decode("utf-8", errors="ignore")
        for k, clip in clips_of(wave, rate, max_seconds):
            clip_id = f"{item.id}#{k}"
            if isinstance(clip, str):
                rows.append({"id": clip_id, "rejected": clip})
                continue
            row = {"id": clip_id, "text": text, "source": item.id, "split": split[item.id]}
            if truncated:
                row["caption_truncated"] = True
            pending.append((row, clip, rate))
    audio_seconds = 0.0
    blocks: list[np.ndarray] = []
    offset = 0
    by_rate: dict[int, list[int]] = {}
    for n, (_, _, rate) in enumerate(pending):
        by_rate.setdefault(rate, []).append(n)
    encoded: dict[int, np.ndarray] = {}
    for rate, members in by_rate.items():
        for n, codes in zip(members, codec.encode_batch([pending[n][1] for n in members], rate), strict=True):
            encoded[n] = codes
    for n, (row, clip, rate) in enumerate(pending):
        codes = np.asarray(encoded[n])
        if codes.shape[0] == 0:
            rows.append({"id": row["id"], "rejected": "encodes to zero frames"})
            continue
        row.update(frames=int(codes.shape[0]), offset=offset, shard=shard)
        offset += codes.shape[0]
        blocks.append(codes.astype(np.uint16))
        rows.append(row)
        audio_seconds += len(clip) / rate
    array = np.concatenate(blocks) if blocks else np.zeros((0, codec.num_codebooks), dtype=np.uint16)
    return array, rows, audio_seconds


def prepare(
    source: str,
    codec: str,
    out: str | Path,
    limit: int | None = None,
    max_seconds: float = 30.0,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    eval_fraction: float = 0.05,
    codec_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Encode a source once into a dataset directory; resumable and splittable with ``shard``."""
    start = time.time()
    out = Path(out)
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise DataError(f"--shard {index}/{count}: expected i/n with 0 <= i < n")
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if max_seconds <= MIN_CLIP_SECONDS:
        raise DataError(f"--max-seconds must be > {MIN_CLIP_SECONDS}")
    items = melody_items(limit, seed) if source == "melodies" else folder_items(Path(source))
    if limit is not None:
        items = items[:limit]
    if not items:
        raise DataError(f"source {source!r} has no inputs")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    _check_same_job(
        out,
        {
            "source": source,
            "codec": codec,
            "limit": limit,
            "max_seconds": max_seconds,
            "seed": seed,
            "eval_fraction": eval_fraction,
            "codec_options": codec_options or {},
        },
    )
    split = split_of([i.id for i in items], seed, eval_fraction)
    codec_obj = _codec_for(codec, out, items, split, {**(codec_options or {}), "seed": seed})

    n_shards = (len(items) + ITEMS_PER_SHARD - 1) // ITEMS_PER_SHARD
    mine = [s for s in range(n_shards) if s % count == index]
    todo = [s for s in mine if not (out / "shards" / f"{s:05d}.jsonl").exists()]
    audio_seconds = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        size = [len(items[s * ITEMS_PER_SHARD : (s + 1) * ITEMS_PER_SHARD]) for s in range(n_shards)]
        bar = tqdm(
            total=sum(size[s] for s in mine),
            initial=sum(size[s] for s in mine if s not in todo),
            unit="input",
            desc="prepare",
            file=sys.stderr,
        )
    for s in todo:
        members = items[s * ITEMS_PER_SHARD : (s + 1) * ITEMS_PER_SHARD]
        array, rows, seconds = _encode_shard(s, members, split, codec_obj, max_seconds)
        audio_seconds += seconds
        base = out / "shards" / f"{s:05d}"
        with open(base.with_suffix(".npy.tmp"), "wb") as f:
            np.save(f, array)
        os.replace(base.with_suffix(".npy.tmp"), base.with_suffix(".npy"))
        _atomic_write(base.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode())
        if bar:
            bar.update(len(members))
    if bar:
        bar.close()

    complete = all((out / "shards" / f"{s:05d}.jsonl").exists() for s in range(n_shards))
    if complete:
        card = _finalize(out, n_shards, codec_obj, source)
        clips, hours, rejected = card["clips"], card["hours"], card["rejected"]
        truncated = card["captions_truncated"]
        if clips == 0:
            raise DataError(f"no usable clips: all {rejected} inputs were rejected (see {out}/rejected.jsonl)")
    else:
        clips = hours = rejected = truncated = 0
    elapsed = time.time() - start
    return PrepareResult(clips, hours, rejected, elapsed, audio_seconds, complete, truncated)


def _check_same_job(out: Path, job: dict[str, Any]) -> None:
    """Refuse to resume into a directory prepared with other settings (that would mix datasets)."""
    path = out / "job.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != job:
            diff = next(k for k in job if previous.get(k) != job[k])
            raise DataError(
                f"{out} was prepared with {diff}={previous.get(diff)!r}, not {job[diff]!r}: use another --out"
            )
    else:
        _atomic_write(path, json.dumps(job, indent=1).encode())


def _finalize(out: Path, n_shards: int, codec: Any, source: str) -> dict[str, Any]:
    digest = hashlib.sha256(codec.fingerprint.encode())
    clips, rejected, truncated = [], [], 0
    for s in range(n_shards):
        base = out / "shards" / f"{s:05d}"
        digest.update(base.with_suffix(".npy").read_bytes())
        for line in base.with_suffix(".jsonl").read_text().splitlines():
            row = json.loads(line)
            (rejected if "rejected" in row else clips).append(row)
            truncated += bool(row.get("caption_truncated"))
    for row in clips:
        digest.update(f"{row['id']}|{row['text']}|{row['frames']}|{row['split']}\n".encode())
    frames = np.array([r["frames"] for r in clips] or [0])
    seconds = frames / codec.frame_rate
    card = {
        "fingerprint": digest.hexdigest()[:16],
        "source": source,
        "clips": len(clips),
        "train_clips": sum(r["split"] == "train" for r in clips),
        "eval_clips": sum(r["split"] == "eval" for r in clips),
        "hours": float(seconds.sum() / 3600),
        "mean_seconds": float(seconds.mean()) if clips else 0.0,
        "rejected": len(rejected),
        "captions_truncated": truncated,
        "codec": {
            "name": codec.name,
            "fingerprint": codec.fingerprint,
            "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate,
            "num_codebooks": codec.num_codebooks,
            "codebook_size": codec.codebook_size,
        },
        "shards": n_shards,
    }
    _atomic_write(out / "index.jsonl", "".join(json.dumps(r) + "\n" for r in clips).encode())
    _atomic_write(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected).encode())
    _atomic_write(out / "card.json", json.dumps(card, indent=2).encode())
    return card


# --- reading a prepared dataset -----------------------------------------------------------------


class CodesDataset:
    """The clips of one split, read from memory-mapped shards."""

    def __init__(self, path: str | Path, split: str | None = "train") -> None:
        self.path = Path(path)
        card_path = self.path / "card.json"
        if not card_path.exists():
            raise DataError(f"{self.path} is not a prepared dataset (no card.json): run `diamusic prepare`")
        self.card: dict[str, Any] = json.loads(card_path.read_text())
        rows = [json.loads(line) for line in (self.path / "index.jsonl").read_text().splitlines()]
        self.rows = [r for r in rows if split is None or r["split"] == split]
        self._shards: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def fingerprint(self) -> str:
        return self.card["fingerprint"]

    @property
    def vocab(self) -> AudioVocab:
        codec = self.card["codec"]
        return AudioVocab(codebook_size=codec["codebook_size"], num_codebooks=codec["num_codebooks"])

    def __len__(self) -> int:
        return len(self.rows)

    def codes(self, i: int) -> np.ndarray:
        row = self.rows[i]
        shard = self._shards.get(row["shard"])
        if shard is None:
            # opened lazily so DataLoader workers each map the file themselves; each map holds a file
            # descriptor, so only the most recently used shards stay open
            shard = np.load(self.path / "shards" / f"{row['shard']:05d}.npy", mmap_mode="r")
            self._shards[row["shard"]] = shard
            if len(self._shards) > OPEN_SHARDS:
                self._shards.popitem(last=False)
        else:
            self._shards.move_to_end(row["shard"])
        return shard[row["offset"] : row["offset"] + row["frames"]]

    def text(self, i: int) -> str:
        return self.rows[i]["text"]


# --- collate ------------------------------------------------------------------------------------


def build_decoder_batch(
    codes: Sequence[torch.Tensor],
    pattern: DelayPattern,
    vocab: AudioVocab,
    eos_in_loss: bool = True,
    ends: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (T_i, C) per sample -> decoder inputs (B, S, C) and labels (B, C, S).

    Each sample is ``[BOS, frames..., EOS]`` then PAD, delayed by the pattern, so channel c's EOS
    lands ``delays[c]`` steps after channel 0's, exactly where generation expects it. Inputs are
    steps 0..S-1 and labels steps 1..S; BOS and PAD targets are ignored, so every real code and one
    EOS per channel count. A crop that stops before its clip ends (``ends[i]`` False) gets no EOS:
    the music goes on there. S = max(T_i) + 1 + max_delay.
    """
    longest = max(c.shape[0] for c in codes)
    frames = torch.full((len(codes), longest + 2, pattern.num_codebooks), vocab.pad, dtype=torch.long)
    frames[:, 0] = vocab.bos
    for i, c in enumerate(codes):
        frames[i, 1 : 1 + c.shape[0]] = torch.as_tensor(c, dtype=torch.long)
        if ends is None or ends[i]:
            frames[i, 1 + c.shape[0]] = vocab.eos
    steps = pattern.apply(frames, bos=vocab.bos, pad=vocab.pad)
    inputs, targets = steps[:, :-1], steps[:, 1:]
    ignored = (targets == vocab.pad) | (targets == vocab.bos)
    if not eos_in_loss:
        ignored |= targets == vocab.eos
    labels = targets.masked_fill(ignored, IGNORE_INDEX)
    return inputs.contiguous(), labels.transpose(1, 2).contiguous()


@dataclass(frozen=True)
class BatchPlan:
    """Which clips, crops and caption drops make up each step, as a pure function of the step.

    Sample n of the run (counted over steps, accumulation micro-batches and processes) is drawn
    from an epoch permutation seeded by (seed, epoch), and its crop offset and CFG drop from
    (seed, n). Any process, any DataLoader worker and any resumed run therefore agree on every
    batch without carrying sampler state; process r of w takes its slice of each global batch.
    """

    seed: int
    batch_size: int  # per process and micro-batch
    grad_accum: int
    max_frames: int
    cfg_dropout: float
    rank: int = 0
    world_size: int = 1

    def samples(self, step: int, micro: int, num_clips: int) -> list[tuple[int, int, bool]]:
        """(sample number n, clip index, drop caption) for this process's part of one micro-batch."""
        global_batch = self.batch_size * self.world_size
        first = ((step * self.grad_accum + micro) * global_batch) + self.rank * self.batch_size
        out = []
        for n in range(first, first + self.batch_size):
            epoch, position = divmod(n, num_clips)
            clip = int(_permutation(self.seed, epoch, num_clips)[position])
            drop = bool(np.random.default_rng([self.seed, n, 1]).random() < self.cfg_dropout)
            out.append((n, clip, drop))
        return out

    def crop(self, n: int, frames: int) -> int:
        if frames <= self.max_frames:
            return 0
        return int(np.random.default_rng([self.seed, n, 2]).integers(0, frames - self.max_frames + 1))


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    key = (seed, epoch, size)
    if key not in _PERMUTATIONS:
        _PERMUTATIONS.clear()  # one epoch at a time is all a run needs
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch, 0]).permutation(size)
    return _PERMUTATIONS[key]


def make_batch(
    dataset: CodesDataset,
    picks: Sequence[tuple[int, int, bool]],
    pattern: DelayPattern,
    max_frames: int,
    crop: Callable[[int, int], int] | None = None,
    eos_in_loss: bool = True,
) -> dict[str, torch.Tensor]:
    """Model inputs for (sample number, clip, drop caption) picks; crops at 0 when ``crop`` is None."""
    codes, ends, texts = [], [], []
    for n, clip, drop in picks:
        full = dataset.codes(clip)
        start = crop(n, full.shape[0]) if crop else 0
        piece = full[start : start + max_frames]
        codes.append(torch.from_numpy(piece.astype(np.int64)))
        ends.append(start + piece.shape[0] == full.shape[0])
        texts.append(None if drop else dataset.text(clip))
    decoder_input_ids, labels = build_decoder_batch(codes, pattern, dataset.vocab, eos_in_loss, ends)
    input_ids, attention_mask = encode_text(texts)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }


class StepBatches(torch.utils.data.Dataset):
    """Item k = the micro-batches of training step ``start + k`` for this process (DataLoader-ready)."""

    def __init__(
        self,
        dataset: CodesDataset,
        plan: BatchPlan,
        pattern: DelayPattern,
        start: int,
        steps: int,
        eos_in_loss: bool = True,
    ) -> None:
        if len(dataset) == 0:
            raise DataError(f"{dataset.path} has no training clips")
        self.dataset, self.plan, self.pattern = dataset, plan, pattern
        self.start, self.steps, self.eos_in_loss = start, steps, eos_in_loss

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __getitem__(self, k: int) -> list[dict[str, torch.Tensor]]:
        step = self.start + k
        return [
            make_batch(
                self.dataset,
                self.plan.samples(step, m, len(self.dataset)),
                self.pattern,
                self.plan.max_frames,
                self.plan.crop,
                self.eos_in_loss,
            )
            for m in range(self.plan.grad_accum)
        ]


def fixed_batches(
    dataset: CodesDataset,
    batch_size: int,
    num_batches: int,
    pattern: DelayPattern,
    max_frames: int,
    seed: int = 0,
    eos_in_loss: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Deterministic evaluation batches: a seeded subset of clips, cropped from their start, captions kept."""
    order = np.random.default_rng([seed, 7]).permutation(len(dataset))[: batch_size * num_batches]
    batches = []
    for b in range(0, len(order), batch_size):
        picks = [(0, int(i), False) for i in order[b : b + batch_size]]
        batches.append(make_batch(dataset, picks, pattern, max_frames, None, eos_in_loss))
    return batches


# --- inspect ------------------------------------------------------------------------------------


def inspect(path: str | Path, png: str | None = None) -> dict[str, Any]:
    """Counts, duration histogram and per-codebook code usage (perplexity of the code histogram)."""
    data = CodesDataset(path, split=None)
    card, vocab = data.card, data.vocab
    frame_rate = card["codec"]["frame_rate"]
    seconds = np.array([r["frames"] / frame_rate for r in data.rows])
    counts = np.zeros((vocab.num_codebooks, vocab.codebook_size), dtype=np.int64)
    for shard in sorted({r["shard"] for r in data.rows}):
        codes = np.load(data.path / "shards" / f"{shard:05d}.npy", mmap_mode="r")
        for c in range(vocab.num_codebooks):
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
        "duration_histogram": {
            f"{lo:g}-{hi:g}s" if np.isfinite(hi) else f">{lo:g}s": int(n)
            for lo, hi, n in zip(edges[:-1], edges[1:], hist, strict=True)
        },
        "codebook_perplexity": [float(np.exp(h)) for h in entropy],
        "codebook_used": [int((counts[c] > 0).sum()) for c in range(vocab.num_codebooks)],
    }
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
        a.hist(seconds, bins=30, color="#4477aa")
        a.set_xlabel("clip seconds")
        a.set_ylabel("clips")
        b.bar(range(vocab.num_codebooks), report["codebook_perplexity"], color="#aa7744")
        b.set_xlabel("codebook")
        b.set_ylabel(f"code perplexity (max {vocab.codebook_size})")
        fig.suptitle(f"{data.path.name}: {card['clips']} clips, {card['hours']:.2f} h, codec {card['codec']['name']}")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
    return report
