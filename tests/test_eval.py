import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from diamusic import eval as evaluation
from diamusic.tokens import AudioVocab

SR = 22050
VOCAB = AudioVocab(codebook_size=32, num_codebooks=9)
SMALL = {"codebook_size": 16}


def notes(midis: list[float], seconds: float = 0.4) -> np.ndarray:
    """Harmonic tones back to back (3 partials), one per (possibly fractional) MIDI pitch."""
    n = int(seconds * SR)
    f = np.repeat([440.0 * 2 ** ((m - 69) / 12) for m in midis], n)
    phase = 2 * np.pi * np.cumsum(f) / SR
    return (0.5 * np.sin(phase) + 0.2 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase)).astype(np.float32)


def test_melody_metrics_on_tones_with_known_pitch_and_key():
    c_major = notes([60, 62, 64, 65, 67, 69, 71, 72])
    m = evaluation.melody_metrics(c_major, SR, "C major")
    assert m["in_key_ratio"] > 0.9 and m["in_tune_ratio"] > 0.85 and m["voiced_ratio"] > 0.8  # glides blur a few
    assert m["note_rate"] == pytest.approx(1 / 0.4, rel=0.3)
    cluster = notes([61, 63, 66, 68, 70, 61, 63, 66])  # the black keys: out of C major
    assert evaluation.melody_metrics(cluster, SR, "C major")["in_key_ratio"] < 0.1
    detuned = notes([60.4, 62.4, 64.4, 65.4])  # 40 cents sharp: in no semitone's 25-cent band
    assert evaluation.melody_metrics(detuned, SR, None)["in_tune_ratio"] < 0.2


def test_melody_agreement_against_reference_notes():
    wave = notes([60, 64, 67, 72])
    right = [[60, 0.0, 0.4], [64, 0.4, 0.4], [67, 0.8, 0.4], [72, 1.2, 0.4]]
    wrong = [[p + 2, s, d] for p, s, d in right]
    assert evaluation.melody_agreement(wave, SR, right) > 0.85
    assert evaluation.melody_agreement(wave, SR, wrong) < 0.1
    assert math.isnan(evaluation.melody_agreement(wave, SR, []))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unvoiced clip (an untrained model's) scores 0 without a warning
        assert evaluation.melody_agreement(np.zeros_like(wave), SR, right) == 0.0


def test_distribution_scores_are_zero_for_identical_sets_and_grow_apart():
    g = np.random.default_rng(0)
    a = g.normal(size=(6, 50))
    assert evaluation.frechet_diagonal(a, a) == pytest.approx(0.0, abs=1e-9)
    shifted = a + a.std(0)  # every feature moved by one real standard deviation
    assert evaluation.frechet_diagonal(shifted, a) == pytest.approx(50.0, rel=1e-6)
    # features count in units of their real spread: rescaling one (MFCC energy vs chroma) changes nothing
    stretched = np.ones(50)
    stretched[0] = 1000.0
    assert evaluation.frechet_diagonal(shifted * stretched, a * stretched) == pytest.approx(50.0, rel=1e-6)
    codes = [g.integers(0, 32, (100, 9)) for _ in range(3)]
    assert max(evaluation.usage_divergence(codes, codes, 32)) < 1e-6
    constant = [np.zeros((100, 9), dtype=np.int64)]
    assert (
        0.5
        < min(evaluation.usage_divergence(constant, codes, 32))
        <= max(evaluation.usage_divergence(constant, codes, 32))
        <= math.log(2)
    )


def test_eval_prompts_take_one_clip_per_source_first():
    class Clips:
        names = [f"{s}{k}" for s, k in ["a0", "a1", "a2", "b0", "c0", "c1"]]
        sources = np.array([ord(name[0]) for name in names])

        def text(self, i: int) -> str:
            return self.names[i]

        def row(self, i: int) -> dict:
            return {"source": self.names[i][0], "text": self.names[i]}

        def codes(self, i: int) -> np.ndarray:
            return np.zeros((4, 9), dtype=np.int64)

    assert [p.text for p in evaluation.eval_prompts(Clips(), 3)] == ["a0", "b0", "c0"]
    assert [p.text for p in evaluation.eval_prompts(Clips(), 5)] == ["a0", "b0", "c0", "a1", "a2"]


def test_evaluate_run_reports_every_metric(tiny_run, tmp_path):
    result = evaluation.evaluate_run(tiny_run, prompts=2, seconds=0.3, device="cpu", out=tmp_path / "e.json")
    # the musicgen run's interior starts at its max delay + 1, where every codebook has a real frame in context
    assert (tmp_path / "e.json").exists() and result["checkpoint"] == "step_000010" and result["edge_frames"] == 9
    for prefix in ("eval/", "train_subset/"):
        for part in ("", "interior/", "edge/"):
            assert 0 < result[f"{prefix}{part}loss"] < 10, prefix + part
            assert f"{prefix}{part}loss/cb8" in result and f"{prefix}{part}entropy" in result
    assert result["eval/gap"] == pytest.approx(result["eval/loss"] - result["train_subset/loss"])
    keys = ["train/loss", "train/loss_noise", "gen/frames_per_s", "gen/real_time_factor", "gen/decode_steps"]
    keys += ["gen/voiced_ratio", "gen/chroma_cosine", "gen/usage_js", "gen/usage_js/cb8", "machine/load_average"]
    keys += ["gen/clipping_ratio", "gen/silence_ratio"]
    for key in keys:
        assert key in result and not math.isnan(result[key]), key
    # the research log's checkpoint scores; beat and key need more than 0.3 s to say anything
    assert {"gen/dynamic_range_db", "gen/beat_stability", "gen/key_consistency"} <= set(result)
    assert result["gen/clips"] == 2 and "gen/frechet_features" not in result  # 2 clips: too few for a distance
    assert result["model/max_delay"] == 8 and result["model/parameters"] > 0
    assert result["eval/clips"] == result["train_subset/clips"] > 0
    assert result["eval/targets"] == result["eval/interior/targets"] + result["eval/edge/targets"]


def test_generations_with_no_pitch_are_counted_not_scored(tiny_run, monkeypatch):
    """A generation pyin finds no voiced frame in has no pitch to score: counted (the summary's note), and its
    pitch metrics are missing rather than a number; its voiced ratio is 0."""
    from diamusic import pitch

    def unvoiced(wave, rate):
        times = np.arange(1 + len(wave) // 512) * 512 / rate
        return times, np.zeros_like(times), np.zeros(len(times), dtype=bool)

    monkeypatch.setattr(pitch, "pitch_track", unvoiced)
    evaluation._track_of.cache_clear()
    result = evaluation.evaluate_run(tiny_run, prompts=2, seconds=0.3, device="cpu")
    evaluation._track_of.cache_clear()
    assert result["gen/unvoiced_clips"] == 2 and result["gen/voiced_ratio"] == 0.0
    assert math.isnan(result.get("gen/in_tune_ratio", math.nan))


def test_a_continuation_is_scored_against_what_the_clip_does_after_the_prompt(tiny_run, tmp_path, monkeypatch):
    """An oracle that continues with the clip's own next frames scores 1 on chroma and key (and tempo
    where the clip has a pulse) and the clip's own melody agreement; the model's continuation is written
    beside the clip for listening."""
    from diamusic.runs import load_run

    run = load_run(tiny_run, device="cpu")
    prompts = evaluation.eval_prompts(evaluation.CodesDataset(run.info["dataset"], "eval"), 2)
    real = evaluation.continuation_metrics(run, prompts, 0.5, 0.6, tmp_path)
    assert real["cont/clips"] == 2
    assert {"cont/chroma_cosine", "cont/key_agreement", "cont/melody_agreement"} <= set(real)
    assert (tmp_path / "cont_00.wav").exists() and (tmp_path / "cont_ref_01.wav").exists()
    head = round(0.5 * run.codec.frame_rate)

    def oracle(model, texts, pattern, vocab, sampling, options=None, prompt=None):
        clip = next(p.reference for p in prompts if np.array_equal(p.reference[:head], prompt))
        return SimpleNamespace(codes=[clip[head : head + sampling.max_frames]])

    monkeypatch.setattr(evaluation, "generate_codes", oracle)
    best = evaluation.continuation_metrics(run, prompts, 0.5, 0.6)
    assert best["cont/chroma_cosine"] == pytest.approx(1.0) and best["cont/key_agreement"] == 1.0
    assert best["cont/tempo_agreement"] == 1.0 or math.isnan(best["cont/tempo_agreement"])
    # the notes are timed from the prompt's end: the clip's own continuation follows them better than the
    # untrained model's (the 32-code test codec keeps little of the melody, so the clip's own is far from 1)
    assert best["cont/melody_agreement"] > real["cont/melody_agreement"]


def test_clap_scores_and_fad_join_the_evaluation_and_a_missing_model_only_leaves_them_out(
    tiny_run, tiny_clap_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(evaluation, "FRECHET_MIN_CLIPS", 2)  # FAD from 2 clips here (30 in use)
    result = evaluation.evaluate_run(tiny_run, prompts=2, seconds=0.3, device="cpu", clap_model=str(tiny_clap_dir))
    for key in ("gen/clap_score", "gen/reference_clap_score"):
        assert -1 <= result[key] <= 1, key
    assert result["gen/fad_clap"] >= 0 and "gen/frechet_features" in result
    missing = evaluation.evaluate_run(tiny_run, prompts=2, seconds=0.3, device="cpu", clap_model=str(tmp_path / "x"))
    assert "cannot load the CLAP model" in capsys.readouterr().err
    assert "gen/clap_score" not in missing and missing["eval/loss"] == result["eval/loss"]
    assert missing["gen/voiced_ratio"] == result["gen/voiced_ratio"]


def test_logged_eval_losses_equal_diamusic_eval_of_the_checkpoint(ragged_dataset, tmp_path):
    """Training's evaluation and `diamusic eval` are one computation: with EOS left out of the loss
    (which eval used to count anyway) the last logged losses are those of the final checkpoint.
    Crops of 128 frames hold whole clips (1.2 s at most), so the final ones end with EOS."""
    from diamusic.config import load_config
    from diamusic.tracking import read_metrics
    from diamusic.train import train

    sets = {"data.path": str(ragged_dataset), "steps": 3, "batch_size": 2, "data.crop_frames": 128,
            "data.eos_in_loss": False, "data.eos_crop_share": 1.0, "eval.clips": 4, "eval.every": 3,
            "checkpoints.every": 3}  # fmt: skip
    train(load_config("tiny-cpu", overrides=sets), tmp_path / "run", progress=False)
    logged = [row for row in read_metrics(tmp_path / "run") if "eval/loss" in row][-1]
    result = evaluation.evaluate_run(tmp_path / "run", prompts=0, device="cpu")
    for key in ("eval/loss", "eval/loss/cb0", "eval/entropy", "train_subset/loss", "eval/gap"):
        assert result[key] == pytest.approx(logged[key], rel=1e-6), key


def test_eval_cli_prints_and_writes(tiny_run, tiny_clap_dir, tmp_path, capsys):
    import json

    from diamusic.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(tiny_run), "--prompts", "1", "--seconds", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step_000010" in printed and "eval/interior/loss" in printed
    default = json.loads(out.read_text())
    assert default["checkpoint"] == "step_000010" and default["edge_frames"] == 9
    # an edge set by hand (as an ablation of patterns up to max delay 15 uses) is recorded with the losses
    assert main(["eval", "--run", str(tiny_run), "--prompts", "0", "--edge", "16", "--out", str(out)]) == 0
    wider = json.loads(out.read_text())
    assert wider["edge_frames"] == 16 and wider["eval/interior/targets"] < default["eval/interior/targets"]
    assert wider["eval/loss"] == default["eval/loss"]  # the edge splits the targets, it does not change them
    assert main(["eval", "--run", str(tmp_path), "--prompts", "0"]) == 2  # not a run: one line
    assert capsys.readouterr().err.startswith("diamusic: error:")
    more = ["--continuation", "0.5", "--clap-model", str(tiny_clap_dir)]
    assert main(["eval", "--run", str(tiny_run), "--prompts", "1", "--seconds", "0.3", *more]) == 0
    printed = capsys.readouterr().out
    assert all(f"{k} " in printed for k in ("gen/clipping_ratio", "gen/clap_score", "cont/chroma_cosine")), printed


@pytest.mark.integration
def test_a_run_whose_eval_split_is_empty_is_evaluated_on_its_train_subset(tmp_path, capsys):
    import json

    import soundfile as sf

    from diamusic.cli import main
    from diamusic.config import load_config
    from diamusic.data.prepare import prepare
    from diamusic.train import train

    # one source: prepare puts nothing in the eval split, which the config allows
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "a.wav", notes([60, 62, 64, 65, 67, 65, 64, 62, 60, 67], 0.5), SR)
    (tmp_path / "audio" / "a.txt").write_text("a scale up and down")
    prepare(str(tmp_path / "audio"), "spectral-rvq", tmp_path / "ds", max_seconds=2.0, codec_options=SMALL)
    overrides = {"data.path": str(tmp_path / "ds"), "steps": 2, "batch_size": 2, "data.crop_frames": 24}
    overrides |= {"eval.every": 2, "checkpoints.every": 2, "samples.every": 0, "tracking.backends": []}
    train(load_config("tiny-cpu", overrides=overrides), tmp_path / "run", progress=False)
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(tmp_path / "run"), "--prompts", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: the eval split is empty" in printed and "train_subset/loss" in printed
    result = json.loads(out.read_text())
    assert "eval/loss" not in result and not any(k.startswith("gen/") for k in result)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    at_end = [row for row in logged if "train_subset/loss" in row][-1]
    assert at_end["step"] == 2 and result["train_subset/loss"] == pytest.approx(at_end["train_subset/loss"], rel=1e-6)
