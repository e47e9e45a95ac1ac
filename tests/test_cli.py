"""The CLI as a user meets it: real console script, exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DIAMUSIC = str(Path(sys.executable).parent / "diamusic")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DIAMUSIC, *args], capture_output=True, text=True, timeout=120)


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
    [("0,2,1", "has 3 delays but the codec has 9 codebooks"), ("1,2,3,4,5,6,7,8,9", "channel 0 must have delay 0")],
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


def test_train_cli_fine_tunes_a_local_checkpoint_into_another_pattern(melody_dataset, tmp_path, capsys):
    from diamusic.cli import main
    from diamusic.data.dataset import CodesDataset
    from diamusic.model import build_model
    from diamusic.patterns import DelayPattern

    vocab = CodesDataset(melody_dataset).vocab
    build_model("tiny", DelayPattern.parse("dia"), vocab).save_pretrained(tmp_path / "ckpt")
    args = ["train", "--data", str(melody_dataset), "--out", str(tmp_path / "run"), "--quiet"]
    args += ["--init", "pretrained", "--pretrained", str(tmp_path / "ckpt"), "--delay-pattern", "musicgen"]
    args += ["--steps", "2", "--batch-size", "2", "--set", "data.crop_frames=16", "--set", "eval.batches=1"]
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
