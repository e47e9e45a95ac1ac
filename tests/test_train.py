import contextlib
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diamusic import codecs
from diamusic.checkpoints import checkpoints_of
from diamusic.config import load_config
from diamusic.data.dataset import CodesDataset
from diamusic.model import build_model
from diamusic.patterns import DelayPattern
from diamusic.runs import RunError
from diamusic.tracking import read_metrics
from diamusic.train import train


@contextlib.contextmanager
def fresh_accelerator():
    """accelerate fixes the precision once per process: start afresh, and leave it fresh for later tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def tiny_config(data, sets: dict | None = None, **top):
    """A short tiny run; ``sets`` takes dotted keys, ``top`` the top-level ones."""
    base = {
        "data.path": str(data),
        "steps": 20,
        "batch_size": 4,
        "data.crop_frames": 32,
        "logging.every": 5,
        "eval.every": 10,
        "eval.clips": 4,
        "checkpoints.every": 10,
        "optim.warmup_steps": 5,
    }
    return load_config("tiny-cpu", overrides={**base, **(sets or {}), **top})


QUIET = {"logging.every": 1, "eval.every": 100, "checkpoints.every": 100}  # every step logged, nothing else


def losses(run_dir, key="train/loss"):
    """(step, value) of one metric; a metric that vanished fails here rather than comparing empty lists."""
    rows = [(row["step"], row[key]) for row in read_metrics(run_dir) if key in row]
    assert rows, f"{run_dir} logged no {key}"
    return rows


@pytest.mark.integration
def test_loss_falls_well_below_uniform(melody_dataset, tmp_path):
    sets = {"logging.every": 1, "eval.every": 200, "checkpoints.every": 200, "optim.lr": 3e-3, "data.crop_frames": 48}
    config = tiny_config(melody_dataset, sets, steps=200)
    result = train(config, tmp_path / "run", progress=False)
    uniform = math.log(32)
    curve = [loss for _, loss in losses(tmp_path / "run")]
    assert len(curve) == 200
    assert curve[0] > 0.9 * uniform  # starts at chance...
    assert sum(curve[-25:]) / 25 < 0.8 * uniform  # ...and learns well below it (accompanied music: not 0.6)
    entropy = [e for _, e in losses(tmp_path / "run", "train/entropy")]
    assert sum(entropy[-25:]) / 25 < 0.8 * uniform
    for key in ("eval/loss", "train_subset/loss", "eval/gap", "eval/entropy", "eval/accuracy/cb8"):
        assert key in result.last_eval
    row = read_metrics(tmp_path / "run")[0]  # the first row, step 1
    for key in ("train/loss/cb0", "train/accuracy/cb8", "train/entropy/cb4", "train/loss_noise", "train/lr"):
        assert key in row


def test_run_dir_records_config_fingerprint_version_and_checkpoints(melody_dataset, tmp_path):
    train(tiny_config(melody_dataset, {"checkpoints.keep": 1}), tmp_path / "run", progress=False)
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


@pytest.mark.integration  # resumes across runs
@pytest.mark.parametrize(("lora", "optimizer"), [(0, "adamw"), (4, "adamw"), (0, "adamw8bit")],
                         ids=["full", "lora", "adamw8bit"])  # fmt: skip
def test_interrupted_then_resumed_run_reproduces_the_uninterrupted_one(
    melody_dataset, tmp_path, request, lora, optimizer
):
    """With LoRA the checkpoints hold only the adapters: the resume loads them onto the base again. With the
    8-bit AdamW the checkpoint holds its quantised moments, which the resume restores exactly."""
    steps = 6
    if optimizer == "adamw8bit":  # its update uncompiled is slow on a CPU
        request.getfixturevalue("eager_torchao")
    sets = {"logging.every": 3, "eval.every": steps // 2, "model.lora_rank": lora, "optim.name": optimizer}
    config = tiny_config(melody_dataset, sets, cfg_dropout=0.3, steps=steps)
    train(config, tmp_path / "whole", progress=False)
    partial = train(config, tmp_path / "split", progress=False, stop_after=steps // 2)
    assert partial.step == steps // 2
    train(config, tmp_path / "split", resume=True, progress=False)
    for key in ("train/loss", "train/entropy", "eval/loss", "train/loss_noise", "train/grad_norm"):
        a, b = losses(tmp_path / "whole", key), losses(tmp_path / "split", key)
        assert [s for s, _ in a] == [s for s, _ in b]
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6, abs=1e-7), key


RAGGED = {**QUIET, "data.crop_frames": 64}


def test_ragged_crops_really_differ_in_valid_targets(ragged_dataset):
    """The premise of the parity tests below: micro-batches of one step hold different target counts."""
    from diamusic.data.dataset import BatchPlan, StepBatches

    data = CodesDataset(ragged_dataset)
    plan = BatchPlan(seed=0, batch_size=2, grad_accum=2, crop_frames=64, cfg_dropout=0.15)
    batches = StepBatches(data, plan, DelayPattern.parse("musicgen"), 0, 6)
    counts = [[int((b["labels"] != -100).sum()) for b in batches[k]] for k in range(6)]
    assert sum(a != b for a, b in counts) >= 3, counts


def test_grad_accumulation_normalises_per_valid_target(ragged_dataset, tmp_path):
    """Fails with a per-micro-batch mean: the grad norm of the very first step already differs."""
    train(tiny_config(ragged_dataset, RAGGED, steps=6), tmp_path / "one", progress=False)
    train(tiny_config(ragged_dataset, RAGGED, steps=6, batch_size=2, grad_accum=2), tmp_path / "two", progress=False)
    for key in ("train/loss", "train/grad_norm"):
        a, b = losses(tmp_path / "one", key), losses(tmp_path / "two", key)
        assert len(a) == len(b) == 6
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-4), key


def test_eos_crops_are_logged_and_follow_the_configured_share(melody_dataset, tmp_path):
    shares = {}
    for share in (0.0, 1.0):
        sets = {**QUIET, "data.eos_crop_share": share}
        train(tiny_config(melody_dataset, sets, steps=8), tmp_path / f"s{share}", progress=False)
        shares[share] = [v for _, v in losses(tmp_path / f"s{share}", "train/eos_share")]
    # with share 1 every sample of a source's last clip ends with EOS, and no other sample does
    from diamusic.data.dataset import BatchPlan

    data = CodesDataset(melody_dataset)
    plan = BatchPlan(seed=0, batch_size=4, grad_accum=1, crop_frames=32, cfg_dropout=0.15)
    finals = [sum(data.final(clip) for _, clip, _ in plan.samples(step, 0, len(data))) / 4 for step in range(8)]
    assert shares[1.0] == pytest.approx(finals) and sum(finals) > 0
    # 32-frame crops of clips up to 6 s: random crops rarely reach the end of a final clip
    assert sum(shares[0.0]) < 0.5 * sum(shares[1.0])


def test_worker_processes_load_the_same_batches(melody_dataset, tmp_path):
    settings = {**QUIET, "steps": 6, "cfg_dropout": 0.5}
    train(tiny_config(melody_dataset, **settings), tmp_path / "inline", progress=False)
    train(tiny_config(melody_dataset, **settings, **{"data.num_workers": 2}), tmp_path / "workers", progress=False)
    assert losses(tmp_path / "inline") == losses(tmp_path / "workers")


def test_loader_pins_memory_only_for_a_gpu_and_when_asked(melody_dataset):
    from diamusic.config import DataConfig
    from diamusic.data.dataset import StepBatches
    from diamusic.train import data_loader
    from diamusic.trainer import batch_plan

    config = tiny_config(melody_dataset)
    batches = StepBatches(CodesDataset(melody_dataset), batch_plan(config), DelayPattern.parse("musicgen"), 0, 2)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert data_loader(batches, DataConfig(), gpu).pin_memory
    assert not data_loader(batches, DataConfig(pin_memory=False), gpu).pin_memory
    assert not data_loader(batches, DataConfig(), cpu).pin_memory


def test_loader_workers_are_capped_at_the_cores_with_one_line(melody_dataset, capsys):
    import os
    import warnings

    from diamusic.config import DataConfig
    from diamusic.data.dataset import StepBatches
    from diamusic.train import data_loader
    from diamusic.trainer import batch_plan

    cores = len(os.sched_getaffinity(0))
    batches = StepBatches(CodesDataset(melody_dataset), batch_plan(tiny_config(melody_dataset)),
                          DelayPattern.parse("musicgen"), 0, 1)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's two-paragraph warning about too many workers
        loader = data_loader(batches, DataConfig(num_workers=cores + 3), torch.device("cpu"))
        assert len(next(iter(loader))) == 1  # one micro-batch, built by a capped worker
    assert loader.num_workers == cores
    err = capsys.readouterr().err
    assert err == f"note: data.num_workers {cores + 3} capped at {cores}, the cores here\n"


def test_resume_refuses_changes_and_fresh_run_refuses_existing_dir(melody_dataset, tmp_path):
    config = tiny_config(melody_dataset, steps=10)
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        train(config, tmp_path / "run", progress=False)
    other = tiny_config(melody_dataset, steps=12, delay_pattern="dia")
    with pytest.raises(RunError, match="delay pattern musicgen.*force"):
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


def test_a_bf16_checkpoint_fine_tunes_with_fp32_master_weights(melody_dataset, tmp_path, monkeypatch):
    """transformers loads a checkpoint in its own dtype unless told otherwise: a bf16 Dia would then
    train bf16 weights under `precision: bf16`, whose autocast promises fp32 master weights."""
    from safetensors import safe_open

    from diamusic import trainer

    vocab = CodesDataset(melody_dataset).vocab
    build_model("tiny", DelayPattern.parse("musicgen"), vocab).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    seen = []
    real = trainer.build_optimizer

    def recorded(config, model):
        seen.extend(p.dtype for p in model.parameters())
        return real(config, model)

    monkeypatch.setattr(trainer, "build_optimizer", recorded)
    sets = {"model.init": "pretrained", "model.pretrained": str(tmp_path / "bf16")}
    with fresh_accelerator():
        train(tiny_config(melody_dataset, sets, steps=2, precision="bf16"), tmp_path / "run", progress=False)
    assert seen and set(seen) == {torch.float32}
    with safe_open(str(checkpoints_of(tmp_path / "run")[-1] / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}  # noqa: SIM118 (safe_open has no __iter__)


def test_wandb_without_a_key_is_one_line_before_the_run_writes_anything(melody_dataset, tmp_path, monkeypatch):
    from diamusic.errors import DiamusicError

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: `wandb login` never ran here
    config = tiny_config(melody_dataset, {"tracking.backends": ["wandb"]}, steps=2)
    with pytest.raises(DiamusicError, match="wandb tracker has no API key") as caught:
        train(config, tmp_path / "run", progress=False)
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()
    # the same directory then takes the run with the local tracker: nothing was left to refuse it
    local = tiny_config(melody_dataset, {"tracking.backends": ["tensorboard"]}, steps=2)
    train(local, tmp_path / "run", progress=False)
    assert checkpoints_of(tmp_path / "run")


def test_early_stop_counts_evaluations_without_improvement_and_bounds_the_gap():
    from diamusic.config import EarlyStopConfig
    from diamusic.trainer import EarlyStop

    stop, config = EarlyStop(), EarlyStopConfig(patience=2, min_delta=0.02)
    reasons = [stop.update({"eval/loss": loss}, config) for loss in (3.0, 2.9, 2.89, 2.95)]
    # 2.89 improves on 2.9 by less than min_delta: not progress
    assert reasons[:3] == ["", "", ""] and "not improved on 2.9000 for 2 evaluations" in reasons[3]
    assert EarlyStop(**stop.state_dict()) == stop  # what a checkpoint holds
    gap = EarlyStopConfig(max_gap=0.5)
    assert EarlyStop().update({"eval/loss": 3.0, "eval/gap": 0.4}, gap) == ""
    reason = EarlyStop().update({"eval/loss": 3.0, "eval/gap": 0.6}, gap)
    assert "eval gap 0.6000 exceeds early_stop.max_gap 0.5" in reason
    assert EarlyStop().update({"eval/loss": 3.0, "eval/gap": 9.0}, EarlyStopConfig()) == ""  # off by default


def test_a_run_that_stops_early_checkpoints_that_step_says_why_and_stays_stopped(melody_dataset, tmp_path, capsys):
    from diamusic.cli import main
    from diamusic.runs import RUN_FILE, final_step

    # lr 1e-9: the eval loss cannot improve by min_delta, so evaluations 2 and 3 (steps 4, 6) find no progress
    sets = {"eval.every": 2, "checkpoints.every": 100, "optim.lr": 1e-9, "early_stop.patience": 2}
    sets["early_stop.min_delta"] = 0.01
    argv = ["train", "--data", str(melody_dataset), "--out", str(tmp_path / "run"), "--config", "tiny-cpu", "--quiet"]
    argv += ["--steps", "20", "--batch-size", "4", "--set", "data.crop_frames=32", "--set", "eval.clips=4"]
    argv += [f"--set={k}={v}" for k, v in sets.items()]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    reason = "the eval loss has not improved on"
    assert f"stopped early at step 6 of 20: {reason}" in err
    assert out.strip().splitlines()[-1].startswith(f"{tmp_path / 'run'}: step 6 (stopped early: {reason}")
    info = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert info["early_stop"]["step"] == 6 and "early_stop.patience 2" in info["early_stop"]["reason"]
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_000006"]
    assert final_step(tmp_path / "run", 20) == 6
    rows = read_metrics(tmp_path / "run")
    assert [r["train/early_stop_step"] for r in rows if "train/early_stop_step" in r] == [6]
    # resumed, it is finished: no step more, the same reason, nothing logged twice
    assert main([*argv, "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "stopped early at step 6 of 20" in err and "step 6 (stopped early" in out
    assert read_metrics(tmp_path / "run") == rows
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_000006"]
    # started again without --resume: refused, and the message names the flag that resumes it
    assert main(argv) == 2
    refused = capsys.readouterr().err.strip()
    assert refused.endswith("already holds a run: choose another run directory, or resume it (--resume)")
    assert read_metrics(tmp_path / "run") == rows


def test_early_stop_without_eval_losses_is_one_line(melody_dataset):
    from diamusic.config import ConfigError

    with pytest.raises(ConfigError, match="early_stop needs eval losses: eval.clips must be > 0"):
        tiny_config(melody_dataset, {"early_stop.patience": 3, "eval.clips": 0})


def test_samples_every_0_means_no_samples_even_with_prompts(melody_dataset, tmp_path):
    config = tiny_config(melody_dataset, {"samples.every": 0, "samples.prompts": ["a jig in D major"]}, steps=2)
    train(config, tmp_path / "run", progress=False)
    assert checkpoints_of(tmp_path / "run") and not (tmp_path / "run" / "samples").exists()


def test_a_crop_longer_than_the_decoder_positions_is_one_line_before_anything_is_written(melody_dataset, tmp_path):
    from diamusic.errors import DiamusicError

    preset = load_config("tiny-cpu").model.preset
    model = build_model(preset, DelayPattern.parse("dia"), CodesDataset(melody_dataset).vocab)
    most = model.config.decoder_config.max_position_embeddings - 2 - 15
    config = tiny_config(melody_dataset, {"data.crop_frames": most + 1, "delay_pattern": "dia"}, steps=2)
    with pytest.raises(DiamusicError, match=f"at most {most} frames") as caught:
        train(config, tmp_path / "run", progress=False)
    assert "\n" not in str(caught.value) and not (tmp_path / "run" / "run.json").exists()


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
    config = tiny_config(melody_dataset, {"checkpoints.every": 100, "tracking.backends": ["tensorboard"]})
    result = train(config, tmp_path / "run", progress=False)
    assert result.interrupted and result.step == 10
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_000010"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


DIST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    data, out, batch, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    if settings.pop("fsdp_on_cpu", False):
        # accelerate shards only on GPUs: turn its CPU (gloo) processes into FSDP2 ones, as it does on
        # GPUs, so the sharded path (wrapping, sharded checkpoints, gathering) runs here too
        import accelerate
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
        init = accelerate.Accelerator.__init__
        def init_fsdp(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if self.state.distributed_type == DistributedType.MULTI_CPU:
                self.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
                self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from accelerate launch's FSDP_* env
                if self.state.mixed_precision != "no":  # bf16 compute, fp32 master weights, as on GPUs
                    self.state.fsdp_plugin.set_mixed_precision(self.state.mixed_precision)
        accelerate.Accelerator.__init__ = init_fsdp
    from diamusic.config import load_config
    from diamusic.train import train
    stop_after, resume = settings.pop("stop_after", None), settings.pop("resume", False)
    overrides = {"data.path": data, "batch_size": batch, **settings}
    train(load_config("tiny-cpu", overrides=overrides), out, resume=resume, progress=False, stop_after=stop_after)
    """
)
# every run these tests compare: launched (DIST_SCRIPT) or in this process (_train_here)
DIST_OVERRIDES = {"steps": 4, "data.crop_frames": 32, "logging.every": 1, "eval.every": 2, "eval.clips": 8,
                  "checkpoints.every": 2, "optim.warmup_steps": 2}  # fmt: skip


def _free_port() -> str:
    with socket.socket() as probe:  # a free port, so parallel or leftover runs cannot collide
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _run_script(tmp_path, launcher: list[str], data, out: str, batch: int, **settings) -> subprocess.CompletedProcess:
    script = tmp_path / "dist_train.py"
    script.write_text(DIST_SCRIPT)
    done = subprocess.run(
        [*launcher, str(script), str(data), str(tmp_path / out), str(batch), json.dumps(DIST_OVERRIDES | settings)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _train_here(tmp_path, data, out: str, batch: int, **settings) -> None:
    """A single-process reference run of `_run_script`'s settings, without a new interpreter's start-up."""
    overrides = {**DIST_OVERRIDES, "data.path": str(data), "batch_size": batch, **settings}
    with fresh_accelerator():
        train(load_config("tiny-cpu", overrides=overrides), tmp_path / out, progress=False)


def _assert_same_curves(tmp_path, a: str, b: str, rel: float = 1e-4) -> None:
    for key in ("train/loss", "eval/loss", "train/grad_norm"):
        x, y = losses(tmp_path / a, key), losses(tmp_path / b, key)
        assert len(x) == len(y) > 0
        assert [v for _, v in x] == pytest.approx([v for _, v in y], rel=rel), key


@pytest.mark.integration
def test_two_process_ddp_matches_single_process(ragged_dataset, tmp_path):
    """Ragged crops: the ranks hold different target counts, so a per-rank mean would fail here."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port()]
    ragged = {"data.crop_frames": 64}
    ddp = _run_script(tmp_path, torchrun, ragged_dataset, "ddp", 2, **ragged)
    _train_here(tmp_path, ragged_dataset, "single", 4, **ragged)
    assert "2 process(es)" in ddp.stderr
    _assert_same_curves(tmp_path, "single", "ddp")
    # the evaluation logged by 2 processes is `diamusic eval`'s of the same checkpoint
    from diamusic.eval import evaluate_run

    logged = losses(tmp_path / "ddp", "eval/loss")[-1][1]
    assert evaluate_run(tmp_path / "ddp", prompts=0, device="cpu")["eval/loss"] == pytest.approx(logged, rel=1e-6)


@pytest.mark.integration
def test_fsdp_matches_single_process_resumes_from_shards_and_gathers_weights(melody_dataset, tmp_path):
    """The shipped FSDP config under `accelerate launch`, on 2 CPU processes (see DIST_SCRIPT)."""
    from safetensors.torch import load_file

    from diamusic.runs import load_run

    fsdp_config = Path(__file__).parents[1] / "configs" / "accelerate" / "fsdp-8gpu.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(fsdp_config),
              "--num_processes", "2", "--main_process_port", _free_port()]  # fmt: skip
    data = melody_dataset
    # interrupted after step 2, then resumed from the sharded checkpoint
    first = _run_script(tmp_path, launch, data, "fsdp", 2, fsdp_on_cpu=True, stop_after=2)
    assert "2 process(es)" in first.stderr
    _run_script(tmp_path, launch, data, "fsdp", 2, fsdp_on_cpu=True, resume=True)
    _train_here(tmp_path, data, "single", 4)
    _assert_same_curves(tmp_path, "single", "fsdp")
    last = checkpoints_of(tmp_path / "fsdp")[-1]
    assert (last / "pytorch_model_fsdp_0").is_dir()  # sharded, for resuming
    gathered = load_file(last / "model.safetensors")  # whole, for generation
    single = load_file(checkpoints_of(tmp_path / "single")[-1] / "model.safetensors")
    assert gathered.keys() == single.keys()
    vocab = CodesDataset(melody_dataset).vocab
    initial = build_model("tiny", DelayPattern.parse("musicgen"), vocab, seed=load_config("tiny-cpu").seed)
    start = initial.state_dict()
    moved = max((single[k] - start[k]).abs().max().item() for k in single)  # training's change...
    apart = max((gathered[k] - single[k]).abs().max().item() for k in single)  # ...dwarfs float noise
    assert apart < 0.01 * moved
    assert load_run(tmp_path / "fsdp", device="cpu").checkpoint == last

    # LoRA and bf16 under FSDP: adapters train as without sharding and the run loads (merged) for
    # generation; a samples step writes a checkpoint (no process holds the whole model), the samples come from it
    lora = {"model.lora_rank": 4, "precision": "bf16"}
    samples = {"samples.every": 2, "samples.seconds": 0.2, "checkpoints.every": 4}
    _run_script(tmp_path, launch, data, "fsdp_lora", 2, fsdp_on_cpu=True, **lora, **samples)
    _train_here(tmp_path, data, "single_lora", 4, **lora)
    _assert_same_curves(tmp_path, "single_lora", "fsdp_lora", rel=1e-2)  # bf16 weights vs bf16 autocast
    weights = load_file(checkpoints_of(tmp_path / "fsdp_lora")[-1] / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # fp32 master weights
    assert weights and all("lora_" in k for k in weights)  # the gathered file: the adapters, not the base
    assert load_run(tmp_path / "fsdp_lora", device="cpu").model.config.delay_pattern == list(range(9))
    assert [p.name for p in checkpoints_of(tmp_path / "fsdp_lora")] == ["step_000002", "step_000004"]
    for step in ("step_000002", "step_000004"):
        assert list((tmp_path / "fsdp_lora" / "samples" / step).glob("*.wav")), step


def test_bf16_autocast_runs_the_model_in_bf16_and_tracks_fp32(melody_dataset, tmp_path, monkeypatch):
    from diamusic import train as train_module

    head_dtypes = set()  # the output head's matmul (accelerate hands the logits back in fp32 either way)
    forward = train_module.forward_stats

    def spy(model, batch, codebook_size, weights):
        if not head_dtypes:
            head = next(m for name, m in model.named_modules() if name.endswith("logits_dense"))
            head.register_forward_hook(lambda module, args, out: head_dtypes.add(out.dtype))
        return forward(model, batch, codebook_size, weights)

    settings = {"steps": 6, "logging.every": 1, "eval.every": 6, "checkpoints.every": 100}
    train(tiny_config(melody_dataset, **settings), tmp_path / "fp32", progress=False)
    monkeypatch.setattr(train_module, "forward_stats", spy)
    with fresh_accelerator():
        train(tiny_config(melody_dataset, **settings, precision="bf16"), tmp_path / "bf16", progress=False)
    assert head_dtypes == {torch.bfloat16}  # autocast really ran the matmuls in bf16
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert [v for _, v in a] != [v for _, v in b]
    assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=0.02)
    info = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert info["config"]["precision"] == "bf16"


@pytest.mark.integration
def test_compiled_training_gives_the_same_run_and_checkpoints(melody_dataset, tmp_path):
    from torch._dynamo.utils import counters

    from diamusic.runs import load_run

    # every caption dropped and full-length crops: one shape, so one compilation (minutes on a cold CPU
    # cache); no evaluation, which would compile a second (no-grad) graph
    settings = {**QUIET, "eval.clips": 0, "cfg_dropout": 1.0}
    train(tiny_config(melody_dataset, settings, steps=4), tmp_path / "plain", progress=False)
    counters.clear()
    train(tiny_config(melody_dataset, settings, steps=4, compile=True), tmp_path / "compiled", progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # the model really ran compiled
    for key in ("train/loss", "train/grad_norm"):
        a, b = losses(tmp_path / "plain", key), losses(tmp_path / "compiled", key)
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-5), key
    # compiled in place: the checkpoint has the plain model's parameter names and loads as one
    plain, compiled = (load_run(tmp_path / name, device="cpu").model.state_dict() for name in ("plain", "compiled"))
    assert plain.keys() == compiled.keys()
    # one text position makes the encoder's attention softmax constant: its query and key weights get
    # gradients of pure rounding noise, which Adam turns into full-size steps in both runs
    noise_only = {k for k in plain if ".encoder." in k and ("q_proj" in k or "k_proj" in k)}
    assert noise_only and max(float((plain[k] - compiled[k]).abs().max()) for k in plain if k not in noise_only) < 1e-4


def test_eager_attention_gives_the_same_run_as_sdpa(melody_dataset, tmp_path, monkeypatch):
    from transformers.models.dia import modeling_dia

    calls = {"eager": 0}
    eager = modeling_dia.eager_attention_forward

    def spy(*args, **kwargs):
        calls["eager"] += 1
        return eager(*args, **kwargs)

    monkeypatch.setattr(modeling_dia, "eager_attention_forward", spy)
    train(tiny_config(melody_dataset, QUIET, steps=3), tmp_path / "sdpa", progress=False)
    assert calls["eager"] == 0
    eager_config = tiny_config(melody_dataset, {**QUIET, "model.attention": "eager"}, steps=3)
    train(eager_config, tmp_path / "eager", progress=False)
    assert calls["eager"] > 0
    for key in ("train/loss", "train/grad_norm"):
        a, b = losses(tmp_path / "sdpa", key), losses(tmp_path / "eager", key)
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-5), key


def test_logged_model_flops_are_those_of_the_steps_batches(melody_dataset, tmp_path):
    from diamusic.config import pattern_of_config
    from diamusic.data.dataset import StepBatches
    from diamusic.model import model_config
    from diamusic.train import step_flops
    from diamusic.trainer import batch_plan

    config = tiny_config(melody_dataset, QUIET, steps=3, grad_accum=2)
    train(config, tmp_path / "run", progress=False)
    data, pattern = CodesDataset(melody_dataset), pattern_of_config(config)
    batches = StepBatches(data, batch_plan(config), pattern, 0, config.steps)
    dia = model_config(config.model.preset, pattern, data.vocab)
    rows = [row for row in read_metrics(tmp_path / "run") if "perf/tflops" in row]
    assert len(rows) == 3
    for row, step in zip(rows, [batches[k] for k in range(len(batches))], strict=True):
        expected = sum(step_flops(dia, micro) for micro in step)  # both micro-batches
        assert row["perf/tflops"] * row["perf/step_s"] * 1e12 == pytest.approx(expected, rel=1e-6)
        assert "perf/mfu" not in row  # no known bf16 peak on a CPU


def test_activation_checkpointing_with_lora_gives_the_same_run(melody_dataset, tmp_path):
    settings = {"steps": 4, "logging.every": 1, "eval.every": 100, "checkpoints.every": 100, "model.lora_rank": 4}
    train(tiny_config(melody_dataset, **settings), tmp_path / "plain", progress=False)
    checkpointed = {**settings, "model.gradient_checkpointing": True}
    train(tiny_config(melody_dataset, **checkpointed), tmp_path / "checkpointed", progress=False)
    for key in ("train/loss", "train/grad_norm"):
        a, b = losses(tmp_path / "plain", key), losses(tmp_path / "checkpointed", key)
        assert a[-1][1] != a[0][1]  # the adapters learn...
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-5), key  # ...as much with checkpointing


# --- faults: divergence, damaged and unwritable checkpoints, kills -------------------------------

CKPT_EVERY_2 = {**QUIET, "checkpoints.every": 2, "checkpoints.keep": 1}


def nan_at(monkeypatch, steps: set[int]) -> None:
    """Make the training forward of the given optimizer steps (grad_accum 1) return a NaN loss."""
    from diamusic import train as train_module

    real, calls = train_module.forward_stats, {"n": 0}

    def forward(model, batch, codebook_size, weights):
        loss_sum, stats = real(model, batch, codebook_size, weights)
        if torch.is_grad_enabled():  # evaluation runs without gradients
            calls["n"] += 1
            if calls["n"] in steps:
                loss_sum, stats.loss_sum = loss_sum * math.nan, stats.loss_sum * math.nan
        return loss_sum, stats

    monkeypatch.setattr(train_module, "forward_stats", forward)


def assert_same_curve(a, b, key: str = "train/loss") -> None:
    x, y = losses(a, key), losses(b, key)
    assert [s for s, _ in x] == [s for s, _ in y]
    assert [v for _, v in x] == pytest.approx([v for _, v in y], rel=1e-6, abs=1e-7), key


def weights_of(checkpoint) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


def test_a_huge_learning_rate_stops_training_without_a_nonfinite_checkpoint(melody_dataset, tmp_path):
    from diamusic.train import TrainingDiverged

    config = tiny_config(melody_dataset, {**CKPT_EVERY_2, "optim.lr": 1e6, "optim.warmup_steps": 0})
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+ \(loss .*grad norm") as caught:
        train(config, tmp_path / "run", progress=False)
    stopped = int(str(caught.value).split("step ")[1].split(" ")[0])
    assert stopped < 20
    for ckpt in checkpoints_of(tmp_path / "run"):  # whatever was written holds finite weights
        assert all(torch.isfinite(w).all() for w in weights_of(ckpt).values()), ckpt
    assert losses(tmp_path / "run", "train/skipped_steps") == [(stopped, 1)]


@pytest.mark.integration  # resumes across runs
def test_a_nan_step_stops_keeps_the_last_good_checkpoint_and_resume_reproduces(melody_dataset, tmp_path, monkeypatch):
    from diamusic.train import TrainingDiverged

    config = tiny_config(melody_dataset, CKPT_EVERY_2)
    train(config, tmp_path / "whole", progress=False)
    with monkeypatch.context() as patch:
        nan_at(patch, {7})
        with pytest.raises(TrainingDiverged, match="diverged at step 7 .*newest checkpoint is step_000006"):
            train(config, tmp_path / "split", progress=False)
    assert [p.name for p in checkpoints_of(tmp_path / "split")] == ["step_000006"]  # keep-last-1 kept it
    result = train(config, tmp_path / "split", resume=True, progress=False)
    assert result.step == 20
    assert_same_curve(tmp_path / "split", tmp_path / "whole")


def test_skipped_nonfinite_steps_are_bounded_and_logged(melody_dataset, tmp_path, monkeypatch):
    from diamusic.train import TrainingDiverged

    config = tiny_config(melody_dataset, {**QUIET, "optim.skip_nonfinite_steps": 1})
    nan_at(monkeypatch, {7})
    result = train(config, tmp_path / "one", progress=False)
    assert result.step == 20 and losses(tmp_path / "one", "train/skipped_steps") == [(7, 1)]
    assert all(math.isfinite(v) for s, v in losses(tmp_path / "one") if s != 7)  # no NaN reaches a window mean
    nan_at(monkeypatch, {3, 9})
    with pytest.raises(TrainingDiverged, match="diverged at step 9"):
        train(config, tmp_path / "two", progress=False)


@pytest.mark.integration
def test_resume_passes_over_a_damaged_checkpoint_and_reproduces(melody_dataset, tmp_path, capsys):
    config = tiny_config(melody_dataset, {**QUIET, "checkpoints.every": 10}, steps=30)
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after=20)
    newest = checkpoints_of(tmp_path / "split")[-1]
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-64:] = bytes(64)
    (newest / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    train(config, tmp_path / "split", resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"checkpoint {newest}: model.safetensors is corrupted" in err and "from step 10" in err
    assert_same_curve(tmp_path / "split", tmp_path / "whole")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("random_states_0.pkl", "random_states_0.pkl cannot be read"), ("optimizer.bin", "cannot load checkpoint")],
)
def test_unreadable_state_in_a_checksummed_checkpoint_is_refused_in_one_line(melody_dataset, tmp_path, name, fragment):
    from diamusic.checkpoints import CheckpointError, write_manifest

    config = tiny_config(melody_dataset, {**QUIET, "checkpoints.every": 2}, steps=2)
    train(config, tmp_path / "run", progress=False)
    ckpt = checkpoints_of(tmp_path / "run")[-1]
    (ckpt / name).write_bytes(b"not a pickle at all")
    write_manifest(ckpt)  # the checksums agree: only reading the file shows it is damaged
    with pytest.raises(CheckpointError, match=fragment) as caught:
        train(tiny_config(melody_dataset, {**QUIET, "checkpoints.every": 2}, steps=4), tmp_path / "run", resume=True)
    assert "\n" not in str(caught.value) and str(ckpt) in str(caught.value)


@pytest.mark.integration  # resumes across runs
def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_over(melody_dataset, tmp_path, capsys):
    config = tiny_config(melody_dataset, {**QUIET, "checkpoints.every": 10})
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after=3)
    assert not checkpoints_of(tmp_path / "split") and [s for s, _ in losses(tmp_path / "split")] == [1, 2, 3]
    train(config, tmp_path / "split", resume=True, progress=False)
    assert "has no checkpoint yet (it stopped before its first): starting it over" in capsys.readouterr().err
    assert_same_curve(tmp_path / "split", tmp_path / "whole")


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from diamusic import checkpoints as C, train as T
    from diamusic.cli import main
    where, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    # one thread: MKL's sums depend on the threads a process gets, and two processes on two threads
    # differed now and then by ~1e-6 (docs/reliability.md); these tests compare runs across processes
    torch.set_num_threads(1)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: a real kill -9

    if where == "step":  # inside the forward of optimizer step `at`
        forward, calls = T.forward_stats, [0]
        def forward_then_die(model, batch, *rest):
            import torch
            calls[0] += torch.is_grad_enabled()
            if calls[0] == at:
                die()
            return forward(model, batch, *rest)
        T.forward_stats = forward_then_die
    elif where.startswith("signal-"):  # a real signal right after step `at`'s update, before the step is counted
        from diamusic import trainer as TR
        build, signum = TR.build_optimizer, int(where.removeprefix("signal-"))
        def build_with_hook(config, model):
            optimizer, scheduler = build(config, model)
            updates = [0]
            def hook(*args):
                updates[0] += 1
                if updates[0] == at:
                    os.kill(os.getpid(), signum)
            optimizer.register_step_post_hook(hook)
            return optimizer, scheduler
        TR.build_optimizer = build_with_hook
    elif where == "checkpoint":  # the files of step `at` written, its manifest not yet
        manifest = C.write_manifest
        C.write_manifest = lambda folder: die() if folder.name.startswith(f"step_{at:06d}") else manifest(folder)
    sys.exit(main(argv))
    """
)


def _train_argv(tmp_path, data, out: str) -> list[str]:
    argv = ["train", "--data", str(data), "--out", str(tmp_path / out), "--steps", "20", "--batch-size", "4", "--quiet"]
    for key, value in {**QUIET, "checkpoints.every": 10, "data.crop_frames": 32, "optim.warmup_steps": 5}.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def _train_cli(tmp_path, data, out: str, where: str, at: int) -> subprocess.CompletedProcess:
    """A run that dies (or is signalled) at `where`/`at`: in a process of its own, so it can be killed."""
    script = tmp_path / "kill_train.py"
    script.write_text(KILL_SCRIPT)
    argv = [sys.executable, str(script), where, str(at), *_train_argv(tmp_path, data, out)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _train_cli_here(tmp_path, data, out: str, *extra: str) -> int:
    """`_train_cli`'s run without a kill, in this process (its imports would cost more than its steps),
    on one thread as there."""
    from diamusic.cli import main

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main([*_train_argv(tmp_path, data, out), *extra])
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def whole_cli_run(melody_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    assert _train_cli_here(tmp, melody_dataset, "run") == 0
    return tmp / "run"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("where", "at", "resumed_from"),
    [("step", 3, None), ("step", 15, 10), ("checkpoint", 20, 10)],
    ids=["step-before-first-checkpoint", "step", "checkpoint-write"],
)
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_run(
    melody_dataset, whole_cli_run, tmp_path, capsys, where, at, resumed_from
):
    killed = _train_cli(tmp_path, melody_dataset, "run", where, at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = tmp_path / "run" / "checkpoints"
    if where == "checkpoint":
        assert (ckpts / "step_000020.tmp" / "model.safetensors").exists()  # died inside the write
    resumed = _train_cli_here(tmp_path, melody_dataset, "run", "--resume"), capsys.readouterr().err
    assert resumed[0] == 0, resumed[1][-2000:]
    if resumed_from is None:
        assert "starting it over" in resumed[1]
    else:
        assert f"from step {resumed_from}" in resumed[1]
    assert not list(ckpts.glob("*.tmp"))
    for key in ("train/loss", "train/grad_norm", "eval/loss"):
        assert_same_curve(tmp_path / "run", whole_cli_run, key)


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_right_after_an_update_checkpoints_that_step_and_the_resume_is_exact(
    melody_dataset, whole_cli_run, tmp_path, capsys, signum
):
    """Ctrl-C once saved step 11's number with step 12's update (resume then differed from step 12 on);
    SIGTERM (SLURM, `timeout`) killed the run with nothing saved since the last checkpoint."""
    stopped = _train_cli(tmp_path, melody_dataset, "run", f"signal-{int(signum)}", 12)
    assert stopped.returncode == 128 + signum, stopped.stderr[-2000:]
    assert f"{signal.Signals(signum).name}: saving a checkpoint at step 12" in stopped.stderr
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_000010", "step_000012"]
    resumed = _train_cli_here(tmp_path, melody_dataset, "run", "--resume"), capsys.readouterr().err
    assert resumed[0] == 0 and "from step 12" in resumed[1], resumed[1][-2000:]
    for key in ("train/loss", "train/grad_norm", "eval/loss"):
        assert_same_curve(tmp_path / "run", whole_cli_run, key)


def _cli_train(data, out, sets: dict, *extra: str) -> tuple[int, list[str]]:
    from diamusic.cli import main

    argv = ["train", "--data", str(data), "--out", str(out), "--steps", "20", "--batch-size", "4", "--quiet", *extra]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    return main(argv)


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["free-space-check", "write"])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_loses_nothing(
    melody_dataset, tiny_run, tmp_path, small_disk, monkeypatch, capsys, stage
):
    """On a real filesystem of 1.6 checkpoints where this process may mount one, else a patched one."""
    import errno
    from collections import namedtuple

    from diamusic import checkpoints as checkpoints_module
    from diamusic.checkpoints import checkpoint_bytes, verify_checkpoint

    size = checkpoint_bytes(checkpoints_of(tiny_run)[-1])
    disk = small_disk.mount(int(size * 1.6))
    real_disk = disk is not None
    disk = disk or tmp_path / "disk"
    run = disk / "run"
    if stage == "write":  # the check is passed over, so the write itself runs out of space
        monkeypatch.setattr(checkpoints_module, "check_free_space", lambda *args: None)
    if not real_disk and stage == "write":
        manifest = checkpoints_module.write_manifest

        def full(folder):
            if folder.name.startswith("step_000020"):
                raise OSError(errno.ENOSPC, "No space left on device")
            manifest(folder)

        monkeypatch.setattr(checkpoints_module, "write_manifest", full)
    if not real_disk and stage != "write":
        usage, real_usage = namedtuple("usage", "total used free"), shutil.disk_usage
        fake = lambda p: usage(0, 0, int(size * 0.6)) if checkpoints_of(run) else real_usage(p)  # noqa: E731
        monkeypatch.setattr(checkpoints_module.shutil, "disk_usage", fake)

    sets = {**QUIET, "checkpoints.every": 10, "checkpoints.keep": 1, "data.crop_frames": 32, "optim.warmup_steps": 5}
    assert _cli_train(melody_dataset, run, sets) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"diamusic: error: cannot write checkpoint to {run}/checkpoints/step_000020: no space left")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000010"]  # nothing half-written is left
    verify_checkpoint(run / "checkpoints" / "step_000010")

    if real_disk:
        small_disk.resize(disk, int(size * 3))
    monkeypatch.undo()
    assert _cli_train(melody_dataset, run, sets, "--resume") == 0
    assert _cli_train(melody_dataset, tmp_path / "whole", sets) == 0
    assert_same_curve(run, tmp_path / "whole")
    print(f"full disk: {'a real tmpfs' if real_disk else 'a patched writer'}")


@pytest.mark.integration
def test_forced_resume_onto_another_codec_switches_the_run_codec_or_refuses(melody_dataset, tmp_path):
    from diamusic.codecs import load_codec
    from diamusic.data.prepare import prepare
    from diamusic.runs import load_run

    def melodies(name: str, size: int):
        options = {"limit": 4, "max_seconds": 4.0, "seed": 1, "codec_options": {"codebook_size": size}}
        prepare("melodies", "spectral-rvq", tmp_path / name, progress=False, **options)
        return tmp_path / name

    train(tiny_config(melody_dataset, QUIET, steps=4), tmp_path / "run", progress=False)
    smaller = tiny_config(melodies("size16", 16), QUIET, steps=6)
    with pytest.raises(RunError, match="run's codes are 9 codebooks x 32 codes, mono, the dataset's 9 codebooks x 16"):
        train(smaller, tmp_path / "run", resume=True, force=True, progress=False)

    other = melodies("other", 32)  # the same shape, but a codec fitted on other audio
    other_card = json.loads((other / "card.json").read_text())["codec"]
    assert other_card["fingerprint"] != json.loads((melody_dataset / "card.json").read_text())["codec"]["fingerprint"]
    with pytest.raises(RunError, match="dataset fingerprint"):
        train(tiny_config(other, QUIET, steps=6), tmp_path / "run", resume=True, progress=False)
    train(tiny_config(other, QUIET, steps=6), tmp_path / "run", resume=True, force=True, progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["codec"] == other_card and info["dataset_fingerprint"] == CodesDataset(other).fingerprint
    assert info["switches"][0]["until_step"] == 4 and info["switches"][0]["dataset"] == str(melody_dataset.resolve())
    assert any("codec/ replaced" in note for note in info["notes"])
    assert load_codec(tmp_path / "run" / "codec").fingerprint == other_card["fingerprint"]
    assert load_run(tmp_path / "run", device="cpu").codec.fingerprint == other_card["fingerprint"]


def test_nonfinite_weights_are_never_checkpointed(melody_dataset, tmp_path):
    from diamusic.train import TrainingDiverged, save
    from diamusic.trainer import setup

    t = setup(tiny_config(melody_dataset, QUIET, steps=2), tmp_path / "run", resume=False, force=False)
    save(t)
    with torch.no_grad():
        next(t.model.parameters()).view(-1)[0] = math.inf
    t.step = 1
    with pytest.raises(TrainingDiverged, match="step 1: the weights hold NaN or inf"):
        save(t)
    t.tracker.close()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_000000"]


def test_codebook_weights_given_per_codebook_apply_to_both_sides_of_a_stereo_run(stereo_dataset, tmp_path):
    """Nine weights on 18 streams: the config accepts them per side, so training must too."""
    weights = [1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    config = tiny_config(stereo_dataset, QUIET, steps=2, codebook_weights=weights)
    train(config, tmp_path / "run", progress=False)
    assert len(losses(tmp_path / "run")) == 2
