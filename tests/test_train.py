import json
import math
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from diamusic import codecs
from diamusic.config import load_config
from diamusic.data import CodesDataset
from diamusic.model import build_model
from diamusic.patterns import DelayPattern
from diamusic.tracking import read_metrics
from diamusic.train import RunError, checkpoints_of, train


def tiny_config(data, **sets):
    base = {
        "data.path": str(data),
        "steps": 20,
        "batch_size": 4,
        "data.max_frames": 32,
        "log_every": 5,
        "eval_every": 10,
        "eval_batches": 1,
        "checkpoint_every": 10,
        "optim.warmup_steps": 5,
    }
    base.update(sets)
    return load_config("tiny-cpu", overrides=base)


def losses(run_dir, key="train/loss"):
    return [(row["step"], row[key]) for row in read_metrics(run_dir) if key in row]


def test_loss_falls_well_below_uniform(melody_dataset, tmp_path):
    config = tiny_config(
        melody_dataset,
        steps=300,
        log_every=1,
        eval_every=300,
        checkpoint_every=300,
        **{"optim.lr": 3e-3, "data.max_frames": 48},
    )
    result = train(config, tmp_path / "run", progress=False)
    uniform = math.log(32)
    curve = [loss for _, loss in losses(tmp_path / "run")]
    assert len(curve) == 300
    assert curve[0] > 0.9 * uniform  # starts at chance...
    assert sum(curve[-25:]) / 25 < 0.6 * uniform  # ...and learns well below it
    entropy = [e for _, e in losses(tmp_path / "run", "train/entropy")]
    assert sum(entropy[-25:]) / 25 < 0.8 * uniform
    for key in ("eval/loss", "train_subset/loss", "eval/gap", "eval/entropy", "eval/accuracy/cb8"):
        assert key in result.last_eval
    row = read_metrics(tmp_path / "run")[0]  # the first row, step 1
    for key in ("train/loss/cb0", "train/accuracy/cb8", "train/entropy/cb4", "train/loss_noise", "train/lr"):
        assert key in row


def test_run_dir_records_config_fingerprint_version_and_checkpoints(melody_dataset, tmp_path):
    train(tiny_config(melody_dataset, keep_checkpoints=1), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["dataset_fingerprint"] == CodesDataset(melody_dataset).fingerprint
    assert info["code_version"].startswith("0.1.0")
    assert info["pattern"]["delays"] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "codec" / "codec.json").exists()
    ckpts = checkpoints_of(tmp_path / "run")
    assert [p.name for p in ckpts] == ["step_000020"]  # keep-last-1
    files = {p.name for p in ckpts[0].iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.bin", "scheduler.bin", "train_state.json"} <= files
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    from transformers import DiaForConditionalGeneration

    model = DiaForConditionalGeneration.from_pretrained(ckpts[0])
    assert model.config.delay_pattern == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_interrupted_then_resumed_run_reproduces_the_uninterrupted_one(melody_dataset, tmp_path):
    config = tiny_config(melody_dataset, cfg_dropout=0.3, log_every=3)
    train(config, tmp_path / "whole", progress=False)
    partial = train(config, tmp_path / "split", progress=False, stop_after=10)
    assert partial.step == 10
    train(config, tmp_path / "split", resume=True, progress=False)
    for key in ("train/loss", "train/entropy", "eval/loss", "train/loss_noise", "train/grad_norm"):
        a, b = losses(tmp_path / "whole", key), losses(tmp_path / "split", key)
        assert [s for s, _ in a] == [s for s, _ in b]
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6, abs=1e-7), key


def test_grad_accumulation_normalises_per_valid_target(melody_dataset, tmp_path):
    one = tiny_config(melody_dataset, steps=6, log_every=1, eval_every=100, checkpoint_every=100)
    two = tiny_config(
        melody_dataset, steps=6, log_every=1, eval_every=100, checkpoint_every=100, batch_size=2, grad_accum=2
    )
    train(one, tmp_path / "one", progress=False)
    train(two, tmp_path / "two", progress=False)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-4)


def test_worker_processes_load_the_same_batches(melody_dataset, tmp_path):
    settings = {"steps": 6, "log_every": 1, "eval_every": 100, "checkpoint_every": 100, "cfg_dropout": 0.5}
    train(tiny_config(melody_dataset, **settings), tmp_path / "inline", progress=False)
    train(tiny_config(melody_dataset, **settings, **{"data.num_workers": 2}), tmp_path / "workers", progress=False)
    assert losses(tmp_path / "inline") == losses(tmp_path / "workers")


def test_resume_refuses_changes_and_fresh_run_refuses_existing_dir(melody_dataset, tmp_path):
    config = tiny_config(melody_dataset, steps=10)
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        train(config, tmp_path / "run", progress=False)
    other = tiny_config(melody_dataset, steps=12, delay_pattern="dia")
    with pytest.raises(RunError, match="delay pattern musicgen.*--force"):
        train(other, tmp_path / "run", resume=True, progress=False)
    result = train(other, tmp_path / "run", resume=True, force=True, progress=False)
    assert result.step == 12
    with pytest.raises(RunError, match="holds no run"):
        train(config, tmp_path / "empty", resume=True, progress=False)


def test_pretrained_checkpoint_with_another_pattern(melody_dataset, tmp_path):
    vocab = CodesDataset(melody_dataset).vocab
    build_model("tiny", DelayPattern.parse("dia"), vocab, seed=5).save_pretrained(tmp_path / "pretrained")
    config = tiny_config(
        melody_dataset, steps=4, **{"model.init": "pretrained", "model.pretrained": str(tmp_path / "pretrained")}
    )
    train(config, tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any("dia" in note and "musicgen" in note for note in info["notes"])
    saved = json.loads((checkpoints_of(tmp_path / "run")[-1] / "config.json").read_text())
    assert saved["delay_pattern"] == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_training_never_calls_the_codec(melody_dataset, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the codec was called during training")

    for cls in (codecs.SpectralRVQCodec, codecs.DacCodec):
        monkeypatch.setattr(cls, "encode", forbidden)
        monkeypatch.setattr(cls, "decode", forbidden)
    monkeypatch.setattr(codecs, "load_codec", forbidden)
    result = train(tiny_config(melody_dataset, steps=5), tmp_path / "run", progress=False)
    assert result.step == 5


def test_tensorboard_tracker_and_ctrl_c(melody_dataset, tmp_path, monkeypatch):
    from diamusic import tracking

    real_log = tracking.Tracker.log

    def interrupt_at_step_10(self, metrics, step):
        real_log(self, metrics, step)
        if step == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(tracking.Tracker, "log", interrupt_at_step_10)
    config = tiny_config(melody_dataset, steps=20, checkpoint_every=100, tracker=["tensorboard"])
    result = train(config, tmp_path / "run", progress=False)
    assert result.interrupted and result.step == 10
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_000010"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from diamusic.config import load_config
    from diamusic.train import train
    data, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = load_config("tiny-cpu", overrides={
        "data.path": data, "steps": 4, "batch_size": batch, "data.max_frames": 32, "log_every": 1,
        "eval_every": 4, "eval_batches": 2, "checkpoint_every": 100, "optim.warmup_steps": 2})
    train(config, out, progress=False)
    """
)


def test_two_process_ddp_matches_single_process(melody_dataset, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as probe:  # a free port, so parallel or leftover runs cannot collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    ddp = subprocess.run(
        [*env_cmd, str(script), str(melody_dataset), str(tmp_path / "ddp"), "2"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(script), str(melody_dataset), str(tmp_path / "single"), "4"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr
    for key in ("train/loss", "eval/loss", "train/grad_norm"):
        a, b = losses(tmp_path / "single", key), losses(tmp_path / "ddp", key)
        assert len(a) == len(b) > 0
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-4), key


def test_bf16_on_cpu_is_refused(melody_dataset, tmp_path):
    config = tiny_config(melody_dataset, precision="bf16")
    if torch.cuda.is_available():
        pytest.skip("has a GPU")  # not counted as passing: this case only exists on CPU machines
    with pytest.raises(RunError, match="bf16 needs a GPU"):
        train(config, tmp_path / "run", progress=False)
