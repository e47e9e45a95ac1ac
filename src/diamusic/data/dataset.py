"""Reading a prepared dataset back: clips from memory-mapped shards, and the batches of training
and evaluation (crops, CFG caption drops, the decoder layout of `diamusic.tokens`)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diamusic.data import DataError, fingerprint, read_card, shard_file
from diamusic.errors import first_line
from diamusic.patterns import DelayPattern
from diamusic.tokens import AudioVocab, build_decoder_batch, encode_text

OPEN_SHARDS = 64  # memory maps kept open per dataset object
INDEX_FILE = "index.jsonl"
ROW_KEYS = ("id", "text", "frames", "offset", "shard", "split", "final")  # what reading a clip needs


class CodesDataset:
    """The clips of one split, read from memory-mapped shards.

    What reading a clip needs is held compactly (arrays, and the captions); the rest of a clip's
    row (tags, the reference melody's notes) is read from ``index.jsonl`` when asked for (`row`,
    `rows`), so a large dataset costs every process and loader worker little memory.
    """

    def __init__(self, path: str | Path, split: str | None = "train") -> None:
        self.path = Path(path)
        self.card: dict[str, Any] = read_card(self.path)
        lines, texts, numbers, sources = [], [], [], []
        known: dict[str, int] = {}
        for start, row in _scan_index(self.path / INDEX_FILE):
            if split is not None and row["split"] != split:
                continue
            lines.append(start)
            texts.append(row["text"])
            numbers.append((row["frames"], row["offset"], row["shard"], row["final"]))
            sources.append(known.setdefault(row.get("source", row["id"]), len(known)))
        table = np.array(numbers, dtype=np.int64).reshape(-1, 4)
        self.frames, self._offsets, self._shard_of, self._final = table[:, 0], table[:, 1], table[:, 2], table[:, 3] > 0
        self.sources = np.array(sources, dtype=np.int64)  # each clip's source, numbered in order of appearance
        self._texts = texts
        self._lines = np.array(lines, dtype=np.int64)  # where each clip's row starts in index.jsonl
        self._shards: OrderedDict[int, np.ndarray] = OrderedDict()
        self._check_shards()

    def _check_shards(self) -> None:
        """Every shard a clip needs is there, whole, and long enough for its clips (headers only)."""
        ends = self._offsets + self.frames
        for number in np.unique(self._shard_of):
            path = shard_file(self.path, int(number))
            rows = shard_rows(path, self.vocab.num_streams)
            longest = int(ends[self._shard_of == number].max())
            if longest > rows:
                raise DataError(f"{path}: holds {rows} frames, the index needs {longest}: {DAMAGED}")

    @property
    def fingerprint(self) -> str:
        return self.card["fingerprint"]

    @property
    def vocab(self) -> AudioVocab:
        return AudioVocab.of_codec(self.card["codec"])

    def __len__(self) -> int:
        return len(self._texts)

    def codes(self, i: int) -> np.ndarray:
        number = int(self._shard_of[i])
        shard = self._shards.get(number)
        if shard is None:
            # opened lazily so DataLoader workers each map the file themselves; each map holds a file
            # descriptor, so only the most recently used shards stay open
            shard = np.load(shard_file(self.path, number), mmap_mode="r")
            self._shards[number] = shard
            if len(self._shards) > OPEN_SHARDS:
                self._shards.popitem(last=False)
        else:
            self._shards.move_to_end(number)
        offset = int(self._offsets[i])
        clip = shard[offset : offset + int(self.frames[i])]
        check_code_range(shard_file(self.path, number), clip, self.vocab.codebook_size)
        return clip

    def text(self, i: int) -> str:
        return self._texts[i]

    def final(self, i: int) -> bool:
        """Whether clip i is the last piece of its source, so that its end is the music's end."""
        return bool(self._final[i])

    def row(self, i: int) -> dict[str, Any]:
        """Clip i's whole row of the index (id, source, tags, melody notes, ...), read from disk."""
        with (self.path / INDEX_FILE).open("rb") as f:
            f.seek(int(self._lines[i]))
            return json.loads(f.readline())

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every clip's whole row, in order, read from disk one at a time."""
        with (self.path / INDEX_FILE).open("rb") as f:
            for start in self._lines:
                f.seek(int(start))
                yield json.loads(f.readline())


DAMAGED = "the dataset is damaged; run the same prepare again"


def shard_rows(path: Path, codebooks: int) -> int:
    """The frames a shard file holds, after checking from its header that it is whole and of codes."""
    try:
        with path.open("rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            start = f.tell()
    except FileNotFoundError:
        raise DataError(f"{path}: missing: {DAMAGED}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a shard of codes ({first_line(exc)}): {DAMAGED}") from exc
    if len(shape) != 2 or shape[1] != codebooks or fortran or dtype.kind != "u":
        raise DataError(f"{path}: holds {dtype} {shape}, expected (frames, {codebooks}) codes: {DAMAGED}")
    if path.stat().st_size < start + shape[0] * shape[1] * dtype.itemsize:
        raise DataError(f"{path}: truncated ({path.stat().st_size} bytes for {shape[0]} frames): {DAMAGED}")
    return int(shape[0])


def check_code_range(path: Path, codes: np.ndarray, codebook_size: int) -> None:
    """Codes read from shard `path` are all below the codebook size (a damaged shard's may not be)."""
    if codes.size and (top := int(codes.max())) >= codebook_size:
        raise DataError(f"{path}: holds code {top}, the codebook size is {codebook_size}: {DAMAGED}")


def verify(path: str | Path) -> str:
    """Check every byte of a dataset: each shard whole and its codes in range, and the fingerprint
    recomputed from the shards and index equal to the card's. Returns the fingerprint."""
    data = CodesDataset(path, split=None)
    shards = [shard_file(data.path, s) for s in range(int(data.card.get("shards", 0)))]
    for shard in shards:
        shard_rows(shard, data.vocab.num_streams)
        check_code_range(shard, np.load(shard, mmap_mode="r"), data.vocab.codebook_size)
    found = fingerprint(data.card["codec"]["fingerprint"], shards, data.rows())
    if found != data.fingerprint:
        raise DataError(
            f"{data.path}: its shards or index changed since prepare (fingerprint {found}, the card says "
            f"{data.fingerprint}): {DAMAGED}"
        )
    return found


def _scan_index(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, row) of each line of an index, each checked to hold what reading a clip needs."""
    start = 0
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                raise DataError(f"{path}:{n}: not valid JSON ({reason}): run the same prepare again") from exc
            if not isinstance(row, dict) or any(k not in row for k in ROW_KEYS):
                raise DataError(f"{path}:{n}: expected a clip with {', '.join(ROW_KEYS)}: run the same prepare again")
            yield start, row
            start += len(line)


@dataclass(frozen=True)
class BatchPlan:
    """Which clips, crops and caption drops make up each step, as a pure function of the step.

    Sample n of the run (counted over optimizer steps, accumulation micro-batches and processes) is
    drawn from an epoch permutation seeded by (seed, epoch), and its crop and CFG drop from
    (seed, n). Any process, any DataLoader worker and any resumed run therefore agree on every
    batch without carrying sampler state; process r of w takes its slice of each global batch.
    """

    seed: int
    batch_size: int  # per process and micro-batch
    grad_accum: int
    crop_frames: int
    cfg_dropout: float
    # share of crops of a final clip placed to end at its end: a random crop of a long clip rarely
    # reaches the end, so without them the model would almost never see where music stops
    eos_crop_share: float = 0.0
    tag_dropout: float = 0.0
    tag_shuffle: bool = False
    tag_limit: int = 0
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

    def caption(self, n: int, text: str) -> str:
        """Sample n's caption: a tag list (`tag_list`) varied as the plan says, drawn from (seed, n)
        like the crop; a caption that is a sentence is kept as it is."""
        tags = tag_list(text)
        if tags is None or not (self.tag_dropout or self.tag_shuffle or self.tag_limit):
            return text
        rng = np.random.default_rng([self.seed, n, 4])
        if self.tag_dropout:
            kept = [t for t in tags if rng.random() >= self.tag_dropout]
            tags = kept or [tags[int(rng.integers(len(tags)))]]
        if self.tag_shuffle:
            tags = [tags[i] for i in rng.permutation(len(tags))]
        return ", ".join(tags[: self.tag_limit or None])

    def crop(self, n: int, frames: int, final: bool) -> int:
        """The first frame of sample n's crop of a clip of ``frames`` frames."""
        if frames <= self.crop_frames:
            return 0
        if final and np.random.default_rng([self.seed, n, 3]).random() < self.eos_crop_share:
            return frames - self.crop_frames
        return int(np.random.default_rng([self.seed, n, 2]).integers(0, frames - self.crop_frames + 1))


TAG_WORDS = 5  # a comma-separated part longer than this is prose, not a tag


def tag_list(text: str) -> list[str] | None:
    """The tags of a tag-style caption ("piano, calm, 90 bpm"); None for a sentence, which tag options
    must leave whole (its commas are not tag boundaries): one with a period, a parenthesis or a part of
    more than TAG_WORDS words."""
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if len(tags) < 2 or any(c in text for c in ".()") or any(len(t.split()) > TAG_WORDS for t in tags):
        return None
    return tags


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
    crop_frames: int,
    plan: BatchPlan | None = None,
    eos_in_loss: bool = True,
) -> dict[str, torch.Tensor]:
    """Model inputs for (sample number, clip, drop caption) picks, cropped by ``plan`` (at 0 without one).

    ``ends`` (B,) says which samples end with EOS: those whose crop reaches the end of a final clip.
    """
    codes, ends, texts = [], [], []
    for n, clip, drop in picks:
        full = dataset.codes(clip)
        final = dataset.final(clip)
        start = plan.crop(n, full.shape[0], final) if plan else 0
        piece = full[start : start + crop_frames]
        codes.append(torch.from_numpy(piece.astype(np.int64)))
        ends.append(final and start + piece.shape[0] == full.shape[0])
        text = dataset.text(clip)
        texts.append(None if drop else plan.caption(n, text) if plan else text)
    decoder_input_ids, labels = build_decoder_batch(codes, pattern, dataset.vocab, eos_in_loss, ends)
    input_ids, attention_mask = encode_text(texts)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
        "ends": torch.tensor(ends),
    }


class StepBatches(torch.utils.data.Dataset):
    """Item k = the micro-batches of optimizer step ``start + k`` for this process (DataLoader-ready)."""

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
                self.plan.crop_frames,
                self.plan,
                self.eos_in_loss,
            )
            for m in range(self.plan.grad_accum)
        ]


def fixed_batches(
    dataset: CodesDataset,
    batch_size: int,
    num_batches: int,
    pattern: DelayPattern,
    crop_frames: int,
    seed: int = 0,
    eos_in_loss: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Deterministic evaluation batches: a seeded subset of clips, cropped from their start, captions kept."""
    order = np.random.default_rng([seed, 7]).permutation(len(dataset))[: batch_size * num_batches]
    batches = []
    for b in range(0, len(order), batch_size):
        picks = [(0, int(i), False) for i in order[b : b + batch_size]]
        batches.append(make_batch(dataset, picks, pattern, crop_frames, None, eos_in_loss))
    return batches
