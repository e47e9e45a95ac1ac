import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.dia.processing_dia import DiaProcessor

from diamusic.data import DataError
from diamusic.data import dataset as dataset_module
from diamusic.data import prepare as prepare_module
from diamusic.data.dataset import BatchPlan, CodesDataset, StepBatches, make_batch
from diamusic.data.inspect import inspect
from diamusic.data.prepare import prepare
from diamusic.data.sources import split_of
from diamusic.errors import DiamusicError
from diamusic.patterns import PRESETS, DelayPattern
from diamusic.tokens import IGNORE_INDEX, AudioVocab, build_decoder_batch

VOCAB = AudioVocab(codebook_size=1024, num_codebooks=9)
SMALL_CODEC = {"codebook_size": 16}


def processor_training_layout(codes: torch.Tensor, delays: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DiaProcessor's training path (output_labels=True) for equal-length clips, via its own helpers."""
    batch, frames, codebooks = codes.shape
    seq = torch.nn.functional.pad(codes, (0, 0, 0, 1), value=VOCAB.eos)
    seq = torch.nn.functional.pad(seq, (0, 0, 1, 0), value=VOCAB.bos)
    steps = seq.shape[1] + max(delays)
    prefill = torch.full((batch, steps, codebooks), VOCAB.pad, dtype=torch.long)
    prefill[:, : seq.shape[1]] = seq
    idx = DiaProcessor.build_indices(bsz=batch, seq_len=steps, num_channels=codebooks, delay_pattern=delays)
    delayed = DiaProcessor.apply_audio_delay(prefill, VOCAB.pad, VOCAB.bos, idx)
    labels = delayed[:, 1:].clone()
    labels[(labels == VOCAB.pad) | (labels == VOCAB.bos)] = IGNORE_INDEX
    return delayed[:, :-1], labels.transpose(1, 2)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_decoder_batch_matches_dia_processor(name):
    codes = torch.randint(0, 1024, (2, 30, 9), generator=torch.Generator().manual_seed(1))
    inputs, labels = build_decoder_batch(list(codes), DelayPattern.parse(name), VOCAB)
    ref_inputs, ref_labels = processor_training_layout(codes, list(PRESETS[name]))
    assert torch.equal(inputs, ref_inputs)
    assert torch.equal(labels, ref_labels)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_loss_mask_position_by_position(name):
    pattern = DelayPattern.parse(name)
    lengths = [12, 7]  # the shorter clip is padded: its tail must never count
    codes = [torch.randint(0, 1024, (n, 9)) for n in lengths]
    inputs, labels = build_decoder_batch(codes, pattern, VOCAB)
    assert labels.shape == (2, 9, max(lengths) + 1 + pattern.max_delay)
    for i, n in enumerate(lengths):
        for c, d in enumerate(pattern.delays):
            row = labels[i, c].tolist()
            for s, target in enumerate(row):
                # label s is the token at step s+1; codebook c holds frame (s+1) - d - 1 there
                frame = s - d
                if 0 <= frame < n:
                    assert target == int(codes[i][frame, c]), (i, c, s)
                elif frame == n:
                    assert target == VOCAB.eos, (i, c, s)
                else:
                    assert target == IGNORE_INDEX, (i, c, s)
            assert row.count(VOCAB.eos) == 1
            # the step that predicts this codebook's first code reads BOS on that codebook
            assert int(inputs[i, d, c]) == VOCAB.bos
    assert not ((labels == VOCAB.pad) | (labels == VOCAB.bos)).any()
    assert inputs.max() <= VOCAB.bos and inputs.min() >= 0


def test_crop_that_does_not_end_gets_no_eos_and_option_excludes_eos():
    codes = [torch.randint(0, 1024, (10, 9)) for _ in range(2)]
    _, labels = build_decoder_batch(codes, DelayPattern.parse("dia"), VOCAB, ends=[True, False])
    assert (labels[0] == VOCAB.eos).sum() == 9
    assert (labels[1] == VOCAB.eos).sum() == 0
    assert (labels[1] != IGNORE_INDEX).sum() == 10 * 9
    _, labels = build_decoder_batch(codes, DelayPattern.parse("dia"), VOCAB, eos_in_loss=False)
    assert (labels == VOCAB.eos).sum() == 0


def test_batch_plan_is_a_pure_function_of_step():
    plan = BatchPlan(seed=3, batch_size=4, grad_accum=2, crop_frames=50, cfg_dropout=0.5)
    assert plan.samples(7, 1, 37) == plan.samples(7, 1, 37)
    assert plan.samples(7, 0, 37) != plan.samples(7, 1, 37)
    assert plan.crop(11, 200, False) == plan.crop(11, 200, False)
    assert 0 <= plan.crop(11, 200, False) <= 150 and plan.crop(11, 40, True) == 0
    # one epoch visits every clip exactly once
    clips = [clip for step in range(5) for m in range(2) for _, clip, _ in plan.samples(step, m, 40)]
    assert sorted(clips) == list(range(40))


def test_batch_plan_ranks_partition_the_global_batch():
    single = BatchPlan(seed=0, batch_size=6, grad_accum=1, crop_frames=50, cfg_dropout=0.3)
    ranks = [BatchPlan(0, 3, 1, 50, 0.3, rank=r, world_size=2) for r in range(2)]
    for step in range(4):
        assert single.samples(step, 0, 17) == ranks[0].samples(step, 0, 17) + ranks[1].samples(step, 0, 17)


def test_cfg_dropout_rate_and_determinism():
    plan = BatchPlan(seed=0, batch_size=50, grad_accum=1, crop_frames=50, cfg_dropout=0.15)
    drops = [drop for step in range(80) for _, _, drop in plan.samples(step, 0, 97)]
    assert abs(np.mean(drops) - 0.15) < 0.02
    other = BatchPlan(seed=1, batch_size=50, grad_accum=1, crop_frames=50, cfg_dropout=0.15)
    assert [d for _, _, d in plan.samples(0, 0, 97)] != [d for _, _, d in other.samples(0, 0, 97)]
    never = BatchPlan(seed=0, batch_size=50, grad_accum=1, crop_frames=50, cfg_dropout=0.0)
    assert not any(d for _, _, d in never.samples(0, 0, 97))


def test_eos_crop_share_ends_that_share_of_final_crops_at_the_end():
    plan = BatchPlan(seed=0, batch_size=1, grad_accum=1, crop_frames=50, cfg_dropout=0.0, eos_crop_share=0.2)
    at_end = [plan.crop(n, 400, True) == 350 for n in range(4000)]
    assert abs(np.mean(at_end) - 0.2) < 0.02  # (a random crop lands there 1 time in 351)
    assert np.mean([plan.crop(n, 400, False) == 350 for n in range(4000)]) < 0.01  # never forced mid-source
    # the other crops are the ones a plan without the share draws: turning it on moves nothing else
    plain = BatchPlan(seed=0, batch_size=1, grad_accum=1, crop_frames=50, cfg_dropout=0.0)
    assert all(plan.crop(n, 400, True) == plain.crop(n, 400, True) for n in range(400) if not at_end[n])


def test_split_is_deterministic_and_has_an_eval_item():
    ids = [f"f{i}" for i in range(40)]
    a, b = split_of(ids, 0, 0.05), split_of(list(reversed(ids)), 0, 0.05)
    assert a == b
    assert sum(v == "eval" for v in a.values()) == 2
    assert split_of(["x", "y"], 0, 0.0)["x"] != split_of(["x", "y"], 0, 0.0)["y"]


# --- prepare on a folder with good and bad inputs ---------------------------------------------


def tone(seconds: float, freq: float, rate: int = 22050, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture
def audio_folder(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    meta = []
    for i in range(6):
        name = f"good{i}.wav"
        sf.write(folder / name, tone(1.5 + 0.2 * i, 220 * 2 ** (i / 12)), 22050)
        meta.append({"file": name, "text": f"a tone number {i}"})
    stereo = np.stack([tone(2.0, 330), tone(2.0, 331)], axis=1)
    sf.write(folder / "stereo.flac", stereo, 44100)
    meta.append({"file": "stereo.flac", "text": "a stereo tone " + "x" * 1100})
    sf.write(folder / "long.wav", tone(5.0, 262), 22050)  # split into clips of 2 s
    meta.append({"file": "long.wav", "text": "a long tone"})
    sf.write(folder / "silent.wav", np.zeros(22050 * 2, dtype=np.float32), 22050)
    meta.append({"file": "silent.wav", "text": "nothing"})
    sf.write(folder / "short.wav", tone(0.1, 440), 22050)
    meta.append({"file": "short.wav", "text": "too short"})
    (folder / "empty.wav").write_bytes(b"")
    meta.append({"file": "empty.wav", "text": "empty"})
    (folder / "notaudio.wav").write_text("this is not audio")
    meta.append({"file": "notaudio.wav", "text": "bogus"})
    sf.write(folder / "nocaption.wav", tone(1.0, 300), 22050)
    sf.write(folder / "sidecar.wav", tone(1.0, 350), 22050)
    (folder / "sidecar.txt").write_text("caption from a sidecar file")
    sf.write(folder / "badsidecar.wav", tone(1.0, 370), 22050)
    (folder / "badsidecar.txt").write_bytes(b"\xff\xfe caption")
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return folder


def test_prepare_folder_keeps_good_and_explains_bad(audio_folder, tmp_path):
    out = tmp_path / "ds"
    result = prepare(str(audio_folder), "spectral-rvq", out, max_seconds=2.0, codec_options=SMALL_CODEC, progress=False)
    assert result.complete and result.captions_truncated == 1
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    rejected = {json.loads(line)["id"]: json.loads(line)["rejected"] for line in (out / "rejected.jsonl").open()}
    sources = {r["source"] for r in rows}
    assert {f"good{i}.wav" for i in range(6)} | {"stereo.flac", "long.wav", "sidecar.wav"} <= sources
    assert rejected["silent.wav#0"] == "silent"
    assert "too short" in rejected["short.wav#0"]
    assert rejected["empty.wav"] == "empty file"
    assert "unreadable audio" in rejected["notaudio.wav"]
    derived = next(r for r in rows if r["source"] == "nocaption.wav")  # no caption: tagged from its path
    assert derived["text"] == "nocaption" and derived["caption_derived"]
    assert "not UTF-8" in rejected["badsidecar.wav"]
    long_clips = [r for r in rows if r["source"] == "long.wav"]
    assert [r["id"] for r in long_clips] == ["long.wav#0", "long.wav#1", "long.wav#2"]  # 5 s -> 2 + 2 + 1 s
    assert [r["final"] for r in long_clips] == [False, False, True]
    last_clip = {r["source"]: r["id"] for r in rows}  # rows are in clip order within a source
    assert all(r["final"] == (last_clip[r["source"]] == r["id"]) for r in rows)
    assert rejected["good4.wav#1"].startswith("too short")  # 2.3 s -> 2 s + 0.3 s: the 2 s clip ends it
    assert next(r for r in rows if r["id"] == "good4.wav#0")["final"]
    stereo = next(r for r in rows if r["source"] == "stereo.flac")
    assert len(stereo["text"].encode()) == 1024 and stereo["caption_truncated"]
    card = json.loads((out / "card.json").read_text())
    assert card["clips"] == len(rows) and card["rejected"] == len(rejected) and card["captions_truncated"] == 1
    assert card["captions_derived"] == 1
    assert card["train_clips"] + card["eval_clips"] == card["clips"] and card["eval_clips"] >= 1
    ds = CodesDataset(out, "train")
    codes = ds.codes(0)
    assert codes.dtype == np.uint16 and codes.shape[1] == 9 and codes.max() < 16
    frames = next(r["frames"] for r in rows if r["source"] == "good0.wav")
    assert abs(frames - 1.5 * card["codec"]["frame_rate"]) <= 2


def test_prepare_resume_after_kill_gives_same_fingerprint(audio_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "ITEMS_PER_SHARD", 3)
    whole = prepare(
        str(audio_folder), "spectral-rvq", tmp_path / "a", max_seconds=2.0, codec_options=SMALL_CODEC, progress=False
    )
    assert whole.complete
    fingerprint = json.loads((tmp_path / "a" / "card.json").read_text())["fingerprint"]

    real = prepare_module._encode_shard
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if killed mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "_encode_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(
            str(audio_folder),
            "spectral-rvq",
            tmp_path / "b",
            max_seconds=2.0,
            codec_options=SMALL_CODEC,
            progress=False,
        )
    assert not (tmp_path / "b" / "card.json").exists()
    committed = sorted(p.name for p in (tmp_path / "b" / "shards").glob("*.jsonl"))
    assert committed == ["00000.jsonl", "00001.jsonl"]
    monkeypatch.setattr(prepare_module, "_encode_shard", real)
    encoded = []
    monkeypatch.setattr(prepare_module, "_encode_shard", lambda s, *a, **k: encoded.append(s) or real(s, *a, **k))
    again = prepare(
        str(audio_folder), "spectral-rvq", tmp_path / "b", max_seconds=2.0, codec_options=SMALL_CODEC, progress=False
    )
    assert again.complete and 0 not in encoded and 1 not in encoded  # finished shards were not redone
    assert json.loads((tmp_path / "b" / "card.json").read_text())["fingerprint"] == fingerprint


def test_prepare_shards_split_the_job(audio_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "ITEMS_PER_SHARD", 4)
    options = {"max_seconds": 2.0, "codec_options": SMALL_CODEC, "progress": False}
    prepare(str(audio_folder), "spectral-rvq", tmp_path / "a", **options)
    first = prepare(str(audio_folder), "spectral-rvq", tmp_path / "b", shard=(0, 2), **options)
    assert not first.complete and not (tmp_path / "b" / "card.json").exists()
    second = prepare(str(audio_folder), "spectral-rvq", tmp_path / "b", shard=(1, 2), **options)
    assert second.complete
    card = lambda d: json.loads((tmp_path / d / "card.json").read_text())  # noqa: E731
    assert card("a")["fingerprint"] == card("b")["fingerprint"]


def test_prepare_refuses_other_settings_in_same_dir(audio_folder, tmp_path):
    options = {"max_seconds": 2.0, "codec_options": SMALL_CODEC, "progress": False}
    prepare(str(audio_folder), "spectral-rvq", tmp_path / "a", **options)
    with pytest.raises(DataError, match="max_seconds"):
        prepare(str(audio_folder), "spectral-rvq", tmp_path / "a", **{**options, "max_seconds": 3.0})
    with pytest.raises(DataError, match="codec_options"):  # another codebook size would reuse the old codec
        prepare(str(audio_folder), "spectral-rvq", tmp_path / "a", **{**options, "codec_options": {"codebook_size": 8}})


def test_prepare_all_bad_fails_with_one_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"")
    (folder / "a.txt").write_text("caption")
    with pytest.raises(DiamusicError, match="no readable training audio|no usable clips"):
        prepare(str(folder), "spectral-rvq", tmp_path / "out", codec_options=SMALL_CODEC, progress=False)
    with pytest.raises(DataError, match="neither 'melodies' nor a folder"):
        prepare(str(tmp_path / "missing"), "spectral-rvq", tmp_path / "out2", progress=False)


def test_one_nan_sample_is_rejected_with_its_file_and_cannot_poison_the_codec(tmp_path):
    """A float WAV can hold NaN: it once went into the codec fit and made every codebook use one code."""
    from diamusic.codecs import CodecError, SpectralRVQCodec

    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(7):
        wave = tone(2.0, 220 * 2 ** (i / 7))
        if i == 3:
            wave[1000] = np.nan
        sf.write(folder / f"t{i}.wav", wave, 22050, subtype="FLOAT")
        (folder / f"t{i}.txt").write_text(f"tone {i}")
    prepare(str(folder), "spectral-rvq", tmp_path / "ds", codec_options=SMALL_CODEC, progress=False)
    rejected = [json.loads(line) for line in (tmp_path / "ds" / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [{"id": "t3.wav", "rejected": "non-finite samples (NaN or inf)"}]
    assert min(inspect(tmp_path / "ds")["codebook_used"]) > 1
    poisoned = tone(1.0, 300)
    poisoned[5] = np.inf
    with pytest.raises(CodecError, match="NaN or infinite samples"):
        SpectralRVQCodec.fit([tone(1.0, 220), poisoned], 22050, codebook_size=4, levels=2)


def test_prepare_melodies_and_inspect(tmp_path):
    out = tmp_path / "mel"
    result = prepare(
        "melodies", "spectral-rvq", out, limit=8, max_seconds=10.0, codec_options=SMALL_CODEC, progress=False
    )
    assert result.complete and result.clips >= 8 and result.hours > 0
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert all(r["text"] and r["frames"] > 0 for r in rows)
    for row in rows:  # the melody each clip plays, in the clip's own time, and what was rendered
        seconds = row["frames"] / json.loads((out / "card.json").read_text())["codec"]["frame_rate"]
        assert all(start >= 0 and start + d <= seconds + 0.05 for _, start, d in row["melody"])
        assert {"key", "texture", "melody_instrument", "tempo_bpm"} <= set(row["tags"])
    assert sum(bool(r["melody"]) for r in rows) >= 0.8 * len(rows)  # (a last clip may hold only the final chord)
    report = inspect(out, png=str(tmp_path / "inspect.png"))
    assert report["clips"] == len(rows)
    mix = report["mix"]
    assert sum(mix["texture"].values()) == len(rows) and set(mix["texture"]) <= {"solo", "accompanied"}
    assert sum(mix["melody_instrument"].values()) == len(rows) and mix["key"] and mix["tempo_bpm"]
    assert len(report["codebook_perplexity"]) == 9
    assert all(1.0 <= p <= 16 for p in report["codebook_perplexity"])
    assert (tmp_path / "inspect.png").stat().st_size > 1000


def test_step_batches_match_plan_and_crop(tmp_path):
    out = tmp_path / "mel"
    prepare("melodies", "spectral-rvq", out, limit=6, max_seconds=10.0, codec_options=SMALL_CODEC, progress=False)
    ds = CodesDataset(out, "train")
    pattern = DelayPattern.parse("musicgen")
    plan = BatchPlan(seed=0, batch_size=3, grad_accum=2, crop_frames=40, cfg_dropout=0.5)
    batches = StepBatches(ds, plan, pattern, start=0, steps=5)
    resumed = StepBatches(ds, plan, pattern, start=3, steps=5)
    assert len(batches) == 5 and len(resumed) == 2
    for a, b in zip(batches[3], resumed[0], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    micro = batches[0][0]
    assert micro["decoder_input_ids"].shape == (3, 40 + 1 + 8, 9)
    dropped = [d for _, _, d in plan.samples(0, 0, len(ds))]
    for i, drop in enumerate(dropped):
        # a dropped caption is the unconditional input: all-zero ids, only position 0 attended
        assert (micro["input_ids"][i].sum() == 0) == drop


TAGS = "piano, calm, 90 bpm, c major, solo, lofi"


def test_tag_captions_vary_per_sample_and_every_process_agrees():
    import dataclasses
    import statistics

    plan = BatchPlan(seed=3, batch_size=2, grad_accum=1, crop_frames=8, cfg_dropout=0.0)
    assert plan.caption(5, TAGS) == TAGS  # no tag options: the caption as it is
    mixed = dataclasses.replace(plan, tag_dropout=0.3, tag_shuffle=True, tag_limit=4)
    captions = [mixed.caption(n, TAGS) for n in range(400)]
    other_rank = dataclasses.replace(mixed, rank=1, world_size=2)  # a function of (seed, n): ranks, resumes agree
    assert captions == [other_rank.caption(n, TAGS) for n in range(400)]
    tags = TAGS.split(", ")
    for caption in captions:
        parts = caption.split(", ")
        assert 1 <= len(parts) <= 4 and set(parts) <= set(tags) and len(set(parts)) == len(parts)
    assert len(set(captions)) > 200 and len({c.split(", ")[0] for c in captions}) == 6  # orders vary
    dropping = dataclasses.replace(plan, tag_dropout=0.3)
    kept = [dropping.caption(n, TAGS).split(", ") for n in range(2000)]
    assert statistics.mean(len(k) for k in kept) / 6 == pytest.approx(0.7, abs=0.03)
    assert all(k == [t for t in tags if t in k] for k in kept)  # without shuffle the order stays
    reseeded = dataclasses.replace(dropping, seed=4)
    assert [reseeded.caption(n, TAGS).split(", ") for n in range(50)] != kept[:50]  # another seed, other draws
    # sentences keep their commas: the built-in corpus's captions are prose
    sentence = "A cheerful folk song (Db major, 3/4 time, 103 bpm), played on flute with accordion."
    assert mixed.caption(7, sentence) == sentence and mixed.caption(7, "a slow air") == "a slow air"


def test_tag_options_vary_training_batches_but_not_evaluation(tmp_path):
    import soundfile as sf

    from diamusic.data.dataset import fixed_batches

    (tmp_path / "audio").mkdir()
    for i in range(4):
        sf.write(tmp_path / "audio" / f"t{i}.wav", tone(1.5, 220 * (i + 1)), 22050)
        (tmp_path / "audio" / f"t{i}.txt").write_text(TAGS)
    prepare(str(tmp_path / "audio"), "spectral-rvq", tmp_path / "ds", codec_options=SMALL_CODEC, progress=False)
    ds, pattern = CodesDataset(tmp_path / "ds", None), DelayPattern.parse("musicgen")
    plan = BatchPlan(seed=0, batch_size=4, grad_accum=1, crop_frames=20, cfg_dropout=0.0, tag_limit=1)
    texts = [bytes(row[row > 0].tolist()).decode() for row in StepBatches(ds, plan, pattern, 0, 1)[0][0]["input_ids"]]
    assert texts == ["piano"] * 4
    fixed = fixed_batches(ds, 4, 1, pattern, 20)[0]["input_ids"]
    assert [bytes(row[row > 0].tolist()).decode() for row in fixed] == [TAGS] * 4


def test_dataset_keeps_only_recent_shards_open(audio_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "ITEMS_PER_SHARD", 2)
    prepare(
        str(audio_folder), "spectral-rvq", tmp_path / "ds", max_seconds=2.0, codec_options=SMALL_CODEC, progress=False
    )
    everything = CodesDataset(tmp_path / "ds", None)
    expected = [np.array(everything.codes(i)) for i in range(len(everything))]
    assert len({row["shard"] for row in everything.rows()}) > 2
    monkeypatch.setattr(dataset_module, "OPEN_SHARDS", 2)
    bounded = CodesDataset(tmp_path / "ds", None)
    for i in [*range(len(bounded)), 0, len(bounded) - 1]:
        assert np.array_equal(bounded.codes(i), expected[i])
        assert len(bounded._shards) <= 2


def test_prepare_encodes_in_turns_under_its_buffer_and_gives_the_same_dataset(audio_folder, tmp_path, monkeypatch):
    """With a buffer smaller than any input, each input's clips are encoded as soon as they are cut
    (never a whole shard of waves at once), and the dataset is the one an unbounded buffer gives."""
    from diamusic.codecs import SpectralRVQCodec

    options = {"max_seconds": 2.0, "codec_options": SMALL_CODEC, "progress": False}
    prepare(str(audio_folder), "spectral-rvq", tmp_path / "whole", **options)
    calls = []
    encode = SpectralRVQCodec.encode_batch

    def recorded(self, waves, sample_rate):
        calls.append(len(waves))
        return encode(self, waves, sample_rate)

    monkeypatch.setattr(SpectralRVQCodec, "encode_batch", recorded)
    monkeypatch.setattr(prepare_module, "ENCODE_BUFFER_BYTES", 1, raising=False)
    prepare(str(audio_folder), "spectral-rvq", tmp_path / "turns", **options)
    sources = {json.loads(line)["source"] for line in (tmp_path / "whole" / "index.jsonl").read_text().splitlines()}
    assert len(calls) == len(sources) > 5  # one input's clips at a time (one shard of 13 inputs here)
    cards = [json.loads((tmp_path / d / "card.json").read_text()) for d in ("whole", "turns")]
    assert cards[0]["fingerprint"] == cards[1]["fingerprint"]


def test_a_dataset_holds_clip_metadata_compactly_and_reads_the_rest_on_demand(melody_dataset, tmp_path):
    """Reference melodies and tags stay on disk: 2,000 clips with 100 notes each would otherwise
    hold ~40 MB of Python objects in every process and loader worker."""
    import tracemalloc

    shutil.copytree(melody_dataset, tmp_path / "ds")
    notes = [[60 + k % 12, k * 0.25, 0.25] for k in range(100)]
    rows = [{"id": f"s{i}#0", "text": f"tune {i}", "source": f"s{i}", "split": "train", "frames": 10, "offset": 0,
             "shard": 0, "final": True, "tags": {"key": "D major"}, "melody": notes} for i in range(2000)]  # fmt: skip
    (tmp_path / "ds" / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tracemalloc.start()
    data = CodesDataset(tmp_path / "ds")
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(data) == 2000 and held < 500 * len(data), held  # about 200 bytes a clip: the arrays and captions
    assert data.text(1234) == "tune 1234" and data.final(7) and data.codes(5).shape == (10, 9)
    assert data.row(1234) == rows[1234] and next(iter(data.rows())) == rows[0]


def test_only_the_final_clip_of_a_source_teaches_eos(audio_folder, tmp_path):
    """long.wav is cut into 3 clips: a whole middle clip must not end in EOS (the music goes on)."""
    prepare(
        str(audio_folder), "spectral-rvq", tmp_path / "ds", max_seconds=2.0, codec_options=SMALL_CODEC, progress=False
    )
    data = CodesDataset(tmp_path / "ds", None)
    index = {row["id"]: i for i, row in enumerate(data.rows())}
    pattern = DelayPattern.parse("dia")
    eos = data.vocab.eos
    for clip_id, ends in (("long.wav#0", False), ("long.wav#1", False), ("long.wav#2", True), ("good0.wav#0", True)):
        batch = make_batch(data, [(0, index[clip_id], False)], pattern, crop_frames=1000)  # the whole clip
        assert bool(batch["ends"][0]) == ends, clip_id
        assert int((batch["labels"] == eos).sum()) == (9 if ends else 0), clip_id


def test_a_dataset_without_final_clips_is_refused_then_updated_by_prepare(audio_folder, tmp_path):
    out = tmp_path / "ds"
    options = {"max_seconds": 2.0, "codec_options": SMALL_CODEC, "progress": False}
    prepare(str(audio_folder), "spectral-rvq", out, **options)
    expected = list(CodesDataset(out, None).rows())
    # as written before clips said whether they end their source
    card = json.loads((out / "card.json").read_text())
    del card["format"]
    (out / "card.json").write_text(json.dumps(card))
    for path in [out / "index.jsonl", *(out / "shards").glob("*.jsonl")]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "final"}) + "\n" for r in rows))
    with pytest.raises(DataError, match="older diamusic .*run the same prepare again"):
        CodesDataset(out)
    prepare(str(audio_folder), "spectral-rvq", out, **options)
    assert list(CodesDataset(out, None).rows()) == expected


def test_corpus_options_are_checked_before_anything_is_written(audio_folder, tmp_path):
    with pytest.raises(DiamusicError, match="unknown texture 'dense'"):
        prepare("melodies", "spectral-rvq", tmp_path / "a", limit=2, corpus={"texture": "dense"}, progress=False)
    with pytest.raises(DataError, match="only apply to the built-in melodies"):
        prepare(str(audio_folder), "spectral-rvq", tmp_path / "b", corpus={"renderer": "synth"}, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _pages(path) -> int:
    return -(-path.stat().st_size // 4096) * 4096  # what a file takes on tmpfs


@pytest.mark.parametrize("stage", ["free-space-check", "write"])
def test_prepare_on_a_full_disk_is_one_line_keeps_finished_shards_and_resumes(
    audio_folder, tmp_path, small_disk, monkeypatch, stage
):
    """A real filesystem with room for the codec and one shard where this process may mount one,
    else a patched one; after more room, the same prepare finishes with the same fingerprint."""
    import errno
    import pathlib
    from collections import namedtuple

    monkeypatch.setattr(prepare_module, "ITEMS_PER_SHARD", 3)
    options = {"max_seconds": 2.0, "codec_options": SMALL_CODEC, "progress": False}
    reference = tmp_path / "reference"
    prepare(str(audio_folder), "spectral-rvq", reference, **options)
    first = [*(reference / "codec").iterdir(), reference / "job.json", *(reference / "shards").glob("00000.*")]
    disk = small_disk.mount(sum(_pages(p) for p in first) + 4096)
    real_disk = disk is not None
    out = (disk or tmp_path / "disk") / "ds"
    if stage == "write":
        monkeypatch.setattr(prepare_module, "_check_space", lambda out, needed: None)
    if not real_disk and stage == "write":
        write_bytes = pathlib.Path.write_bytes

        def full(path, data):
            if path.name.startswith("00001.npy.tmp"):
                write_bytes(path, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return write_bytes(path, data)

        monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    if not real_disk and stage != "write":
        usage, real_usage = namedtuple("usage", "total used free"), prepare_module.shutil.disk_usage
        fake = lambda p: usage(0, 0, 100) if (out / "shards" / "00000.jsonl").exists() else real_usage(p)  # noqa: E731
        monkeypatch.setattr(prepare_module.shutil, "disk_usage", fake)

    with pytest.raises(DataError) as caught:
        prepare(str(audio_folder), "spectral-rvq", out, **options)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "no space left on device" in message.lower()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.jsonl", "00000.npy"]
    assert not list(out.rglob("*.tmp*")) and not (out / "card.json").exists()

    if real_disk:
        small_disk.resize(disk, 10 * 2**20)
    monkeypatch.undo()
    monkeypatch.setattr(prepare_module, "ITEMS_PER_SHARD", 3)
    assert prepare(str(audio_folder), "spectral-rvq", out, **options).complete
    card = lambda d: json.loads((d / "card.json").read_text())  # noqa: E731
    assert card(out)["fingerprint"] == card(reference)["fingerprint"]
    print(f"full disk: {'a real tmpfs' if real_disk else 'a patched writer'}")


KILL_PREPARE = """
import os, signal, sys
from diamusic.data import prepare as P
where, folder, out = sys.argv[1:4]
P.ITEMS_PER_SHARD = 3
die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9: no handler runs
if where == "encode":  # while encoding the third shard
    encode, calls = P._encode_shard, [0]
    def encode_then_die(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            die()
        return encode(*args, **kwargs)
    P._encode_shard = encode_then_die
else:  # shard 1's codes written, its row file (the mark of a finished shard) not yet
    write = P._atomic_write
    P._atomic_write = lambda path, data: die() if path.name == "00001.jsonl" else write(path, data)
P.prepare(folder, "spectral-rvq", out, max_seconds=2.0, codec_options={"codebook_size": 16}, progress=False)
"""


@pytest.mark.integration
@pytest.mark.parametrize("where", ["encode", "between-files"])
def test_prepare_killed_9_then_rerun_gives_the_same_dataset(audio_folder, tmp_path, monkeypatch, where):
    import subprocess
    import sys

    monkeypatch.setattr(prepare_module, "ITEMS_PER_SHARD", 3)
    options = {"max_seconds": 2.0, "codec_options": SMALL_CODEC, "progress": False}
    prepare(str(audio_folder), "spectral-rvq", tmp_path / "whole", **options)
    script = tmp_path / "kill_prepare.py"
    script.write_text(KILL_PREPARE)
    out = tmp_path / "killed"
    done = subprocess.run([sys.executable, str(script), where, str(audio_folder), str(out)], capture_output=True)
    assert done.returncode == -9, done.stderr[-2000:]
    assert not (out / "card.json").exists() and (out / "shards" / "00000.jsonl").exists()
    assert prepare(str(audio_folder), "spectral-rvq", out, **options).complete
    card = lambda d: json.loads((d / "card.json").read_text())  # noqa: E731
    assert card(out)["fingerprint"] == card(tmp_path / "whole")["fingerprint"]
    assert (out / "index.jsonl").read_bytes() == (tmp_path / "whole" / "index.jsonl").read_bytes()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["metadata.jsonl", "metadata.csv"]), st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_any_caption_manifest_is_read_or_refused_in_one_line(tmp_path_factory, name, content):
    from diamusic.data.sources import folder_items

    folder = tmp_path_factory.mktemp("manifest")
    sf.write(folder / "a.wav", tone(1.0, 440), 22050)
    (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    try:
        items = folder_items(folder)
    except DataError as exc:
        assert "\n" not in str(exc) and name in str(exc)
        return
    assert [item.id for item in items] == ["a.wav"]


@pytest.mark.parametrize(
    ("name", "content", "argv", "fragment"),
    [
        ("card.json", "{not json", ["data", "inspect", "{ds}"], "card.json: not valid JSON"),
        ("card.json", "{not json", ["train", "--data", "{ds}", "--out", "{tmp}/run"], "card.json: not valid JSON"),
        ("card.json", '{"format": 2}', ["data", "inspect", "{ds}"], "card.json: no fingerprint, codec"),
        ("index.jsonl", "{not json\n", ["data", "inspect", "{ds}"], "index.jsonl:1: not valid JSON"),
        ("index.jsonl", '{"id": "a"}\n', ["data", "inspect", "{ds}"], "index.jsonl:1: expected a clip with id"),
    ],
)
def test_a_damaged_dataset_file_is_one_line_exit_2(melody_dataset, tmp_path, capsys, name, content, argv, fragment):
    from diamusic.cli import main

    ds = tmp_path / "ds"
    shutil.copytree(melody_dataset, ds)
    (ds / name).write_text(content)
    code = main([a.format(ds=ds, tmp=tmp_path) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    with pytest.raises(DataError):
        CodesDataset(ds)


def _truncate(shard):
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _code_out_of_range(shard):
    codes = np.load(shard, mmap_mode="r+")
    codes[3, 2] = 40  # the dataset's codebooks hold 32 codes
    codes.flush()


def _code_changed_in_range(shard):
    codes = np.load(shard, mmap_mode="r+")
    codes[3, 2] = (int(codes[3, 2]) + 1) % 32
    codes.flush()


@pytest.mark.parametrize(
    ("damage", "fragment", "inspect_plain"),
    [
        (_truncate, "00000.npy: truncated", 2),
        (lambda shard: shard.unlink(), "00000.npy: missing", 2),
        (_code_out_of_range, "00000.npy: holds code 40, the codebook size is 32", 2),
        (_code_changed_in_range, "shards or index changed since prepare", 0),
    ],
    ids=["truncated", "missing", "out-of-range", "changed-in-range"],
)
def test_a_damaged_shard_is_found_before_training_writes_anything(
    melody_dataset, tmp_path, capsys, damage, fragment, inspect_plain
):
    from diamusic.cli import main

    ds = tmp_path / "ds"
    shutil.copytree(melody_dataset, ds)
    damage(ds / "shards" / "00000.npy")
    for argv, expected in [
        (["data", "inspect", str(ds)], inspect_plain),  # without --verify an in-range change goes unseen
        (["data", "inspect", str(ds), "--verify"], 2),
        (["train", "--data", str(ds), "--out", str(tmp_path / "run")], 2),
    ]:
        code = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == expected, (argv, lines)
        if expected == 2:
            assert len(lines) == 1 and fragment in lines[0] and "run the same prepare again" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_verify_recomputes_the_cards_fingerprint(melody_dataset, capsys):
    from diamusic.cli import main

    assert dataset_module.verify(melody_dataset) == CodesDataset(melody_dataset).fingerprint
    assert main(["data", "inspect", str(melody_dataset), "--verify"]) == 0
    assert "(verified: recomputed from the shards)" in capsys.readouterr().out


def test_a_damaged_job_file_is_one_line(audio_folder, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "job.json").write_text("{not json")
    with pytest.raises(DataError) as caught:
        prepare(str(audio_folder), "spectral-rvq", tmp_path / "ds", codec_options=SMALL_CODEC, progress=False)
    assert "job.json: not valid JSON" in str(caught.value) and "\n" not in str(caught.value)


def test_prepare_reports_its_encoding_speed_even_for_a_small_job(audio_folder, tmp_path, capsys):
    import re

    from diamusic.cli import main

    argv = ["prepare", "--source", str(audio_folder), "--out", str(tmp_path / "ds"), "--codebook-size", "16"]
    assert main([*argv, "--max-seconds", "2", "--quiet"]) == 0
    summary = capsys.readouterr().out
    found = re.search(r"encoded ([\d.]+) s of audio at ([\d.e+]+)x real time", summary)
    assert found and float(found[1]) > 10 and float(found[2]) > 1, summary
    assert main([*argv, "--max-seconds", "2", "--quiet"]) == 0
    assert "nothing left to encode" in capsys.readouterr().out


def test_repeated_and_orphan_metadata_rows_are_counted_in_one_warning(tmp_path, capsys):
    from diamusic.data.sources import folder_items

    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, tone(1.0, 440), 22050)
    rows = [("a.wav", "first"), ("b.wav", "b"), ("a.wav", "second"), ("gone.wav", "x"), ("gone2.wav", "y")]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file": f, "text": t}) + "\n" for f, t in rows))
    items = folder_items(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 rows repeat a file named before (the last one counts), 2 name no audio file" in err[0]
    assert [item.load().caption for item in items] == ["second", "b"]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file": f, "text": t}) + "\n" for f, t in rows[:2]))
    folder_items(tmp_path)
    assert capsys.readouterr().err == ""


# --- stereo ----------------------------------------------------------------------------------------


def test_stereo_encodes_each_side_separately_and_copies_a_mono_source(stereo_folder, stereo_dataset, tmp_path):
    from diamusic.codecs import load_codec

    card = json.loads((stereo_dataset / "card.json").read_text())
    assert card["codec"]["audio_channels"] == 2 and card["mono_sources_copied"] == 1
    assert json.loads((stereo_dataset / "job.json").read_text())["channels"] == "stereo"
    rejected = [json.loads(line) for line in (stereo_dataset / "rejected.jsonl").open()]
    reason = "3 audio channels: a stereo dataset takes mono or stereo audio"
    assert rejected == [{"id": "surround.wav", "rejected": reason}]
    data = CodesDataset(stereo_dataset, split=None)
    assert data.vocab == AudioVocab(32, 9, audio_channels=2) and data.vocab.num_streams == 18
    codec = load_codec(stereo_dataset / "codec")
    sources = [r["source"] for r in data.rows()]
    for i, source in enumerate(sources):
        codes = data.codes(i)
        assert codes.shape[1] == 18
        if source == "mono.wav":
            assert np.array_equal(codes[:, :9], codes[:, 9:])
            continue
        audio, rate = sf.read(stereo_folder / source, dtype="float32")
        assert not np.array_equal(codes[:, :9], codes[:, 9:])  # a tone left, another right
        for side in range(2):  # left's codebooks, then right's: each side is the codec's codes of that side
            assert np.array_equal(codes[:, 9 * side : 9 * (side + 1)], codec.encode(audio[:, side], rate))
    # the same folder as mono: sides averaged (all three of the surround file's), 9 codebooks
    prepare(str(stereo_folder), "spectral-rvq", tmp_path / "mono", codec_options={"codebook_size": 32}, progress=False)
    mono = json.loads((tmp_path / "mono" / "card.json").read_text())
    assert mono["codec"]["audio_channels"] == 1 and mono["clips"] == 8 and "mono_sources_copied" not in mono
    assert CodesDataset(tmp_path / "mono", split=None).codes(0).shape[1] == 9


def test_inputs_with_a_skipped_tag_are_left_out_and_recorded(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    captions = {"a.wav": "piano, calm", "b.wav": "pop, Vocals , upbeat", "c.wav": "speech"}
    captions["d.wav"] = "a song with vocals"
    for i, (name, text) in enumerate(captions.items()):
        sf.write(folder / name, tone(1.0, 220 + 40 * i), 22050)
        (folder / name).with_suffix(".txt").write_text(text)
    out = tmp_path / "data"
    skip = ["vocals", " SPEECH"]
    prepare(str(folder), "spectral-rvq", out, codec_options=SMALL_CODEC, skip_tags=skip, progress=False)
    rejected = {json.loads(line)["id"]: json.loads(line)["rejected"] for line in (out / "rejected.jsonl").open()}
    assert rejected == {"b.wav": "skipped: tagged 'vocals'", "c.wav": "skipped: tagged 'speech'"}
    assert {r["source"] for r in CodesDataset(out, split=None).rows()} == {"a.wav", "d.wav"}  # tags, not words
    assert json.loads((out / "job.json").read_text())["skip_tags"] == ["speech", "vocals"]
    with pytest.raises(DataError, match="prepared with skip_tags"):
        prepare(str(folder), "spectral-rvq", out, codec_options=SMALL_CODEC, progress=False)


def test_a_file_without_a_caption_is_tagged_from_its_path_unless_captions_are_required(tmp_path):
    from diamusic.data.sources import path_caption

    assert path_caption("Jazz/solo_piano/take-3 2024.wav") == "jazz, solo piano, take"
    assert path_caption("01/track_07.flac") == "track" and path_caption("2024/07.wav") == ""
    folder = tmp_path / "audio"
    (folder / "folk" / "fiddle").mkdir(parents=True)
    (folder / "misc").mkdir()
    sf.write(folder / "folk" / "fiddle" / "reel_1.wav", tone(1.0, 440), 22050)
    sf.write(folder / "misc" / "07.wav", tone(1.0, 330), 22050)
    for i in range(3):  # captioned files, so the strict run has audio to fit its codec on whatever the split
        sf.write(folder / f"captioned{i}.wav", tone(1.0, 262 + 20 * i), 22050)
        (folder / f"captioned{i}.txt").write_text(f"a tone, its own caption {i}")
    prepare(str(folder), "spectral-rvq", tmp_path / "derived", codec_options=SMALL_CODEC, progress=False)
    texts = {r["source"]: r["text"] for r in CodesDataset(tmp_path / "derived", split=None).rows()}
    assert texts == {"folk/fiddle/reel_1.wav": "folk, fiddle, reel", "misc/07.wav": "misc",
                     **{f"captioned{i}.wav": f"a tone, its own caption {i}" for i in range(3)}}  # fmt: skip
    prepare(str(folder), "spectral-rvq", tmp_path / "strict", codec_options=SMALL_CODEC, require_caption=True,
            progress=False)  # fmt: skip
    rejected = [json.loads(line) for line in (tmp_path / "strict" / "rejected.jsonl").open()]
    assert {r["id"] for r in rejected} == {"folk/fiddle/reel_1.wav", "misc/07.wav"}
    assert all(r["rejected"] == "no caption (metadata.jsonl/csv entry or sidecar .txt)" for r in rejected)


def test_automatic_tags_go_where_the_captions_mode_says_and_are_kept_apart(tmp_path):
    from diamusic.clap import ClapError
    from diamusic.data.inspect import mix

    folder = tmp_path / "audio"
    (folder / "folk").mkdir(parents=True)
    for i in range(3):
        sf.write(folder / f"given{i}.wav", tone(2.0, 262 + 20 * i), 22050)
        (folder / f"given{i}.txt").write_text(f"a tone, its own caption {i}")
    sf.write(folder / "folk" / "untitled.wav", tone(2.0, 440), 22050)
    runs = {}
    for mode in ("auto-missing", "auto"):
        prepare(str(folder), "spectral-rvq", tmp_path / mode, codec_options=SMALL_CODEC, captions=mode, progress=False)
        runs[mode] = {r["source"]: r for r in CodesDataset(tmp_path / mode, split=None).rows()}
    missing, every = runs["auto-missing"], runs["auto"]
    untitled = missing["folk/untitled.wav"]
    assert untitled["text"] == "folk, untitled, " + ", ".join(untitled["auto_tags"]) and untitled["caption_derived"]
    tempo, key = untitled["auto_tags"][:2]
    assert tempo.endswith(" bpm") and key.endswith(("major", "minor"))
    assert all("auto_tags" not in missing[f"given{i}.wav"] for i in range(3))  # their own captions, untouched
    assert every["given0.wav"]["text"] == "a tone, its own caption 0, " + ", ".join(every["given0.wav"]["auto_tags"])
    assert json.loads((tmp_path / "auto" / "card.json").read_text())["captions_auto"] == 4
    assert json.loads((tmp_path / "auto-missing" / "job.json").read_text())["captions"] == "auto-missing"
    assert mix(missing.values())["captions"] == {"given": 3, "from the path + tags from the audio": 1}
    for bad, message in [({"captions": "all"}, "captions must be one of keep, auto, auto-missing"),
                         ({"tagger_clap": "x"}, "needs captions auto or auto-missing")]:  # fmt: skip
        with pytest.raises(DataError, match=message):
            prepare(str(folder), "spectral-rvq", tmp_path / "bad", codec_options=SMALL_CODEC, progress=False, **bad)
    with pytest.raises(ClapError, match="cannot load the CLAP model"):
        prepare(str(folder), "spectral-rvq", tmp_path / "bad", captions="auto", tagger_clap=str(tmp_path / "none"))
    assert not (tmp_path / "bad").exists()


def test_an_audiofolders_metadata_with_its_caption_column_prepares_like_our_own(tmp_path):
    """Hugging Face's audiofolder names the file `file_name` and the caption any column (--text-column)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        for i in range(4):
            sf.write(folder / f"t{i}.wav", tone(1.5, 262 + 30 * i), 22050)
    (ours / "metadata.jsonl").write_text("".join(json.dumps({"file": f"t{i}.wav", "text": f"tone {i}"}) + "\n"
                                                 for i in range(4)))  # fmt: skip
    rows = "".join(f"t{i}.wav,tone {i},x\n" for i in range(4))
    (theirs / "metadata.csv").write_text("file_name,caption,other\n" + rows)
    prepare(str(ours), "spectral-rvq", tmp_path / "a", codec_options=SMALL_CODEC, progress=False)
    prepare(str(theirs), "spectral-rvq", tmp_path / "b", codec_options=SMALL_CODEC, text_column="caption",
            progress=False)  # fmt: skip
    a, b = CodesDataset(tmp_path / "a", split=None), CodesDataset(tmp_path / "b", split=None)
    assert [r["text"] for r in a.rows()] == [r["text"] for r in b.rows()] == [f"tone {i}" for i in range(4)]
    assert all(np.array_equal(a.codes(i), b.codes(i)) for i in range(len(a)))
    with pytest.raises(DataError, match=r"needs the columns 'file' \(or 'file_name'\) and 'text'"):
        prepare(str(theirs), "spectral-rvq", tmp_path / "c", codec_options=SMALL_CODEC, progress=False)
    assert not (tmp_path / "c" / "card.json").exists()
