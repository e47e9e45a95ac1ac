"""Run directories: checkpoint manifests catch damaged files, and loading names the file."""

import json
import shutil

import pytest

from diamusic.checkpoints import MANIFEST, CheckpointError, checkpoints_of, verify_checkpoint
from diamusic.cli import main
from diamusic.runs import load_run


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the shared tiny run, free to damage."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def flip_bytes(path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def test_every_checkpoint_file_is_in_its_manifest(run_copy):
    for ckpt in checkpoints_of(run_copy):
        verify_checkpoint(ckpt)
        listed = set(json.loads((ckpt / MANIFEST).read_text())["files"])
        on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST}
        assert listed == on_disk and "model.safetensors" in listed and "optimizer.bin" in listed


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda p: flip_bytes(p), "model.safetensors is corrupted"),
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]), "model.safetensors is truncated"),
        (lambda p: p.unlink(), "model.safetensors is missing"),
    ],
    ids=["flipped", "truncated", "deleted"],
)
def test_damaged_weights_are_refused_naming_the_file(run_copy, tmp_path, capsys, damage, fragment):
    ckpt = checkpoints_of(run_copy)[-1]
    damage(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=fragment):
        load_run(run_copy, device="cpu")
    code = main(["generate", "--run", str(run_copy), "--text", "x", "--seconds", "0.2", "--out", str(tmp_path / "g")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and str(ckpt) in lines[0]
    assert not (tmp_path / "g").exists()
    load_run(run_copy, checkpoint=5, device="cpu")  # the older checkpoint is intact and still loads


def test_damaged_optimizer_state_does_not_stop_generation_but_is_caught_in_full_checks(run_copy):
    ckpt = checkpoints_of(run_copy)[-1]
    flip_bytes(ckpt / "optimizer.bin")
    verify_checkpoint(ckpt, model_only=True)  # generation reads only config and weights
    with pytest.raises(CheckpointError, match="optimizer.bin is corrupted"):
        verify_checkpoint(ckpt)


def test_a_checkpoint_without_manifest_is_refused(run_copy):
    ckpt = checkpoints_of(run_copy)[-1]
    (ckpt / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="has no manifest.json"):
        load_run(run_copy, device="cpu")
