"""The pattern comparison and `diamusic demo`, end to end on a few built-in melodies."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from diamusic import ablate
from diamusic.ablate import PatternRow, markdown_table, parse_patterns, run_name

DIAMUSIC = str(Path(sys.executable).parent / "diamusic")


def demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [DIAMUSIC, "demo", "--out", str(out), "--melodies", "8", "--steps", "4", "--quiet"]
    args += ["--set", "batch_size=2", "--set", "eval.batches=1", "--set", "demos.seconds=0.2", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def test_demo_trains_every_pattern_and_writes_the_table(tmp_path):
    first = demo(tmp_path / "demo", "--patterns", "musicgen", "dia")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((tmp_path / "demo" / "comparison.json").read_text())
    assert [(r["pattern"], r["extra_steps"]) for r in rows] == [("musicgen", 8), ("dia", 15)]
    for row in rows:
        assert 0 < row["train_loss"] < 10 and 0 < row["eval_entropy"] < np.log(256) + 1e-6
        run = Path(row["run_dir"])
        info = json.loads((run / "run.json").read_text())
        assert info["pattern"]["delays"] == row["delays"]
        wavs = sorted((run / "generated").glob("gen_*.wav"))
        assert len(wavs) == 2 and all(np.isfinite(sf.read(w)[0]).all() for w in wavs)
        assert (run / "demos" / "step_000002").is_dir() and (run / "demos" / "step_000004").is_dir()
    table = (tmp_path / "demo" / "comparison.md").read_text()
    assert "| musicgen | 0,1,2,3,4,5,6,7,8 | 8 |" in table and "| dia | 0,8,9,10,11,12,13,14,15 | 15 |" in table
    assert "| musicgen |" in first.stdout
    # the same seed and data give the same numbers, and the prepared data is reused, not refitted
    again = demo(tmp_path / "demo", "--patterns", "musicgen")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fitting" not in again.stderr
    rerun = json.loads((tmp_path / "demo" / "comparison.json").read_text())
    assert rerun[0]["train_loss"] == rows[0]["train_loss"] and rerun[0]["eval_loss"] == rows[0]["eval_loss"]


def test_demo_refuses_a_bad_pattern_before_any_work(tmp_path):
    result = demo(tmp_path / "demo", "--patterns", "musicgen", "0,2,1")
    assert result.returncode == 2 and "has 3 delays but the codec has 9 codebooks" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()


def test_run_names_and_table():
    patterns = parse_patterns(["dia", "0,0,0,1,1,1,2,2,2"], 9)
    assert [run_name(p) for p in patterns] == ["dia", "custom-0-0-0-1-1-1-2-2-2"]
    row = PatternRow("dia", [0, 8, 9, 10, 11, 12, 13, 14, 15], 15, 1.5, 2.0, 1.2, 1.4, 0.01, 0.5, 900.0, "r")
    table = markdown_table([row]).splitlines()
    assert len(table) == 3 and table[2].startswith("| dia | 0,8,9,10,11,12,13,14,15 | 15 | 1.500 | 2.000 |")


def test_decode_speed_is_measured_on_the_training_device(monkeypatch, tmp_path):
    """On a GPU machine the table's frames/s must come from the GPU, not from a reload onto the CPU."""
    from diamusic import runs
    from diamusic.config import load_config

    monkeypatch.setattr(runs, "default_device", lambda: "cuda")  # as on a GPU machine
    monkeypatch.setattr(ablate, "train", lambda *args, **kwargs: None)
    seen = {}

    def load_run(run_dir, checkpoint="latest", device=None):
        seen["device"] = device or runs.default_device()
        raise StopIteration  # far enough: the run would be generated from on this device

    monkeypatch.setattr(ablate, "load_run", load_run)
    with pytest.raises(StopIteration):
        ablate.run_pattern(load_config("tiny-cpu"), parse_patterns(["dia"], 9)[0], tmp_path, ["x"], 1.0, False)
    assert seen["device"] == "cuda"
