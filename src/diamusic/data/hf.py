"""Hugging Face datasets as a source of `prepare`: ``hf:NAME[:CONFIG][@SPLIT]`` streams one (from the
Hub, or any path `datasets.load_dataset` takes), and a folder written by ``save_to_disk`` is read
from disk (``PATH@SPLIT`` picks a split of a DatasetDict). Both default to the "train" split.

Each row is one input whose id is its row number, so every id is known before any row is read (the
eval split and the shards are decided from ids). Audio is read by soundfile from the bytes the
dataset holds, not by `datasets`' decoder, which needs torchcodec. A streamed dataset is read in
order by one cursor: it is never downloaded whole before encoding starts, and a process of
``shard=(i, n)`` decodes only the rows of its own shards.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, overload

from diamusic.data import DataError
from diamusic.data.sources import Loaded, Rejected, SourceItem, caption_of, read_wave
from diamusic.errors import first_line

HUB_PREFIX = "hf:"
SAVED_MARKERS = ("state.json", "dataset_dict.json")  # save_to_disk's files: a Dataset's, a DatasetDict's
DEFAULT_SPLIT = "train"
# rows a stream reads past to reach one ahead; farther, it restarts there: `skip` passes over whole
# Arrow tables without making rows of them, but a restart reopens the stream
READ_THROUGH = 64


class Rows(Sequence[SourceItem]):
    """A dataset's inputs, one per row, made when asked for: a slice is another view, so `prepare`'s
    shards and limit never touch the rows they do not take."""

    def __init__(self, load: Callable[[int], Loaded], rows: range) -> None:
        self.load, self.rows = load, rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> SourceItem: ...

    @overload
    def __getitem__(self, index: slice) -> Rows: ...

    def __getitem__(self, index: int | slice) -> SourceItem | Rows:
        if isinstance(index, slice):
            return Rows(self.load, self.rows[index])
        row = self.rows[index]
        return SourceItem(f"{row:08d}", functools.partial(self.load, row))


class Cursor:
    """A streamed dataset's rows, read forward: a row a little ahead is reached by reading past the
    ones between (their audio is not decoded); one behind, or far ahead, restarts the stream there."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream, self.name = stream, name
        self.rows: Iterator[dict[str, Any]] | None = None
        self.at = 0  # the row that ``rows`` yields next

    def __call__(self, row: int) -> dict[str, Any]:
        if self.rows is None or not 0 <= row - self.at <= READ_THROUGH:
            self.rows = _guarded(iter(self.stream.skip(row) if row else self.stream), self.name)
            self.at = row
        while self.at <= row:
            found = next(self.rows, None)
            if found is None:
                self.rows = None
                raise Rejected("not in the stream: the dataset has fewer rows than its card says")
            self.at += 1
        return found


def dataset_items(
    source: str,
    limit: int | None,
    require_caption: bool = False,
    text_column: str = "text",
    audio_column: str = "audio",
) -> Sequence[SourceItem] | None:
    """A Hugging Face dataset's rows as inputs (at most ``limit``), their audio in ``audio_column`` and
    their captions in ``text_column`` (an empty one is derived from the audio's path, as a folder's
    files are, unless ``require_caption``); None when ``source`` names no such dataset."""
    if source.startswith(HUB_PREFIX):
        name, config, split = _hub_name(source)
        table, streamed = _load_hub(source, name, config, split), True
    elif (saved := _saved_at(source)) is not None:
        table, streamed, split = _load_saved(*saved), False, ""
    else:
        return None
    table = _audio_and_captions(table, source, audio_column, text_column)
    count = _streamed_rows(table, source, split, text_column, limit) if streamed else table.num_rows
    read_row = Cursor(table, source) if streamed else table.__getitem__
    items = Rows(functools.partial(_load_row, read_row, audio_column, text_column, require_caption), range(count))
    items = items[:limit] if limit is not None else items
    if not items:
        raise DataError(f"source {source!r} has no inputs")
    return items


def _datasets() -> Any:
    """The `datasets` package, imported only for a source that needs it (it is an optional extra)."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError("a Hugging Face dataset as a source needs the datasets package: install diamusic[hf]") from exc
    return datasets


def _hub_name(source: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:CONFIG][@SPLIT]`` as (name, config or None, split)."""
    spec = source.removeprefix(HUB_PREFIX)
    spec, at, split = spec.rpartition("@") if "@" in spec else (spec, "", DEFAULT_SPLIT)
    name, _, config = spec.partition(":")
    if not name or (at and not split):
        raise DataError(f"source {source!r}: expected hf:NAME[:CONFIG][@SPLIT]")
    return name, config or None, split


def _load_hub(source: str, name: str, config: str | None, split: str) -> Any:
    datasets = _datasets()
    try:
        return datasets.load_dataset(name, config, split=split, streaming=True)
    # huggingface_hub's errors are OSError (HTTP, offline, not found) or ValueError (a bad repo id),
    # as are datasets' own for a missing config or split
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as exc:
        raise DataError(f"cannot load the Hugging Face dataset {source!r}: {first_line(exc)}") from exc


def _saved_at(source: str) -> tuple[Path, str | None] | None:
    """(folder, split or None) of a folder written by ``save_to_disk``, given as PATH or PATH@SPLIT;
    None for anything else (a folder of audio stays one, even an audiofolder)."""
    path, split = Path(source), None
    if not path.is_dir() and "@" in source:
        base, _, split = source.rpartition("@")
        path = Path(base)
    return (path, split) if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS) else None


def _load_saved(path: Path, split: str | None) -> Any:
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as exc:
        raise DataError(f"cannot load the dataset saved in {path}: {first_line(exc)}") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"{path} holds one dataset, not a dict of splits: it has no split {split!r}")
        return loaded
    split = split or DEFAULT_SPLIT
    if split not in loaded:
        raise DataError(f"{path} has no split {split!r} (its splits: {', '.join(loaded)})")
    return loaded[split]


def _audio_and_captions(table: Any, source: str, audio_column: str, text_column: str) -> Any:
    """The dataset cut to its audio and caption columns, its audio as the bytes (and path) of each
    file: `datasets` would decode it with torchcodec, and soundfile reads those bytes itself."""
    datasets = _datasets()
    features = table.features
    if features is None:  # some streamed datasets learn their columns only from their first rows
        raise DataError(f"{source}: its columns are not known before it is read (no features in its card)")
    for column in (audio_column, text_column):
        if column not in features:
            raise DataError(f"{source} has no column {column!r} (its columns: {', '.join(features)})")
    if not isinstance(features[audio_column], datasets.Audio):
        raise DataError(f"{source}: column {audio_column!r} holds {features[audio_column]}, not audio")
    table = table.select_columns(list(dict.fromkeys([audio_column, text_column])))
    return table.cast_column(audio_column, datasets.Audio(decode=False))


def _streamed_rows(stream: Any, source: str, split: str, text_column: str, limit: int | None) -> int:
    """A stream's rows (up to ``limit``): as its card says, or else counted by reading its captions
    only, since the ids of all rows are needed before the first is encoded."""
    known = (stream.info.splits or {}).get(split)
    if known is not None and known.num_examples:
        return int(known.num_examples)
    upto = f" (up to {limit})" if limit is not None else ""
    print(f"{source}: its card does not say how many rows it has: counting them{upto} from its "
          f"{text_column!r} column...", file=sys.stderr)  # fmt: skip
    return sum(1 for _ in islice(_guarded(iter(stream.select_columns([text_column])), source), limit))


def _guarded(rows: Iterator[dict[str, Any]], source: str) -> Iterator[dict[str, Any]]:
    """A stream's rows, with what can go wrong while reading them said in one line."""
    try:
        yield from rows
    except ImportError as exc:  # rows made by a loading script are re-encoded by `datasets`, with torchcodec
        raise DataError(f"cannot stream {source} without torchcodec ({first_line(exc)}): install it, or "
                        "download the dataset's audio files and prepare that folder") from exc  # fmt: skip
    except (_datasets().exceptions.DatasetsError, OSError) as exc:
        raise DataError(f"cannot read {source}: {first_line(exc)}") from exc


def _load_row(
    read_row: Callable[[int], dict[str, Any]], audio_column: str, text_column: str, require_caption: bool, row: int
) -> Loaded:
    """One row as an input, checked as a folder's file is (the same reasons for rejecting it)."""
    values = read_row(row)
    audio = values[audio_column] or {}
    path = audio.get("path")
    where = f"column {text_column!r}"
    caption, derived = caption_of(values[text_column], _path_words(path), require_caption, where)
    data = audio.get("bytes")
    if data is None and path is None:
        raise Rejected(f"no audio (column {audio_column!r} is empty)")
    wave, rate = read_wave(data if data is not None else _file_bytes(path))
    return Loaded(wave, rate, caption, caption_derived=derived)


def _path_words(path: str | None) -> str | None:
    """The part of an audio's path that may describe it: all of a relative one (``jazz/solo.wav``), the
    file name of a cache path or URL, whose folders say nothing about the music."""
    if not path:
        return None
    return PurePosixPath(path).name if "://" in path or Path(path).is_absolute() else path


def _file_bytes(path: str) -> bytes:
    """A file a row names without holding its bytes: local, or remote (``datasets`` opens URLs)."""
    try:
        if Path(path).is_file():
            return Path(path).read_bytes()
        from datasets.utils.file_utils import xopen

        with xopen(path, "rb") as f:
            return f.read()
    except Exception as exc:  # fsspec and its file systems raise many types
        raise Rejected(f"unreadable audio ({type(exc).__name__})") from exc
