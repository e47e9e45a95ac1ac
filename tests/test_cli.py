"""The CLI as a user meets it: exit codes, one-line errors, and the real console script."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

DIAMUSIC = str(Path(sys.executable).parent / "diamusic")


def console(*args: str) -> subprocess.CompletedProcess:
    """The installed console script in its own process (a few seconds of imports each)."""
    return subprocess.run([DIAMUSIC, *args], capture_output=True, text=True, timeout=120)


def run(*args: str) -> SimpleNamespace:
    """`main` in this process, as the console script calls it: exit code and both streams."""
    from diamusic.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors and --help
            code = exc.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.mark.integration
def test_console_script_shows_a_pattern_and_debug_shows_a_traceback():
    # the installed entry point, in a process of its own (a shown pattern: test_patterns_show_musicgen)
    result = console("--debug", "patterns", "show", "0,2,1")
    assert result.returncode == 2 and "Traceback" in result.stderr
    result = console("patterns", "show", "0,2,1")
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_patterns_show_musicgen():
    result = run("patterns", "show", "musicgen")
    assert result.returncode == 0
    assert "max delay 8" in result.stdout and "extra decode steps vs parallel: 8" in result.stdout


def test_patterns_list_has_presets():
    result = run("patterns", "list")
    assert result.returncode == 0
    for name in ("dia", "musicgen", "compressed", "parallel"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [("0,2,1", "has 3 delays but the codec has 9 codebooks"), ("1,2,3,4,5,6,7,8,9", "needs a codebook with delay 0")],
)
def test_bad_pattern_is_one_line_and_nonzero(pattern, fragment):
    result = run("patterns", "show", pattern)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


def test_debug_shows_traceback():
    result = run("--debug", "patterns", "show", "0,2,1")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_patterns_png(tmp_path):
    result = run("patterns", "show", "dia", "--png", str(tmp_path / "g.png"))
    assert result.returncode == 0 and (tmp_path / "g.png").stat().st_size > 1000


def test_train_without_dataset_is_one_line(tmp_path):
    result = run("train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    assert "not a prepared dataset" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_set_is_one_line(tmp_path):
    result = run("train", "--out", str(tmp_path / "run"), "--set", "optim.lrr=3")
    assert result.returncode != 0 and "unknown config key 'optim.lrr'" in result.stderr


@pytest.mark.integration
def test_train_cli_fine_tunes_a_local_checkpoint_into_another_pattern(melody_dataset, tmp_path, capsys):
    from diamusic.cli import main
    from diamusic.data.dataset import CodesDataset
    from diamusic.model import build_model
    from diamusic.patterns import DelayPattern

    vocab = CodesDataset(melody_dataset).vocab
    build_model("tiny", DelayPattern.parse("dia"), vocab).save_pretrained(tmp_path / "ckpt")
    args = ["train", "--data", str(melody_dataset), "--out", str(tmp_path / "run"), "--quiet"]
    args += ["--init", "pretrained", "--pretrained", str(tmp_path / "ckpt"), "--delay-pattern", "musicgen"]
    args += ["--steps", "2", "--batch-size", "2", "--set", "data.crop_frames=16", "--set", "eval.clips=2"]
    assert main(args) == 0
    assert "step 2" in capsys.readouterr().out
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["model"]["init"] == "pretrained" and info["pattern"]["name"] == "musicgen"
    assert any("switched from dia" in note for note in info["notes"])


def test_a_bug_is_reported_as_internal_not_as_the_users_mistake(monkeypatch, capsys):
    from diamusic import cli

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(cli, "cmd_patterns_list", broken)
    assert cli.main(["patterns", "list"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diamusic: internal error: KeyError") and "--debug" in err[0]
    assert cli.main(["patterns", "show", "0,2,1"]) == 2  # a user's mistake stays a plain one-line error
    assert capsys.readouterr().err.startswith("diamusic: error: delay pattern")


def test_patterns_show_counts_decode_steps():
    result = run("patterns", "show", "dia", "--decode-steps", "5")
    assert result.returncode == 0 and "step  0  1  2  3  4\n" in result.stdout


def test_defaults_stay_and_help_shows_them(capsys, monkeypatch):
    from diamusic.cli import build_parser, main

    monkeypatch.setenv("COLUMNS", "1000")  # help lines unwrapped

    parser = build_parser()
    gen = parser.parse_args(["generate", "--run", "r", "--text", "t", "--out", "o"])
    sampling = (gen.cfg_scale, gen.cfg_filter_top_k, gen.temperature, gen.top_p, gen.seed, gen.seconds)
    assert sampling == (3.0, 45, 1.0, None, 0, 10.0) and (gen.num, gen.cache, gen.checkpoint) == (1, "static", "latest")
    prep = parser.parse_args(["prepare", "--source", "s", "--out", "o"])
    assert (prep.codec, prep.max_seconds, prep.eval_fraction, prep.seed, prep.shard) == (
        "spectral-rvq", 30.0, 0.05, 0, (0, 1)
    )  # fmt: skip
    ev = parser.parse_args(["eval", "--run", "r"])
    assert (ev.checkpoint, ev.prompts, ev.seconds) == ("latest", 4, 4.0)
    ab = parser.parse_args(["ablate", "--data", "d", "--out", "o"])
    assert (ab.config, ab.patterns, ab.seeds, ab.prompts, ab.seconds, ab.reference) == (
        "tiny-cpu", "dia,musicgen,compressed", 3, 4, 4.0, "dia"
    )  # fmt: skip
    demo = parser.parse_args(["demo"])
    assert (str(demo.out), demo.patterns, demo.melodies, demo.steps, demo.seeds) == (
        "runs/demo", "dia,musicgen,compressed", 80, 300, 3
    )  # fmt: skip
    show = parser.parse_args(["patterns", "show", "dia"])
    assert (show.codebooks, show.decode_steps) == (9, 20)
    assert parser.parse_args(["train", "--out", "o"]).config == "tiny-cpu"
    for command, shown in [
        ("generate", ["a grid with the other lists (default: 3.0)", "(default: 45)", "(default: static)"]),
        ("prepare", ["(default: 30.0)", "(default: 0.05)", "(default: 0/1)", "(default: 1024)"]),
        ("ablate", ["(default: dia,musicgen,compressed)", "(default: tiny-cpu)"]),
        ("demo", ["(default: runs/demo)", "(default: dia,musicgen,compressed)", "(default: 300)"]),
    ]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(s in text for s in shown), (command, text)
        assert "(default: None)" not in text and "(default: False)" not in text


def test_demo_commands_do_what_the_demo_does(tmp_path, monkeypatch, capsys):
    import functools
    import inspect
    from types import SimpleNamespace

    from diamusic import cli, report
    from diamusic.ablate import ablate, parse_patterns
    from diamusic.config import load_config, to_dict
    from diamusic.data.prepare import PrepareResult, prepare
    from diamusic.demo import demo_plan

    calls = {}

    def record(name, function, result):
        @functools.wraps(function)  # the parser reads its defaults from what it calls
        def call(*args, **kwargs):
            bound = inspect.signature(function).bind(*args, **kwargs)
            bound.apply_defaults()
            calls[name] = {k: v for k, v in bound.arguments.items() if k != "progress"}
            return result

        return call

    (tmp_path / "summary.md").write_text("the table")
    monkeypatch.setattr(cli, "prepare", record("prepare", prepare, PrepareResult(1, 0.1, 0, 1.0, 1.0, 1.0, True)))
    monkeypatch.setattr(cli, "ablate", record("ablate", ablate, SimpleNamespace(summary=tmp_path / "summary.md")))
    monkeypatch.setattr(report, "write_report", record("report", report.write_report, tmp_path / "index.html"))
    plan = demo_plan(tmp_path / "demo", ["dia", "musicgen"], 80, 300, 3, ["batch_size=4", "eval.every=7"])
    for command in cli.demo_commands(plan):
        assert command.startswith("diamusic ") and cli.main(command.split()[1:]) == 0

    planned = inspect.signature(prepare).bind(**plan.prepare)
    planned.apply_defaults()
    del planned.arguments["progress"]
    assert calls["prepare"] == {**planned.arguments, "out": str(plan.prepare["out"])}
    ran, planned = calls["ablate"], plan.ablate
    assert ran["data"] == str(planned["data"]) and ran["out"] == str(planned["out"])
    assert parse_patterns(ran["patterns"], 9) == parse_patterns(planned["patterns"], 9)
    # the same training config, though the command line says some of it with --set
    configs = [load_config(a["config"], {**a["overrides"], "data.path": ""}, a["sets"]) for a in (ran, planned)]
    assert to_dict(configs[0]) == to_dict(configs[1]) and configs[0].eval.every == 7
    for key in ("seeds", "prompts", "seconds"):
        assert ran[key] == planned[key], key
    assert (ran["launcher"].parallel if ran["launcher"] else 1) == plan.parallel
    assert calls["report"] == {"out": str(plan.report)}


BAD_INPUT = [
    # generate: lengths, sampling settings, text, run and checkpoint
    (["generate", "--run", "{run}", "--text", "x", "--seconds", "0"], "expected a finite number of seconds > 0"),
    (["generate", "--run", "{run}", "--text", "x", "--seconds", "-1"], "expected a finite number of seconds > 0"),
    (["generate", "--run", "{run}", "--text", "x", "--seconds", "nan"], "expected a finite number of seconds > 0"),
    (["generate", "--run", "{run}", "--text", "x", "--seconds", "1e9"], "decoder positions; the model has"),
    (["generate", "--run", "{run}", "--text", "x", "--checkpoint", "abc"], "expected a step number or 'latest'"),
    (["generate", "--run", "{run}", "--text", ""], "empty text"),
    (["generate", "--run", "{run}", "--text", "x", "--temperature", "-1"], "temperature must be"),
    (["generate", "--run", "{run}", "--text", "x", "--top-p", "2"], "top_p must be in (0, 1]"),
    (["generate", "--run", "{run}", "--text", "x", "--cfg-scale", "inf"], "cfg_scale must be a finite number"),
    (["generate", "--run", "{run}", "--text", "x", "--cfg-filter-top-k", "-3"], "cfg_filter_top_k must be"),
    (["generate", "--run", "{run}", "--text", "x", "--cache", "dynamic", "--compile"], "needs the static cache"),
    (["generate", "--run", "{run}", "--text", "x", "--num", "0"], "expected a positive integer"),
    (["generate", "--run", "{data}", "--text", "x"], "is not a run directory"),
    (["generate", "--run", "{tmp}/missing", "--text", "x"], "is not a run directory"),
    (["generate", "--run", "{run}", "--text", "x", "--device", "cdua"], "--device cdua: not a device name"),
    (["generate", "--run", "{run}", "--text", "x", "--device", "cuda:99"], "--device cuda:99: "),
    (["eval", "--run", "{run}", "--device", "tpu"], "--device tpu: "),
    # train: numbers, keys, types, patterns, config files, paths
    (["train", "--data", "{data}", "--steps", "0"], "steps must be > 0"),
    (["train", "--data", "{data}", "--batch-size", "0"], "batch_size must be > 0"),
    (["train", "--data", "{data}", "--lr", "nan"], "optim.lr must be a finite number > 0"),
    (["train", "--data", "{data}", "--set", "optim.lrr=3"], "unknown config key 'optim.lrr'"),
    (["train", "--data", "{data}", "--set", "steps=abc"], "steps: expected an integer"),
    (["train", "--data", "{data}", "--set", "batch_size=1.5"], "batch_size: expected an integer"),
    (["train", "--data", "{data}", "--set", "samples.every=1", "--set", "samples.seconds=1e6"],
     "samples.seconds 1e+06"),
    (["train", "--data", "{data}", "--delay-pattern", "0,1,2"], "has 3 delays but the codec has 9 codebooks"),
    (["train", "--data", "{data}", "--delay-pattern", "1,2,3,4,5,6,7,8,9"], "needs a codebook with delay 0"),
    (["train", "--data", "{data}", "--config", "{tmp}/missing.yaml"], "no config file or preset"),
    (["train", "--data", "{data}", "--config", "{bad_yaml}"], "not valid YAML"),
    (["train", "--data", "{data}", "--config", "{list_yaml}"], "expected a mapping of config keys"),
    (["train", "--data", "{tmp}/missing"], "not a prepared dataset"),
    (["train", "--data", "{run}"], "not a prepared dataset"),
    (["train", "--data", "{data}", "--steps", "x"], "argument --steps: invalid int value"),
    (["train", "--data", "{data}", "--batch-size", "1000000000"], "GiB is available here: lower batch_size"),
    (["train", "--data", "{data}", "--set", "grad_accum=10000000000"], "GiB is available here: lower grad_accum"),
    (["train", "--data", "{data}", "--set", "codebook_weights=[0,0,0,0,0,0,0,0,0]"], "codebook_weights are all 0"),
    # prepare: every option checked before job.json
    (["prepare", "--source", "melodies", "--codec", "mp3"], "unknown codec 'mp3'"),
    (["prepare", "--source", "melodies", "--codebook-size", "0"], "codebook_size must be an integer >= 2"),
    (["prepare", "--source", "melodies", "--max-seconds", "0"], "expected a finite number of seconds > 0"),
    (["prepare", "--source", "melodies", "--max-seconds", "0.2"], "max_seconds must be > 0.5"),
    (["prepare", "--source", "melodies", "--eval-fraction", "2"], "eval_fraction must be in [0, 1)"),
    (["prepare", "--source", "melodies", "--limit", "0"], "expected a positive integer"),
    (["prepare", "--source", "melodies", "--renderer", "nope"], "unknown renderer 'nope'"),
    (["prepare", "--source", "melodies", "--shard", "3/2"], "expected i/n with 0 <= i < n"),
    (["prepare", "--source", "{tmp}/missing"], "neither 'melodies' nor a folder"),
    # eval, ablate, report, data, patterns
    (["generate", "--run", "{run}", "--text", "x", "--prompt-audio", "{tmp}/missing.wav"],
     "cannot read the prompt audio"),
    (["generate", "--run", "{run}", "--text", "x", "--prompt-audio", "{low_wav}"], "under half the codec's"),
    (["generate", "--run", "{run}", "--text", "x", "--keep-prompt"], "need --prompt-audio FILE"),
    (["eval", "--run", "{run}", "--prompts", "-1"], "expected an integer >= 0"),
    (["eval", "--run", "{run}", "--seconds", "0"], "expected a finite number of seconds > 0"),
    (["eval", "--run", "{run}", "--checkpoint", "7"], "no checkpoint at step 7"),
    (["eval", "--run", "{data}"], "is not a run directory"),
    (["ablate", "--data", "{data}", "--patterns", "dia,nope"], "unknown delay pattern 'nope'"),
    (["ablate", "--data", "{data}", "--patterns", "1,2,3"], "the last custom pattern has 3 of 9 delays"),
    (["ablate", "--data", "{data}", "--seeds", "0"], "expected a positive integer"),
    (["ablate", "--data", "{data}", "--prompts", "-1"], "expected an integer >= 0"),
    (["ablate", "--data", "{tmp}/missing"], "not a prepared dataset"),
    (["report", "{data}"], "holds no finished ablation"),
    (["data", "inspect", "{run}"], "not a prepared dataset"),
    (["patterns", "show", "0,1"], "has 2 delays but the codec has 9 codebooks"),
    (["patterns", "nope"], "invalid choice: 'nope'"),
]
OUT = {"generate": "--out", "train": "--out", "prepare": "--out", "ablate": "--out", "eval": "--out"}


@pytest.mark.parametrize(("argv", "fragment"), BAD_INPUT, ids=[" ".join(a)[:70] for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, fragment, tiny_run, melody_dataset, tmp_path, capsys):
    from diamusic.cli import main

    (tmp_path / "bad.yaml").write_text("steps: [\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    places = {"run": tiny_run, "data": melody_dataset, "tmp": tmp_path}
    places |= {"bad_yaml": tmp_path / "bad.yaml", "list_yaml": tmp_path / "list.yaml"}
    sf.write(tmp_path / "low.wav", np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 8000)
    places["low_wav"] = tmp_path / "low.wav"
    argv = [a.format(**places) for a in argv]
    if argv[0] in OUT:  # the destination a command would write: it must not appear
        argv += [OUT[argv[0]], str(tmp_path / "out" / ("x.json" if argv[0] == "eval" else ""))]
    shared_before = {p: sorted(p.rglob("*")) for p in (tiny_run, melody_dataset)}
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert "Traceback" not in lines[0]
    assert not (tmp_path / "out").exists()
    assert {p: sorted(p.rglob("*")) for p in (tiny_run, melody_dataset)} == shared_before


def test_control_characters_from_a_run_file_are_printed_escaped(tiny_run, tmp_path, capsys):
    import json
    import shutil

    from diamusic.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run.json").read_text())
    info["dataset"] = "/gone/\x1b]0;owned\x07\x1b[2J\u009b31m"  # set the title, clear the screen, C1 CSI
    (run / "run.json").write_text(json.dumps(info))
    assert main(["eval", "--run", str(run), "--prompts", "0"]) == 2
    err = capsys.readouterr().err
    assert "is gone" in err and not any(c in err for c in "\x1b\x07\u009b")
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m" in err


@pytest.mark.integration
def test_a_stereo_folder_prepares_trains_generates_and_evaluates_in_stereo(stereo_folder, melody_dataset, tmp_path):
    """Tones that differ left and right: `prepare --channels stereo`, a tiny `train`, `generate` writes
    2-channel WAVs, `eval` scores the mid signal, each side and the width; a stereo run cannot resume on
    a mono dataset, nor take a pattern of another length."""
    import soundfile as sf

    data, runs = tmp_path / "data", tmp_path / "run"
    prepared = run("prepare", "--source", str(stereo_folder), "--out", str(data), "--channels", "stereo",
                   "--codebook-size", "32", "--quiet")  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    shown = run("data", "inspect", str(data))
    perplexities = shown.stdout.split("per codebook (left's, then right's):")[1].split("\n")[0].split()
    assert "codec spectral-rvq, stereo" in shown.stdout and len(perplexities) == 18
    sets = ["--set", "data.crop_frames=32", "--set", "eval.every=6", "--set", "checkpoints.every=6"]
    trained = run("train", "--data", str(data), "--out", str(runs), "--config", "tiny-cpu", "--steps", "6",
                  "--batch-size", "2", "--delay-pattern", "middle-out", "--quiet", *sets)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    info = json.loads((runs / "run.json").read_text())
    assert info["pattern"]["delays"] == [4, 3, 2, 1, 0, 1, 2, 3, 4] * 2 and info["codec"]["audio_channels"] == 2
    made = run("generate", "--run", str(runs), "--text", "two tones", "--seconds", "0.3", "--out", str(tmp_path / "g"))
    assert made.returncode == 0, made.stderr
    audio, _ = sf.read(tmp_path / "g" / "gen_00.wav")
    assert audio.ndim == 2 and audio.shape[1] == 2 and np.load(tmp_path / "g" / "gen_00.npy").shape[1] == 18
    scored = run("eval", "--run", str(runs), "--prompts", "1", "--seconds", "0.3", "--out", str(tmp_path / "e.json"))
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "e.json").read_text())
    for key in ("gen/voiced_ratio", "gen/left/voiced_ratio", "gen/right/voiced_ratio", "gen/side_correlation"):
        assert key in metrics, key
    assert metrics["gen/reference_side_correlation"] < 0.5  # the references' sides are different tones
    assert "eval/loss/cb17" in metrics  # one loss per stream: left's 9, then right's

    resumed = run("train", "--data", str(melody_dataset), "--out", str(runs), "--config", "tiny-cpu", "--steps",
                  "8", "--resume", "--force", "--quiet")  # fmt: skip
    assert resumed.returncode == 2 and "mono" in resumed.stderr and "stereo" in resumed.stderr, resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1
    odd = run("train", "--data", str(data), "--out", str(tmp_path / "odd"), "--delay-pattern", "0,1,2,3,4,5,6,7,8,9")
    assert odd.returncode == 2 and "(9 repeated per side, or 18)" in odd.stderr
    assert not (tmp_path / "odd").exists()


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["patterns", "show", "musicgne"], "did you mean 'musicgen'?"),
        (["patterns", "show", "middleout"], "did you mean 'middle-out'?"),
        (["train", "--out", "{tmp}/run", "--config", "tiny-cpuu"], "did you mean 'tiny-cpu'?"),
        (["train", "--out", "{tmp}/run", "--set", "optim.lrr=1e-3"], "did you mean 'optim.lr'?"),
        (["train", "--out", "{tmp}/run", "--model", "smal"], "did you mean 'small'?"),
        (["prepare", "--source", "melodies", "--out", "{tmp}/d", "--codec", "spectral-rv"], "'spectral-rvq'?"),
    ],
)
def test_a_mistyped_name_is_one_line_that_suggests_the_closest(argv, suggestion, tmp_path, capsys):
    from diamusic.cli import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert suggestion in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_every_option_of_every_command_has_help_and_shows_its_default():
    import argparse

    from diamusic.cli import build_parser

    def parsers(parser, name="diamusic"):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from parsers(child, f"{name} {sub}")

    missing, hidden = [], []
    for name, parser in parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {action.option_strings[-1]}"
            if not (action.help or "").strip():
                missing.append(flag)
            shown = formatter._get_help_string(action) or ""
            if action.default not in (None, False, [], argparse.SUPPRESS) and "(default" not in shown:
                hidden.append(flag)
    assert (missing, hidden) == ([], [])
