"""`prepare`: encode a source once into a dataset directory (see `diamusic.data` for its layout).

A shard is committed by renaming its .jsonl into place after its .npy, so a killed run never
leaves a shard that looks finished, and a re-run skips every committed shard. Several processes
may each take a share of the shards (``shard=(i, n)``); the last one to finish writes the card.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diamusic.clap import Clap
from diamusic.codecs import Codec, codec_class, encode_channels, load_codec
from diamusic.data import CARD_FILE, FORMAT, DataError, fingerprint, read_json, shard_file
from diamusic.data.hf import dataset_items
from diamusic.data.sources import (
    MIN_CLIP_SECONDS,
    Rejected,
    SourceItem,
    clip_samples,
    clips_of,
    corpus_options,
    notes_in,
    source_items,
    split_of,
    to_audio_channels,
)
from diamusic.locks import DirectoryLock
from diamusic.patterns import AUDIO_CHANNELS
from diamusic.progress import bar as progress_bar
from diamusic.progress import duration
from diamusic.tagging import CAPTION_MODES, Captioner
from diamusic.tokens import MAX_TEXT_BYTES

ITEMS_PER_SHARD = 32
ENCODE_BUFFER_BYTES = 1 << 30  # clips waiting to be encoded: more is encoded in turns, not held


@dataclass(frozen=True)
class Clipping:
    """How an input becomes clips: their longest length, the dataset's audio channels, the caption
    tags that leave an input out, and how its caption gets automatic tags."""

    max_seconds: float
    audio_channels: int
    skip_tags: frozenset[str] = frozenset()
    captioner: Captioner = Captioner()

    def skipped(self, caption: str) -> str | None:
        """The first of the caption's comma-separated tags (any case) that is to be skipped, if any."""
        return next((t for t in (p.strip().lower() for p in caption.split(",")) if t in self.skip_tags), None)


@dataclass
class PrepareResult:
    clips: int
    hours: float
    rejected: int
    seconds: float
    audio_seconds_encoded: float  # by this call (0 when every shard was done already)
    encode_seconds: float  # spent in the codec's encoder, without loading, rendering or fitting
    complete: bool
    captions_truncated: int = 0

    @classmethod
    def of(cls, card: dict[str, Any] | None, seconds: float, audio: float, encoding: float) -> PrepareResult:
        """From the card of a finished dataset, or None while other shard processes still work."""
        if card is None:
            return cls(0, 0.0, 0, seconds, audio, encoding, False)
        counts = card["clips"], card["hours"], card["rejected"]
        return cls(*counts, seconds, audio, encoding, True, card["captions_truncated"])

    def describe(self, out: Path, shard: tuple[int, int] = (0, 1)) -> str:
        """What `prepare` ends with: the clips written, the rejected ones by reason, the speed."""
        if self.audio_seconds_encoded > 0:
            rate = self.audio_seconds_encoded / max(self.encode_seconds, 1e-9)
            speed = (
                f"encoded {self.audio_seconds_encoded:.1f} s of audio at {rate:.3g}x real time "
                f"({self.seconds:.1f} s in all, with loading and the codec fit)"
            )
        else:
            speed = "nothing left to encode"
        if not self.complete:
            return f"shard {shard[0]}/{shard[1]} done ({speed}); other shards still to run"
        reasons = _rejection_counts(out / "rejected.jsonl")
        counted = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        why = f": {counted} (see rejected.jsonl)" if reasons else ""
        lines = [f"{out}: {self.clips} clips, {self.hours:.2f} h, {self.rejected} rejected{why}; {speed}"]
        if self.captions_truncated:
            lines.append(f"warning: {self.captions_truncated} captions were longer than {MAX_TEXT_BYTES} bytes and "
                         "were truncated")  # fmt: skip
        return "\n".join(lines)


def _rejection_counts(path: Path) -> Counter[str]:
    """Rejected inputs by reason, the reason's details (a tag, a column) left out so that alike ones count together."""
    if not path.exists():
        return Counter()
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return Counter(str(row.get("rejected", "?")).split(" (")[0].split(":")[0] for row in rows)


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
    corpus: dict[str, str] | None = None,
    channels: str = "mono",
    skip_tags: Sequence[str] = (),
    require_caption: bool = False,
    captions: str = "keep",
    tagger_clap: str | None = None,
    text_column: str = "text",
    audio_column: str = "audio",
    progress: bool = True,
) -> PrepareResult:
    """Encode a source once into a dataset directory; resumable and splittable with ``shard``.

    ``corpus`` (``renderer``, ``texture``): how the built-in melodies are rendered. ``channels`` "stereo"
    encodes each side (a mono input copied to both). An input with one of ``skip_tags`` among its caption's
    tags is left out, and with ``require_caption`` one without a caption of its own (else its path gives
    one). ``captions`` "auto" adds tags from the audio (`diamusic.tagging`) to every caption, "auto-missing"
    to those an input did not bring; ``tagger_clap`` (a CLAP model) adds instrument, genre and mood.
    ``text_column``: the metadata column holding captions (an audiofolder's may be "caption"); a Hugging
    Face dataset's (`diamusic.data.hf`) too, its audio in ``audio_column``."""
    start = time.time()
    out = Path(out)
    index, count = shard
    clipping = _check_arguments(shard, eval_fraction, max_seconds, channels, skip_tags, captions, tagger_clap)
    audio_channels, skip = clipping.audio_channels, sorted(clipping.skip_tags)
    codec_type = codec_class(codec)
    codec_type.check_options(codec_options or {})
    corpus = corpus_options(source, corpus)
    items = _inputs(source, limit, seed, corpus, audio_channels, require_caption, (text_column, audio_column))
    job = {"source": source, "codec": codec, "limit": limit, "max_seconds": max_seconds, "seed": seed,
           "eval_fraction": eval_fraction, "codec_options": codec_options or {}}  # fmt: skip
    # later settings only when used, so an older dataset's job.json still matches
    later = {"corpus": corpus, "channels": channels if audio_channels > 1 else None, "skip_tags": skip,
             "require_caption": require_caption or None, "text_column": text_column if text_column != "text" else None,
             "audio_column": audio_column if audio_column != "audio" else None,
             **({"captions": captions, "tagger_clap": tagger_clap} if captions != "keep" else {})}  # fmt: skip
    job |= {k: v for k, v in later.items() if v or k == "tagger_clap"}
    try:
        # each share of the job (shard=(i, n)) is one process: a second with the same share stops here
        lock = DirectoryLock(out, f".lock-shard-{index}-of-{count}")
        (out / "shards").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write dataset to {out}: {exc.strerror or exc}") from exc
    try:
        _check_same_job(out, job)
        split = split_of([i.id for i in items], seed, eval_fraction)
        codec_obj = _codec_for(codec_type, out, items, split, {**(codec_options or {}), "seed": seed}, clipping)

        n_shards = (len(items) + ITEMS_PER_SHARD - 1) // ITEMS_PER_SHARD
        mine = [s for s in range(n_shards) if s % count == index]
        todo = [s for s in mine if not shard_file(out, s, ".jsonl").exists()]
        audio_seconds = encode_seconds = 0.0
        bar = _progress_bar(len(items), mine, todo, progress)
        for s in todo:
            members = items[s * ITEMS_PER_SHARD : (s + 1) * ITEMS_PER_SHARD]
            seconds, spent = _write_shard(out, s, members, split, codec_obj, clipping)
            audio_seconds += seconds
            encode_seconds += spent
            bar.update(len(members))
        bar.close()

        complete = all(shard_file(out, s, ".jsonl").exists() for s in range(n_shards))
        card = _finalize(out, n_shards, codec_obj, source, audio_channels) if complete else None
        if card is not None and card["clips"] == 0:
            raise DataError(f"no usable clips: all {card['rejected']} inputs were rejected (see {out}/rejected.jsonl)")
        return PrepareResult.of(card, time.time() - start, audio_seconds, encode_seconds)
    finally:
        lock.release()


def _inputs(
    source: str,
    limit: int | None,
    seed: int,
    corpus: dict[str, str] | None,
    audio_channels: int,
    require_caption: bool,
    columns: tuple[str, str],
) -> Sequence[SourceItem]:
    """The built-in melodies (when ``corpus`` says how to render them), a Hugging Face dataset, or a
    folder of audio; ``columns``: the (caption, audio) columns of a dataset or metadata file."""
    text_column, audio_column = columns
    items = None if corpus is not None else dataset_items(source, limit, require_caption, text_column, audio_column)
    if items is None:
        items = source_items(source, limit, seed, corpus, audio_channels, require_caption, text_column)
    return items


def _progress_bar(items: int, mine: list[int], todo: list[int], shown: bool) -> Any:
    """A bar over the inputs of this process's shards, the finished ones already counted (silent
    unless ``shown``)."""
    size = [min(ITEMS_PER_SHARD, items - s * ITEMS_PER_SHARD) for s in range(max(mine, default=-1) + 1)]
    done = sum(size[s] for s in mine if s not in todo)
    total = sum(size[s] for s in mine)
    return progress_bar(shown, total=total, initial=done, unit="input", desc="prepare")


def _check_arguments(
    shard: tuple[int, int],
    eval_fraction: float,
    max_seconds: float,
    channels: str,
    skip_tags: Sequence[str],
    captions: str = "keep",
    tagger_clap: str | None = None,
) -> Clipping:
    """Refuse settings that cannot work, before anything is read or written."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise DataError(f"shard {index}/{count}: expected i/n with 0 <= i < n")
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if not max_seconds > MIN_CLIP_SECONDS:
        raise DataError(f"max_seconds must be > {MIN_CLIP_SECONDS}, got {max_seconds}")
    if channels not in AUDIO_CHANNELS:
        raise DataError(f"channels must be {' or '.join(AUDIO_CHANNELS)}, got {channels!r}")
    if captions not in CAPTION_MODES:
        raise DataError(f"captions must be one of {', '.join(CAPTION_MODES)}, got {captions!r}")
    if tagger_clap and captions == "keep":
        raise DataError("a tagger CLAP model needs captions auto or auto-missing")
    skip = frozenset(t.strip().lower() for t in skip_tags if t.strip())
    captioner = Captioner(captions, Clap.load(tagger_clap) if tagger_clap else None)
    return Clipping(max_seconds, AUDIO_CHANNELS[channels], skip, captioner)


def _write_shard(
    out: Path,
    shard: int,
    members: Sequence[SourceItem],
    split: dict[str, str],
    codec: Codec,
    clipping: Clipping,
) -> tuple[float, float]:
    """Encode one shard and write it (codes, then the rows that mark it done); returns the seconds
    of audio and of encoding."""
    array, rows, seconds, spent = _encode_shard(shard, members, split, codec, clipping)
    codes = io.BytesIO()
    np.save(codes, array)
    # the .jsonl goes last: its presence is what marks the shard done
    files = {".npy": codes.getvalue(), ".jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()}
    _check_space(out, sum(len(data) for data in files.values()))
    for suffix, data in files.items():
        _atomic_write(shard_file(out, shard, suffix), data)
    return seconds, spent


def _atomic_write(path: Path, data: bytes) -> None:
    """The whole file or, on failure, the old one (or none) and no temporary left behind."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _check_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if free < needed:
        raise DataError(f"cannot write dataset to {out}: no space left on device ({free} bytes free, {needed} needed)")


def _check_same_job(out: Path, job: dict[str, Any]) -> None:
    """Refuse to resume into a directory prepared with other settings (that would mix datasets)."""
    path = out / "job.json"
    if path.exists():
        previous = read_json(path)
        if not isinstance(previous, dict):
            raise DataError(f"{path}: expected a JSON object of prepare settings: prepare into another directory")
        if previous != job:
            diff = next(k for k in {**previous, **job} if previous.get(k) != job.get(k))
            raise DataError(
                f"{out} was prepared with {diff}={previous.get(diff)!r}, not {job.get(diff)!r}: "
                "prepare into another directory"
            )
    else:
        _atomic_write(path, json.dumps(job, indent=1).encode())


def _codec_for(
    codec_type: type,
    out: Path,
    items: Sequence[SourceItem],
    split: dict[str, str],
    options: dict[str, Any],
    clipping: Clipping,
) -> Codec:
    codec_dir = out / "codec"
    if (codec_dir / "codec.json").exists():
        return load_codec(codec_dir)

    fitting: list[float] = []  # when the fit started, once its audio is loaded

    def training_audio(max_seconds: float) -> tuple[list[np.ndarray], int]:
        # training inputs only, so the eval split's reconstruction stays honest
        waves, rate, total = [], 0, 0.0
        print("loading the codec's training audio...", file=sys.stderr, flush=True)
        for item in items:
            if split[item.id] != "train" or total >= max_seconds:
                continue
            try:
                loaded = item.load()
                wave, _ = to_audio_channels(loaded.wave, clipping.audio_channels)
            except Rejected:
                continue
            if clipping.skipped(loaded.caption):  # what the dataset leaves out does not shape its codec
                continue
            sr = loaded.sample_rate
            # the codec encodes each side on its own, so it is fitted on the sides
            for side in [wave] if wave.ndim == 1 else wave.T:
                if rate and sr != rate:
                    import librosa

                    side = librosa.resample(np.ascontiguousarray(side), orig_sr=sr, target_sr=rate)
                rate = rate or sr
                waves.append(side)
                total += len(side) / rate
        if waves:
            print(f"fitting the codec on {total / 60:.1f} min of training audio...", file=sys.stderr, flush=True)
            fitting.append(time.monotonic())
        return waves, rate

    codec = codec_type.from_options(options, training_audio)
    if fitting:
        print(f"fitting the codec: done in {duration(time.monotonic() - fitting[0])}", file=sys.stderr)
    # several shard processes may race here; the fit is deterministic, so any winner is correct
    tmp = out / f"codec.tmp{os.getpid()}"
    try:
        codec.save(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write the codec to {out}: {exc.strerror or exc}") from exc
    try:
        os.rename(tmp, codec_dir)
        return codec
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return load_codec(codec_dir)


def _encode_shard(
    shard: int, items: Sequence[SourceItem], split: dict[str, str], codec: Codec, clipping: Clipping
) -> tuple[np.ndarray, list[dict[str, Any]], float, float]:
    """A shard's codes, its rows (kept clips and rejections), the audio seconds kept and the
    seconds spent encoding them. Audio is encoded whenever ENCODE_BUFFER_BYTES of clips wait, so a
    shard of hour-long sources never holds more than that (and the input being read) in memory."""
    rows: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    blocks: list[np.ndarray] = []
    pending: list[tuple[dict[str, Any], np.ndarray, int]] = []
    waiting = offset = 0  # bytes of audio pending, frames of codes kept
    audio_seconds = spent = 0.0
    for last, item in enumerate(items, 1):
        try:
            loaded = item.load()
            if tag := clipping.skipped(loaded.caption):
                raise Rejected(f"skipped: tagged {tag!r}")
            wave, copied = to_audio_channels(loaded.wave, clipping.audio_channels)
            caption, auto = clipping.captioner.caption(loaded.caption, loaded.caption_derived, wave, loaded.sample_rate)
            loaded = dataclasses.replace(loaded, caption=caption, auto_tags=tuple(auto))
        except Rejected as reason:
            rows.append({"id": item.id, "rejected": str(reason)})
            loaded = None
        if loaded is not None:
            clips = _clips(loaded, wave, copied, item, split, clipping.max_seconds, rows)
            pending += clips
            waiting += sum(clip.nbytes for _, clip, _ in clips)
        if pending and (last == len(items) or waiting >= ENCODE_BUFFER_BYTES):
            started = time.perf_counter()
            encoded = _encode_pending(pending, codec, clipping.audio_channels)
            spent += time.perf_counter() - started
            for (row, clip, rate), codes in zip(pending, encoded, strict=True):
                if codes.shape[0] == 0:
                    rows.append({"id": row["id"], "rejected": "encodes to zero frames"})
                    continue
                row.update(frames=int(codes.shape[0]), offset=offset, shard=shard, final=False)
                offset += codes.shape[0]
                blocks.append(codes.astype(np.uint16))
                kept.append(row)
                audio_seconds += len(clip) / rate
            pending, waiting = [], 0
    # the last kept clip of each source is where its music ends: the only clip whose end is an EOS
    last_of = {row["source"]: row for row in kept}
    for row in last_of.values():
        row["final"] = True
    streams = codec.num_codebooks * clipping.audio_channels
    array = np.concatenate(blocks) if blocks else np.zeros((0, streams), dtype=np.uint16)
    return array, rows + kept, audio_seconds, spent


def _clips(
    loaded: Any,
    wave: np.ndarray,
    copied: bool,
    item: SourceItem,
    split: dict[str, str],
    max_seconds: float,
    rows: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], np.ndarray, int]]:
    """An input's clips (of ``wave``, its audio in the dataset's layout) to encode, each with its
    row; clips too short to keep go to ``rows``."""
    rate, text = loaded.sample_rate, loaded.caption
    raw = text.encode("utf-8")
    truncated = len(raw) > MAX_TEXT_BYTES
    if truncated:
        text = raw[:MAX_TEXT_BYTES].decode("utf-8", errors="ignore")
    out = []
    for k, clip in clips_of(wave, rate, max_seconds):
        clip_id = f"{item.id}#{k}"
        if isinstance(clip, str):
            rows.append({"id": clip_id, "rejected": clip})
            continue
        row = {"id": clip_id, "text": text, "source": item.id, "split": split[item.id]}
        if truncated:
            row["caption_truncated"] = True
        if copied:
            row["mono_source"] = True  # both sides are the same audio
        if loaded.caption_derived:
            row["caption_derived"] = True
        if loaded.auto_tags:  # the caption's automatic tags (the others came with the input)
            row["auto_tags"] = list(loaded.auto_tags)
        if loaded.tags is not None:
            row["tags"] = loaded.tags
        if loaded.melody is not None:  # the reference melody of this clip, for melody metrics
            start = k * clip_samples(max_seconds, rate) / rate
            row["melody"] = notes_in(loaded.melody, start, start + len(clip) / rate)
        out.append((row, clip, rate))
    return out


def _encode_pending(
    pending: list[tuple[dict[str, Any], np.ndarray, int]], codec: Codec, audio_channels: int
) -> list[np.ndarray]:
    """The codes of waiting clips, in their order; each sample rate is one call of the codec's batching."""
    by_rate: dict[int, list[int]] = {}
    for n, (_, _, rate) in enumerate(pending):
        by_rate.setdefault(rate, []).append(n)
    encoded: dict[int, np.ndarray] = {}
    for rate, members in by_rate.items():
        clips = [pending[n][1] for n in members]
        codes_of = codec.encode_batch(clips, rate) if audio_channels == 1 else encode_channels(codec, clips, rate)
        for n, codes in zip(members, codes_of, strict=True):
            encoded[n] = np.asarray(codes)
    return [encoded[n] for n in range(len(pending))]


def _finalize(out: Path, n_shards: int, codec: Codec, source: str, audio_channels: int) -> dict[str, Any]:
    clips, rejected, truncated = [], [], 0
    shards = [shard_file(out, s) for s in range(n_shards)]
    for shard in shards:
        for line in shard.with_suffix(".jsonl").read_text().splitlines():
            row = json.loads(line)
            (rejected if "rejected" in row else clips).append(row)
            truncated += bool(row.get("caption_truncated"))
    # shards written before clips said whether they end their source: a source's clips sit in one
    # shard, in order, so its last one is the final one
    older = {row["source"]: row for row in clips if "final" not in row}
    for row in clips:
        row.setdefault("final", row is older.get(row["source"]))
    frames = np.array([r["frames"] for r in clips] or [0])
    seconds = frames / codec.frame_rate
    card = {
        "format": FORMAT,
        "fingerprint": fingerprint(codec.fingerprint, shards, clips),
        "source": source,
        "clips": len(clips),
        "train_clips": sum(r["split"] == "train" for r in clips),
        "eval_clips": sum(r["split"] == "eval" for r in clips),
        "hours": float(seconds.sum() / 3600),
        "mean_seconds": float(seconds.mean()) if clips else 0.0,
        "rejected": len(rejected),
        "captions_truncated": truncated,
        "captions_derived": len({r["source"] for r in clips if r.get("caption_derived")}),  # from their paths
        "captions_auto": len({r["source"] for r in clips if r.get("auto_tags")}),  # with tags from their audio
        "codec": {
            "name": codec.name,
            "fingerprint": codec.fingerprint,
            "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate,
            "num_codebooks": codec.num_codebooks,
            "codebook_size": codec.codebook_size,
            "audio_channels": audio_channels,  # a frame: num_codebooks codes per side, left's then right's
        },
        **(
            {"mono_sources_copied": len({r["source"] for r in clips if r.get("mono_source")})}
            if audio_channels > 1
            else {}
        ),  # fmt: skip
        "shards": n_shards,
    }
    _atomic_write(out / "index.jsonl", "".join(json.dumps(r) + "\n" for r in clips).encode())
    _atomic_write(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected).encode())
    _atomic_write(out / CARD_FILE, json.dumps(card, indent=2).encode())
    return card
