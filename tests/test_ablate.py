"""The ablation and `diamusic demo`: the plan, resuming, the statistics table, end to end on a few melodies."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diamusic import ablate
from diamusic import eval as eval_module
from diamusic.ablate import AblationError, markdown, parse_patterns, run_name, summarise, summary_json
from diamusic.errors import DiamusicError

DIAMUSIC = str(Path(sys.executable).parent / "diamusic")
TINY = {"steps": 4, "batch_size": 2, "data.crop_frames": 40, "eval.clips": 2, "eval.every": 4}
TINY |= {"checkpoints.every": 2, "logging.every": 1, "optim.warmup_steps": 1}


def test_pattern_lists_group_custom_delays_by_codebook_count():
    parsed = parse_patterns("dia,0,0,0,1,1,1,2,2,2,musicgen", 9)
    assert [run_name(p) for p in parsed] == ["dia", "custom-0-0-0-1-1-1-2-2-2", "musicgen"]
    with pytest.raises(AblationError, match="last custom pattern has 3 of 9 delays"):
        parse_patterns("dia,0,1,2", 9)
    with pytest.raises(AblationError, match="the same pattern twice"):
        parse_patterns("dia,0,8,9,10,11,12,13,14,15", 9)


def summary_of(results: dict, reference: str = "dia", metrics=None) -> dict:
    rows = summarise(results, reference, metrics)
    names = {"dia": [0, *range(8, 16)], "musicgen": list(range(9)), "compressed": [0, 0, 1, 1, 2, 2, 3, 3, 4]}
    seeds = sorted(next(iter(results.values())))
    plan = ablate.Plan("", [names[n] for n in results], seeds, {}, 0, 0.0, reference)
    return summary_json(rows, plan, results)


def test_a_primary_row_names_a_winner_only_where_the_holm_adjusted_test_says_so():
    def run(loss, entropy, steps=None):
        out = {"eval/loss": loss, "train/entropy": entropy, "eval/loss/cb0": loss}
        return out | ({"gen/decode_steps": steps, "gen/stopped_on_eos": 0.0} if steps else {})

    # musicgen's loss is lower on every seed by about 0.1; its entropy differences change sign
    results = {
        "dia": {0: run(3.0, 2.0, 275), 1: run(3.5, 2.5, 275), 2: run(2.8, 2.2, 275)},
        "musicgen": {0: run(2.9, 2.1, 268), 1: run(3.41, 2.4, 268), 2: run(2.69, 2.25, 268)},
    }
    rows = {r.key: r for r in summarise(results, "dia")}
    assert rows["eval/loss"].winner == "musicgen" and rows["train/entropy"].winner is None
    loss = rows["eval/loss"].versus("musicgen", "dia")
    # differences -0.1, -0.09, -0.11: t = -0.1 / (0.01 / sqrt 3) = -17.32, df 2: p = 1 - |t| / sqrt(t^2 + 2)
    assert loss.difference.mean == pytest.approx(-0.1)
    assert loss.p == pytest.approx(1 - 17.3205 / math.sqrt(17.3205**2 + 2), rel=1e-4)
    # two primary comparisons in the family (eval loss, train entropy): Holm doubles the smaller p
    entropy = rows["train/entropy"].versus("musicgen", "dia")
    assert loss.p_adjusted == pytest.approx(min(1.0, 2 * loss.p))
    assert entropy.p_adjusted == pytest.approx(max(entropy.p, 2 * loss.p))
    # an exploratory row with the same evidence names no winner; decode steps are exact, not compared
    assert rows["eval/loss/cb0"].kind == "exploratory" and rows["eval/loss/cb0"].winner is None
    steps = rows["gen/decode_steps"]
    assert steps.kind == "exact" and steps.winner is None and steps.comparisons == [] and "stopped on EOS" in steps.note
    assert "gen/in_key_ratio" not in rows  # a metric no run has is left out, not shown as nan
    table = markdown(summary_of(results))
    line = next(x for x in table.splitlines() if x.startswith("| eval loss ↓"))
    assert "| -0.100 ± 0.025 (d -0.3, p 0.007) * | musicgen |" in line  # s of the differences 0.01
    assert next(x for x in table.splitlines() if x.startswith("| output entropy (train)")).count("no clear winner") == 1
    assert "| decode steps | 275 | 268 | no generation stopped on EOS" in table


def test_the_summary_names_runs_that_stopped_early():
    reason = "the eval gap 0.6000 exceeds early_stop.max_gap 0.5"
    stopped = {"eval/loss": 3.1, "early_stop": {"step": 180, "reason": reason}}
    results = {"dia": {0: {"eval/loss": 3.0}, 1: stopped}, "musicgen": {0: {"eval/loss": 2.9}, 1: {"eval/loss": 3.0}}}
    expected = f"Stopped early (early_stop), scored at that step: dia seed 1 at step 180 ({reason})."
    assert expected in summary_of(results)["notes"]
    results["dia"][1] = {"eval/loss": 3.1}
    assert not any("Stopped early" in n for n in summary_of(results)["notes"])


def test_the_summary_says_when_runs_used_different_thread_counts():
    """On CPU the last digits of a run's numbers follow its thread count: a table mixing them says so."""
    results = {n: {s: {"eval/loss": 3.0 + s, "machine/threads": 1} for s in (0, 1)} for n in ("dia", "musicgen")}
    assert not any("threads" in n for n in summary_of(results)["notes"])
    results["dia"][1]["machine/threads"] = 2
    assert any(n.startswith("Runs used different numbers of CPU threads (1, 2)") for n in summary_of(results)["notes"])


def test_the_summary_counts_the_generations_with_no_pitch_to_score():
    """Instead of a library warning per clip: one note that says how many, and what it does to the means."""
    results = {n: {s: {"eval/loss": 3.0 + s, "gen/clips": 3, "gen/unvoiced_clips": 0} for s in (0, 1)}
               for n in ("dia", "musicgen")}  # fmt: skip
    assert not any("voiced" in n for n in summary_of(results)["notes"])
    results["dia"][1]["gen/unvoiced_clips"], results["musicgen"][0]["gen/unvoiced_clips"] = 2, 1
    notes = [n for n in summary_of(results)["notes"] if "voiced" in n]
    assert notes == [
        "No voiced frames in 3 of 12 generations: no pitch to score, so their in-key ratio, in-tune ratio and "
        "pitch stability are left out of the means (their voiced ratio counts as 0)."
    ]


def test_pure_noise_over_28_primary_rows_declares_winners_at_most_at_the_family_wise_rate():
    rng = np.random.default_rng(0)
    metrics = [ablate.Metric(f"m{i}", f"metric {i}", True, primary=True) for i in range(28)]
    simulations, winners, uncorrected = 200, 0, 0
    for _ in range(simulations):
        results = {n: {s: {m.key: float(rng.normal()) for m in metrics} for s in range(3)} for n in ("dia", "musicgen")}
        rows = summarise(results, "dia", metrics)
        winners += sum(r.winner is not None for r in rows)
        uncorrected += sum(c.p < ablate.ALPHA for r in rows for c in r.comparisons)
    # the expected number of winners per table is at most the family-wise rate (binomial slack: 3 sd);
    # without the correction the same tables declare 28 x 5% = 1.4 per table
    assert winners / simulations <= ablate.ALPHA + 3 * math.sqrt(ablate.ALPHA / simulations)
    assert uncorrected / simulations > 1.0


@pytest.mark.integration
def test_ablation_writes_every_file_resumes_and_refuses_other_settings(melody_dataset, tmp_path, monkeypatch):
    calls = []
    real_train = ablate.train

    def killed_in_the_third_run(config, run_dir, resume=False, progress=True):
        calls.append((Path(run_dir).parent.name, config.seed, resume))
        if len(calls) == 3:  # killed after step 2 of the third run (a checkpoint exists there)
            real_train(config, run_dir, resume=resume, progress=progress, stop_after=2)
            raise KeyboardInterrupt
        return real_train(config, run_dir, resume=resume, progress=progress)

    monkeypatch.setattr(ablate, "train", killed_in_the_third_run)
    scored = []  # what each run's evaluation scored: (pattern, captions, labels) per split
    real_scoring = eval_module.teacher_forced

    def recorded(model, batches, pattern, vocab, edge=None, **kwargs):
        texts = torch.cat([b["input_ids"] for b in batches])
        scored.append((pattern.name, edge, texts, torch.cat([b["labels"] for b in batches])))
        return real_scoring(model, batches, pattern, vocab, edge, **kwargs)

    monkeypatch.setattr(eval_module, "teacher_forced", recorded)
    args = (melody_dataset, tmp_path / "ab", "musicgen,dia", 2)
    settings = {"overrides": TINY, "prompts": 1, "seconds": 0.3, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        ablate.ablate(*args, **settings)
    result = ablate.ablate(*args, **settings)
    # seed-major order; the finished runs were not trained again, the killed one resumed
    assert calls == [("musicgen", 0, False), ("dia", 0, False), ("musicgen", 1, False), ("musicgen", 1, True),
                     ("dia", 1, False)]  # fmt: skip
    plan = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    assert plan["patterns"] == [list(range(9)), [0, 8, 9, 10, 11, 12, 13, 14, 15]] and plan["seeds"] == [0, 1]
    for name in ("musicgen", "dia"):
        for seed in (0, 1):
            run = tmp_path / "ab" / "runs" / name / f"seed{seed}"
            evaluation = json.loads((run / "eval.json").read_text())
            assert evaluation["edge_frames"] == 16 and evaluation["checkpoint"] == "step_000004"
            assert json.loads((run / "run.json").read_text())["config"]["seed"] == seed
    # every run is scored on the same clips whatever its seed: the same captions for every pattern, the
    # same labels for every seed of a pattern, at the edge of the most delayed pattern + 1
    assert len(scored) == 2 * 4 and {edge for _, edge, _, _ in scored} == {16}
    for split in (0, 1):  # eval, then the train subset, for each run
        runs = scored[split::2]
        assert all(torch.equal(texts, runs[0][2]) for _, _, texts, _ in runs)
        for name in ("musicgen", "dia"):
            labels = [lab for n, _, _, lab in runs if n == name]
            assert len(labels) == 2 and torch.equal(labels[0], labels[1])
    summary = json.loads((tmp_path / "ab" / "summary.json").read_text())
    assert summary["notes"][0].startswith("Every run is scored on the same 2 eval clips")
    eval_loss = next(m for m in summary["metrics"] if m["key"] == "eval/loss")
    assert set(eval_loss["per_pattern"]) == {"musicgen", "dia"} and eval_loss["per_pattern"]["dia"]["n"] == 2
    assert "| eval loss, interior frames ↓ |" in (tmp_path / "ab" / "summary.md").read_text()
    assert [r.key for r in result.rows][:2] == ["train/loss", "eval/loss"]
    # within a seed both patterns started from the same weights and saw the same first batch
    first = {n: json.loads((tmp_path / "ab" / "runs" / n / "seed0" / "metrics.jsonl").open().readline()) for n in
             ("musicgen", "dia")}  # fmt: skip
    assert first["musicgen"]["train/eos_share"] == first["dia"]["train/eos_share"]
    calls.clear()
    ablate.ablate(*args, **settings)  # everything finished: nothing is trained, the table is rewritten
    assert calls == []
    with pytest.raises(AblationError, match="other settings \\(patterns") as refused:
        ablate.ablate(melody_dataset, tmp_path / "ab", "musicgen,dia,compressed", 2, **settings)
    assert refused.value.option == "force"  # the CLI's way out: --force


@pytest.mark.integration
def test_runs_that_stop_early_are_scored_at_their_last_step_and_not_trained_again(
    melody_dataset, tmp_path, monkeypatch
):
    calls = []
    real_train = ablate.train

    def counted(config, run_dir, **kwargs):
        calls.append(run_dir)
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(ablate, "train", counted)
    # lr 1e-9: no evaluation after the first improves on it, so patience 1 stops each run at step 4 of 8
    stop = {"steps": 8, "eval.every": 2, "optim.lr": 1e-9, "early_stop.patience": 1, "early_stop.min_delta": 0.01}
    args = (melody_dataset, tmp_path / "ab", "musicgen,dia", 1)
    settings = {"overrides": {**TINY, **stop}, "prompts": 0, "progress": False}
    ablate.ablate(*args, **settings)
    ablate.ablate(*args, **settings)  # finished: the early stop counts as the end, nothing trains again
    assert len(calls) == 2
    for name in ("musicgen", "dia"):
        evaluation = json.loads((tmp_path / "ab" / "runs" / name / "seed0" / "eval.json").read_text())
        assert evaluation["checkpoint"] == "step_000004" and evaluation["early_stop"]["step"] == 4
    notes = json.loads((tmp_path / "ab" / "summary.json").read_text())["notes"]
    first = "Stopped early (early_stop), scored at that step: musicgen seed 0 at step 4"
    assert any(n.startswith(first) for n in notes), notes


def test_an_interrupted_run_stops_the_ablation_in_one_line_with_the_signals_status(melody_dataset, tmp_path, capsys,
                                                                                   monkeypatch):  # fmt: skip
    """SIGTERM (or Ctrl-C) inside a run: its checkpoint is saved and the ablation says so and stops (exit
    128 + signal), rather than going on to evaluate a step the run never reached (an error, exit 2)."""
    import signal

    from diamusic.cli import main
    from diamusic.train import TrainResult

    def stopped(config, run_dir, resume=False, progress=True):
        return TrainResult(Path(run_dir), 3, True, {}, {}, True, signal.SIGTERM)

    monkeypatch.setattr(ablate, "train", stopped)
    argv = ["ablate", "--data", str(melody_dataset), "--out", str(tmp_path / "ab"), "--patterns", "musicgen,dia"]
    assert main([*argv, "--seeds", "1", "--steps", "4", "--quiet"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert "stopped at step 3 of 4" in err[-1] and "run the same command again" in err[-1], err


def demo_args(out: Path, *extra: str) -> list[str]:
    # one seed: the seeds' statistics are the ablation's (test_ablation_writes_every_file...), not the demo's
    args = ["demo", "--out", str(out), "--melodies", "8", "--steps", "4", "--seeds", "1", "--quiet"]
    # one run at a time: four-step runs are over before their processes' imports would be (the launcher: test_launch)
    args += ["--prompts", "1", "--seconds", "1", "--parallel", "1"]
    return [*args, "--set", "batch_size=2", "--set", "eval.clips=2", "--set", "samples.seconds=0.2", *extra]


def demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([DIAMUSIC, *demo_args(out, *extra)], capture_output=True, text=True, timeout=900)


@pytest.mark.integration
def test_demo_trains_every_pattern_and_seed_and_writes_the_table(tmp_path, capsys):
    first = demo(tmp_path / "demo", "--patterns", "musicgen,dia")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "fitting" in first.stderr and "training" in first.stderr  # what a re-run must not say
    out = tmp_path / "demo" / "ablation"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patterns"] == {"musicgen": list(range(9)), "dia": [0, 8, 9, 10, 11, 12, 13, 14, 15]}
    loss = next(m for m in summary["metrics"] if m["key"] == "train/loss")
    for name in ("musicgen", "dia"):
        assert 0 < loss["per_pattern"][name]["mean"] < 10 and loss["per_pattern"][name]["n"] == 1
        run = out / "runs" / name / "seed0"
        wavs = sorted((run / "samples" / "step_000004").glob("sample_*.wav"))
        assert wavs and all(np.isfinite(sf.read(w)[0]).all() for w in wavs)
    assert "| eval loss ↓ |" in first.stdout and "musicgen - dia" in first.stdout
    # each run continued the eval clips from their first second: rows in the table, players in the report
    keys = {m["key"] for m in summary["metrics"]}
    assert {"cont/chroma_cosine", "cont/key_agreement", "gen/clipping_ratio", "gen/silence_ratio"} <= keys
    assert list((out / "runs" / "dia" / "seed0" / "generated").glob("cont_*.wav"))
    page = (out / "report.html").read_text()
    assert "continuations of the first 1.0 s" in page and "generated/cont_ref_00.wav" in page
    # a re-run (here in this process: a second process's imports would cost more than its work) reuses
    # the data and the finished runs: the same table, nothing refitted or retrained
    from diamusic.cli import main

    assert main(demo_args(tmp_path / "demo", "--patterns", "musicgen,dia")) == 0
    again = capsys.readouterr()
    assert "| eval loss ↓ |" in again.out and "fitting" not in again.err and "training" not in again.err
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.parametrize(
    ("patterns", "message"),
    [("musicgen,0,2,1", "the last custom pattern has 3 of 9 delays"), ("musicgen,dai", "did you mean 'dia'?")],
)
def test_demo_refuses_a_bad_pattern_before_any_work(tmp_path, capsys, patterns, message):
    from diamusic.cli import main

    assert main(demo_args(tmp_path / "demo", "--patterns", patterns)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()


def test_nan_free_table_for_one_seed():
    rows = summarise({"dia": {0: {"eval/loss": 3.0}}, "musicgen": {0: {"eval/loss": 2.0}}}, "dia")
    assert rows[0].winner is None and math.isnan(rows[0].versus("musicgen", "dia").difference.low)


def test_demo_runs_its_plan_and_refuses_a_bad_pattern_first(tmp_path, monkeypatch):
    from diamusic import demo
    from diamusic.data.prepare import PrepareResult
    from diamusic.launch import Local

    calls = []
    prepared = PrepareResult(8, 0.01, 0, 1.0, 30.0, 1.0, True)
    monkeypatch.setattr(demo, "prepare", lambda **kwargs: calls.append(("prepare", kwargs)) or prepared)
    monkeypatch.setattr(demo, "ablate", lambda **kwargs: calls.append(("ablate", kwargs)))
    plan = demo.demo_plan(tmp_path, ["dia", "musicgen"], 8, 30, 2, ["batch_size=4"], parallel=1)
    demo.demo(plan, progress=False)
    assert calls == [("prepare", {**plan.prepare, "progress": False}),
                     ("ablate", {**plan.ablate, "progress": False, "launcher": None})]  # fmt: skip
    assert plan.prepare["limit"] == 8 and plan.prepare["codec"] == "spectral-rvq"
    assert plan.ablate["overrides"]["steps"] == 30 and plan.ablate["seeds"] == 2
    assert plan.report == plan.ablate["out"] == tmp_path / "ablation"
    demo.demo(dataclasses.replace(plan, parallel=2), progress=False)  # two runs at once: the local launcher
    assert isinstance(calls[-1][1]["launcher"], Local) and calls[-1][1]["launcher"].parallel == 2
    with pytest.raises(DiamusicError, match="has 3 delays but the codec has 9 codebooks"):
        demo.demo_plan(tmp_path, ["dia", "0,2,1"])


def test_a_stereo_plan_names_its_patterns_and_an_older_plan_file_still_resumes(tmp_path):
    """A stereo ablation's runs are named by the per-side pattern (its plan holds the full 18 delays),
    and a plan.json written before a setting existed reads that setting as its default."""
    from diamusic.config import load_config

    parsed = parse_patterns("dia,musicgen,0,2,4,6,8,10,12,14,16", 9, audio_channels=2)
    config = ablate.plan_config(load_config("tiny-cpu"))
    plan = ablate.Plan("d", [p.to_list() for p in parsed], [0], config, 1, 1.0, "dia", audio_channels=2)
    assert [run_name(p) for p in plan.delay_patterns] == ["dia", "musicgen", "custom-0-2-4-6-8-10-12-14-16"]
    assert all(p.num_streams == 18 for p in plan.delay_patterns)
    losses = {s: {f"eval/loss/cb{c}": float(c + s) for c in range(18)} for s in (0, 1)}
    labels = [r.label for r in ablate.summarise({"dia": losses, "musicgen": losses}, "dia", audio_channels=2)]
    assert labels == [f"eval loss, {side} codebook {c}" for side in ("left", "right") for c in range(9)]
    mono = ablate.Plan("d", [list(range(9))], [0], config, 1, 1.0, "musicgen")
    older = json.loads(json.dumps(dataclasses.asdict(mono)))
    del older["audio_channels"], older["config"]["data"]["channels"]  # as a plan written last month
    (tmp_path / ablate.PLAN_FILE).write_text(json.dumps(older))
    assert ablate.fix_plan(tmp_path, mono, force=False) == mono
    with pytest.raises(AblationError, match="other settings \\(patterns, reference, audio_channels\\)"):
        ablate.fix_plan(tmp_path, plan, force=False)


def test_an_ablation_says_which_run_it_is_on_what_each_gave_and_how_long_is_left(melody_dataset, tmp_path, capsys):
    """Output that is not a terminal (captured): a header per run with its place, a result line after each with
    its losses and time, the time left from the runs so far, a start and an end line for each evaluation, and the
    bars as plain lines, no carriage-return redraws."""
    settings = {"overrides": {**TINY, "eval.every": 4}, "prompts": 0, "progress": True}
    ablate.ablate(melody_dataset, tmp_path / "ab", "musicgen,dia", 1, **settings)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert any("step/s" in ln for ln in err.splitlines())  # the bar, a line at a time
    assert "evaluating musicgen seed 0...\n" in err and "evaluating dia seed 0: done in " in err
    lines = [ln for ln in err.splitlines() if ln.startswith("== run")]
    assert lines[0] == "== run 1/2: training musicgen [0,1,2,3,4,5,6,7,8] seed 0 =="
    assert lines[1].startswith("== run 1/2 done: musicgen seed 0, train loss ") and ", eval loss " in lines[1]
    assert " left ==" in lines[1] and lines[2].startswith("== run 2/2: training dia")
    assert lines[3].startswith("== run 2/2 done: dia seed 0") and "left" not in lines[3]
    evaluation = json.loads((tmp_path / "ab" / "runs" / "dia" / "seed0" / "eval.json").read_text())
    assert f"eval loss {evaluation['eval/loss']:.3f}" in lines[3]
    ablate.ablate(melody_dataset, tmp_path / "ab", "musicgen,dia", 1, **settings)
    assert not [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("== run")]  # nothing to run


def test_the_time_left_counts_only_runs_trained_now_and_runs_at_once():
    parsed = parse_patterns("dia,musicgen,compressed", 9)
    plan = ablate.Plan("", [p.to_list() for p in parsed], [0, 1], {"steps": 4}, 0, 0.0, "dia")
    clock = ablate.RunClock(plan, Path("/nonexistent"), ablate.runs_of(plan), at_once=2)
    assert clock.place() == "run 1/6: "
    # 65 s per run x 5 runs left / 2 at once = 162.5 s
    assert clock.finish(parsed[0], 0, 65.0).endswith("no evaluation, 1 min 05 s; about 2 min 42 s left ==")
    assert clock.place() == "run 2/6: "
