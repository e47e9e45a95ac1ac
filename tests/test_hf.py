"""Hugging Face datasets as a source of `prepare` (diamusic.data.hf), built here from a few tones and
read offline: a saved dataset gives the codes the same files give as a folder."""

import importlib.util
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from diamusic.cli import main
from diamusic.data import DataError
from diamusic.data import prepare as prepare_module
from diamusic.data.dataset import CodesDataset
from diamusic.data.hf import Cursor
from diamusic.data.prepare import prepare
from diamusic.data.sources import Rejected

datasets = pytest.importorskip("datasets")

SMALL_CODEC = {"codebook_size": 16}
RATE = 22050
CAPTIONS = ["a low tone", "a middle tone", "a high tone", "a bright tone"]
OPTIONS = {"codec_options": SMALL_CODEC, "progress": False}


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def wav_bytes(wave: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, RATE, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Nothing here reaches the network or the user's cache; the libraries read these settings once,
    when imported."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Four tones as an audiofolder (metadata.csv) and as save_to_disk datasets of the same files: one
    Dataset, and a DatasetDict whose "train" holds the first two and "test" the last two."""
    root = tmp_path_factory.mktemp("hf")
    folder = root / "folder"
    folder.mkdir()
    paths = []
    for i in range(4):
        paths.append(str(folder / f"t{i}.wav"))
        sf.write(paths[-1], tone(1.0 + 0.3 * i, 220 * 2 ** (i / 4)), RATE)
    (folder / "metadata.csv").write_text("file_name,text\n" + "".join(f"t{i}.wav,{c}\n" for i, c in
                                                                      enumerate(CAPTIONS)))  # fmt: skip
    table = datasets.Dataset.from_dict({"audio": paths, "text": CAPTIONS}).cast_column("audio", datasets.Audio())
    table.save_to_disk(str(root / "saved"))
    splits = datasets.DatasetDict({"train": table.select([0, 1]), "test": table.select([2, 3])})
    splits.save_to_disk(str(root / "splits"))
    return {"folder": folder, "saved": root / "saved", "splits": root / "splits", "table": table, "paths": paths}


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """The folder prepared: its codec encodes every dataset here, since a codec fitted on another
    split (row numbers are not file names) would give other codes for the same audio."""
    out = tmp_path_factory.mktemp("reference") / "ds"
    prepare(str(sources["folder"]), "spectral-rvq", out, **OPTIONS)
    return out


def with_codec(reference, out):
    shutil.copytree(reference / "codec", out / "codec")
    return out


def clips_by_caption(out) -> dict[str, tuple[int, np.ndarray]]:
    ds = CodesDataset(out, split=None)
    return {row["text"]: (row["frames"], np.asarray(ds.codes(i))) for i, row in enumerate(ds.rows())}


def same_clips(a, b) -> bool:
    a, b = clips_by_caption(a), clips_by_caption(b)
    return a.keys() == b.keys() and all(a[k][0] == b[k][0] and np.array_equal(a[k][1], b[k][1]) for k in a)


def test_a_saved_dataset_prepares_like_the_same_files_in_a_folder(sources, reference, tmp_path):
    out = with_codec(reference, tmp_path / "ds")
    assert prepare(str(sources["saved"]), "spectral-rvq", out, **OPTIONS).complete
    assert sorted(clips_by_caption(out)) == sorted(CAPTIONS)
    assert same_clips(out, reference)
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == [f"{i:08d}" for i in range(4)]  # row numbers
    job = json.loads((out / "job.json").read_text())
    assert "audio_column" not in job and "text_column" not in job  # defaults: an older job.json still matches


def test_a_dataset_dicts_split_is_chosen_after_an_at(sources, reference, tmp_path):
    for source, captions in ((f"{sources['splits']}@test", CAPTIONS[2:]), (str(sources["splits"]), CAPTIONS[:2])):
        out = with_codec(reference, tmp_path / captions[0])
        prepare(source, "spectral-rvq", out, **OPTIONS)
        assert sorted(clips_by_caption(out)) == sorted(captions)
        assert all(np.array_equal(c, clips_by_caption(reference)[t][1]) for t, (_, c) in clips_by_caption(out).items())


def hub(monkeypatch, table, rows_known: bool = True) -> list[tuple]:
    """`datasets.load_dataset` streaming ``table`` as if from the Hub; returns its calls' arguments."""
    calls = []

    def load_dataset(name, config=None, split=None, streaming=False, **kwargs):
        calls.append((name, config, split, streaming))
        stream = table.to_iterable_dataset()
        if rows_known:  # as a Hub dataset's card says
            stream.info.splits = datasets.SplitDict({split: datasets.SplitInfo(split, num_examples=len(table))})
        return stream

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def spy_stream(monkeypatch) -> tuple[list[dict], list[int]]:
    """Every row any stream yields, and how many audio files soundfile decodes."""
    streamed, decoded = [], []
    real_iter, real_read = datasets.IterableDataset.__iter__, sf.read

    def rows(self):
        for row in real_iter(self):
            streamed.append(row)
            yield row

    def read(*args, **kwargs):
        decoded.append(1)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(datasets.IterableDataset, "__iter__", rows)
    monkeypatch.setattr(sf, "read", read)
    return streamed, decoded


def test_a_streamed_dataset_is_read_forward_and_a_shard_decodes_only_its_rows(sources, reference, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    calls = hub(monkeypatch, sources["table"])
    monkeypatch.setattr(prepare_module, "ITEMS_PER_SHARD", 1)  # rows 0..3 in shards 0..3; shard 1/2 takes 1, 3
    out = with_codec(reference, tmp_path / "ds")
    streamed, decoded = spy_stream(monkeypatch)
    assert not prepare("hf:someone/tones:small", "spectral-rvq", out, shard=(1, 2), **OPTIONS).complete
    assert calls == [("someone/tones", "small", "train", True)]
    # one pass from row 1 (skipped to, not read): row 2 is read past, its audio not decoded
    assert [r["text"] for r in streamed] == CAPTIONS[1:] and len(decoded) == 2
    assert sorted(p.name for p in (out / "shards").glob("*.jsonl")) == ["00001.jsonl", "00003.jsonl"]
    assert prepare("hf:someone/tones:small", "spectral-rvq", out, shard=(0, 2), **OPTIONS).complete
    assert same_clips(out, reference)


@pytest.mark.parametrize("source", ["saved", "hf:someone/tones"])
def test_a_finished_dataset_is_not_read_again(sources, reference, tmp_path, monkeypatch, source):
    hub(monkeypatch, sources["table"])
    source = str(sources["saved"]) if source == "saved" else source
    out = with_codec(reference, tmp_path / "ds")
    prepare(source, "spectral-rvq", out, **OPTIONS)
    streamed, decoded = spy_stream(monkeypatch)
    again = prepare(source, "spectral-rvq", out, **OPTIONS)
    assert again.complete and again.audio_seconds_encoded == 0
    assert streamed == [] and decoded == []  # not a row read, not a file decoded


def test_a_stream_without_a_row_count_is_counted_from_its_captions_only(sources, reference, tmp_path, monkeypatch,
                                                                       capsys):  # fmt: skip
    hub(monkeypatch, sources["table"], rows_known=False)
    streamed, _ = spy_stream(monkeypatch)
    out = with_codec(reference, tmp_path / "ds")
    assert prepare("hf:someone/tones", "spectral-rvq", out, limit=3, **OPTIONS).complete
    assert "counting them (up to 3)" in capsys.readouterr().err
    counted = [r for r in streamed if "audio" not in r]
    assert [r["text"] for r in counted] == CAPTIONS[:3]  # no further than the limit, and no audio
    assert sorted(clips_by_caption(out)) == sorted(CAPTIONS[:3])


def test_the_cursor_reads_ahead_and_restarts_only_behind_or_far_ahead(monkeypatch):
    stream = datasets.Dataset.from_dict({"text": [str(i) for i in range(200)]}).to_iterable_dataset()
    streamed, _ = spy_stream(monkeypatch)
    skips = []
    real_skip = datasets.IterableDataset.skip
    monkeypatch.setattr(datasets.IterableDataset, "skip", lambda self, n: skips.append(n) or real_skip(self, n))
    cursor = Cursor(stream, "hf:numbers")
    assert [cursor(i)["text"] for i in (3, 4, 6, 2, 150)] == ["3", "4", "6", "2", "150"]
    assert skips == [3, 2, 150]  # behind (2), far ahead (150); 5 was read past
    assert [r["text"] for r in streamed] == ["3", "4", "5", "6", "2", "150"]
    with pytest.raises(Rejected, match="fewer rows than its card says"):
        cursor(200)


def test_captions_and_bad_audio_follow_the_folders_rules(reference, tmp_path):
    good = wav_bytes(tone(1.5, 330))
    rows = [
        ({"bytes": good, "path": "a tone.wav"}, "its own caption"),
        ({"bytes": good, "path": "jazz_solo piano.wav"}, " "),  # none of its own: words from its path
        ({"bytes": good, "path": "03.wav"}, None),  # nor words in its path
        ({"bytes": b"", "path": "empty.wav"}, "empty"),
        ({"bytes": b"not audio", "path": "bogus.wav"}, "bogus"),
        ({"bytes": wav_bytes(np.full(RATE, np.nan, np.float32), "FLOAT"), "path": "nan.wav"}, "nan"),
    ]
    table = datasets.Dataset.from_dict({"audio": [a for a, _ in rows], "text": [t for _, t in rows]})
    table.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "saved"))
    out = with_codec(reference, tmp_path / "ds")
    prepare(str(tmp_path / "saved"), "spectral-rvq", out, captions="auto-missing", **OPTIONS)
    kept = {r["source"]: r for r in map(json.loads, (out / "index.jsonl").read_text().splitlines())}
    rejected = {r["id"]: r["rejected"] for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert kept["00000000"]["text"] == "its own caption" and "auto_tags" not in kept["00000000"]
    derived = kept["00000001"]
    assert derived["caption_derived"] and derived["text"].startswith("jazz solo piano, ") and derived["auto_tags"]
    assert rejected == {
        "00000002": "no caption (column 'text') and no words in its path",
        "00000003": "empty file",
        "00000004": "unreadable audio (LibsndfileError)",
        "00000005": "non-finite samples (NaN or inf)",
    }
    strict = with_codec(reference, tmp_path / "strict")
    prepare(str(tmp_path / "saved"), "spectral-rvq", strict, require_caption=True, **OPTIONS)
    assert [r["source"] for r in CodesDataset(strict, split=None).rows()] == ["00000000"]


BAD = [
    ("saved", {"audio_column": "sound"}, r"has no column 'sound' \(its columns: audio, text\)"),
    ("saved", {"audio_column": "text"}, r"column 'text' holds Value\('string'\), not audio"),
    ("saved", {"text_column": "caption"}, r"has no column 'caption' \(its columns: audio, text\)"),
    ("hf:someone/nothing", {}, r"cannot load the Hugging Face dataset 'hf:someone/nothing': .*Offline"),
    ("hf:{folder}@valid", {}, r"cannot load the Hugging Face dataset .*Bad split: valid"),
    ("hf:@train", {}, r"expected hf:NAME\[:CONFIG\]\[@SPLIT\]"),
    ("{splits}@valid", {}, r"has no split 'valid' \(its splits: train, test\)"),
    ("{saved}@test", {}, r"holds one dataset, not a dict of splits"),
]


def bad_source(sources, source: str) -> str:
    return str(sources["saved"]) if source == "saved" else source.format(**sources)


@pytest.mark.parametrize(("source", "settings", "message"), BAD)
def test_a_bad_dataset_or_column_is_one_line_before_anything_is_written(sources, tmp_path, source, settings, message):
    with pytest.raises(DataError, match=message) as caught:
        prepare(bad_source(sources, source), "spectral-rvq", tmp_path / "ds", **OPTIONS, **settings)
    assert "\n" not in str(caught.value) and not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("source", "flags", "message"),
    [
        ("saved", ["--audio-column", "sound"], "has no column 'sound'"),
        ("saved", ["--text-column", "caption"], "has no column 'caption'"),
        ("hf:someone/nothing", [], "cannot load the Hugging Face dataset 'hf:someone/nothing'"),
        ("{splits}@valid", [], "has no split 'valid'"),
    ],
)
def test_the_cli_says_a_bad_dataset_in_one_line_and_exits_2(sources, tmp_path, capsys, source, flags, message):
    argv = ["prepare", "--source", bad_source(sources, source), "--codec", "spectral-rvq", "--quiet", *flags]
    assert main([*argv, "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diamusic: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "ds").exists()


def test_the_cli_takes_the_columns_and_job_json_records_them(sources, reference, tmp_path):
    # another audio column, left alone: `datasets` would decode it (with torchcodec) if it were read
    renamed = datasets.Dataset.from_dict({"sound": sources["paths"], "caption": CAPTIONS, "audio": sources["paths"]})
    renamed = renamed.cast_column("sound", datasets.Audio()).cast_column("audio", datasets.Audio())
    renamed.save_to_disk(str(tmp_path / "renamed"))
    out = with_codec(reference, tmp_path / "ds")
    argv = ["prepare", "--source", str(tmp_path / "renamed"), "--codec", "spectral-rvq", "--codebook-size", "16"]
    assert main([*argv, "--out", str(out), "--audio-column", "sound", "--text-column", "caption", "--quiet"]) == 0
    job = json.loads((out / "job.json").read_text())
    assert job["audio_column"] == "sound" and job["text_column"] == "caption"
    assert same_clips(out, reference)


def test_without_the_datasets_package_only_a_dataset_source_needs_it(sources):
    """In a fresh process, so that a module importing `datasets` when imported is caught too."""
    script = f"""
import sys
sys.modules["datasets"] = None  # as if not installed: importing it fails
import diamusic.cli
from diamusic.data import DataError
from diamusic.data.hf import dataset_items
assert dataset_items({str(sources["folder"])!r}, None) is None  # a folder of audio stays one
for source in ({str(sources["saved"])!r}, "hf:someone/tones"):
    try:
        dataset_items(source, None)
    except DataError as exc:
        assert "install diamusic[hf]" in str(exc), exc
    else:
        raise AssertionError(source)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_a_stream_that_datasets_can_only_encode_with_torchcodec_is_one_line(sources, reference, tmp_path):
    """A local audiofolder streamed (its rows are made in Python, and `datasets` re-encodes them)."""
    if importlib.util.find_spec("torchcodec") is not None:
        pytest.skip("torchcodec is installed")
    out = with_codec(reference, tmp_path / "ds")
    with pytest.raises(DataError, match="without torchcodec"):
        prepare(f"hf:{sources['folder']}", "spectral-rvq", out, **OPTIONS)
