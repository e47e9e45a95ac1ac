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

from diamusic.errors import DiamusicError

# 2: clips carry ``final``; a dataset without it would put EOS at every cut
FORMAT = 2


class DataError(DiamusicError):
    """A dataset problem the user can fix; the message is one line."""
